"""``POST /apis/eventing.knative.dev/v1/namespaces/{ns}/brokers/{name}/events``: a test event.

The web console's "send a test event" form posts here (so can any API client): the body is one
CloudEvent in the structured JSON format (``application/json``; the binding's rules decide what
is valid, a fault is a 400 naming it). cemesh puts it into the Broker as a reply re-entering it
would (:meth:`broker.dataplane.ingress.Ingress.publish_to_broker`): it gets
``knativearrivaltime``, passes the loop guard, lands on the Broker's bus and in its live feed,
and is answered 202 with the event's id once the bus took it.

The caller is an authenticated API user, not an event sender, so EventPolicies are not asked;
instead RBAC is: the verb ``create`` on ``brokers/events`` (a subresource, as Kubernetes names
``pods/exec``) in the Broker's namespace, which ``edit`` and ``admin`` have and ``view`` has not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from broker.auth.rbac import Resource, authorize
from broker.auth.setup import Access
from broker.controlplane.api.bodies import JSON, media_type
from broker.controlplane.api.guard import principal_of
from broker.core.binding_json import parse_structured
from broker.core.errors import BindingError, Forbidden, NotFound, UnsupportedMediaType
from broker.core.events import CloudEvent

PATH = "/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers/{name}/events"
EVENTS = Resource("eventing.knative.dev", "brokers/events")

Publish = Callable[[str, str, CloudEvent], Awaitable[bool]]


def install_send_event_routes(
    app: FastAPI, *, publish: Publish, serves: Callable[[str, str], bool], access: Access
) -> None:
    """Serve :data:`PATH`; ``serves(ns, name)`` says whether the data plane has that Broker."""

    @app.post(PATH, status_code=202, include_in_schema=False)
    async def send_event(request: Request, namespace: str, name: str) -> JSONResponse:
        principal = principal_of(request)
        decision = authorize(principal, "create", EVENTS, namespace, access.bindings)
        if not decision.allowed:
            raise Forbidden(decision.reason)
        if media_type(request.headers.get("content-type")) != JSON:
            raise UnsupportedMediaType(
                "a test event is one CloudEvent in JSON format: send application/json"
            )
        event = parse_structured(await request.body())
        if not serves(namespace, name):
            raise NotFound(f"Broker {namespace}/{name} is not served (missing or not Ready)")
        if not await publish(namespace, name, event):
            raise BindingError(
                "the event's knativebrokerttl has run out: the loop guard dropped it"
            )
        return JSONResponse({"accepted": event.id, "broker": f"{namespace}/{name}"}, 202)
