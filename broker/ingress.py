"""The CloudEvents ingress: ``POST /{namespace}/{broker}`` and ``POST /channels/{ns}/{channel}``.

This is the hot path, so it is a raw ASGI handler, not a FastAPI route (FastAPI routing and
validation cost more than the rest of the request: see docs/architecture.md). It answers:

- ``202`` only after every event of the request is durably on the bus (K27, K137);
- ``400`` for anything that is not a valid CloudEvent, with a message naming the problem
  (K23, K30, K40, K48, K49), and when the loop guard ``knativebrokerttl`` runs out (K45);
- ``404`` for an unknown Broker or Channel (K21, K41), ``405`` with ``Allow`` for other methods
  (K20, K28, K143), ``413`` above the configured size, ``503`` when the bus refuses the event;
- ``OPTIONS`` with the CloudEvents webhook handshake headers (K39, K151).

With OIDC on for the ingress (``ingress_oidc``, Knative's ``authentication-oidc``), a POST must
carry ``Authorization: Bearer <JWT>`` whose audience is the target's ``status.address.audience``:
``401`` (with ``WWW-Authenticate: Bearer``) for none or one that does not verify, naming why;
``403`` when the EventPolicies that apply (or the default authorization mode) do not allow its
``sub`` to send these events (:mod:`broker.auth.policy`, compiled once per snapshot). With OIDC
off none of this runs.

Every response carries ``Allow: POST, OPTIONS`` (K38). Broker ingress adds ``knativearrivaltime``
(K44) and sets or decrements ``knativebrokerttl`` (K45); Channels forward events unaltered (K147).
Events are never upgraded from 0.3 (K32, K146).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson

from broker import binding
from broker.asgi import Receive, Scope, Send, read_body
from broker.auth.oidc import OidcVerifier, TrustedIssuers
from broker.auth.policy import IngressAuthorization
from broker.bus import Bus
from broker.errors import BindingError, PublishError, RequestIncomplete, Unauthenticated
from broker.events import ARRIVAL_TIME, BROKER_TTL, CloudEvent, now_rfc3339
from broker.metrics import Metrics

# The ingress paths have their own small module (the outbound guard needs them too); these names
# stay importable from here.
from broker.routes import RESERVED_SEGMENTS as RESERVED_SEGMENTS
from broker.routes import match_route as match_route
from broker.spec import BrokerSpec, ChannelSpec, Snapshot

log = logging.getLogger(__name__)

_ALLOW = (b"allow", b"POST, OPTIONS")
_JSON = (b"content-type", b"application/json")
# An explicit empty Content-Length: otherwise uvicorn answers chunked, with one more send.
_ACCEPTED_START = {
    "type": "http.response.start",
    "status": 202,
    "headers": [_ALLOW, (b"content-length", b"0")],
}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}
_BEARER_CHALLENGE = (b"www-authenticate", b"Bearer")
_OPTIONS_HEADERS = [
    _ALLOW,
    (b"content-length", b"0"),
    (b"webhook-allowed-origin", b"*"),
    (b"webhook-allowed-rate", b"*"),
]


class TtlExhausted(BindingError):
    """The event's knativebrokerttl reached zero: it is looping (K45, K107)."""


def apply_broker_ttl(event: CloudEvent, max_ttl: int) -> None:
    """Set (missing) or decrement (present) ``knativebrokerttl`` in place (K45, K107)."""
    attributes = event.attributes
    raw = attributes.get(BROKER_TTL)
    if raw is None:
        attributes[BROKER_TTL] = max_ttl
        return
    try:
        ttl = int(raw)
    except (TypeError, ValueError):
        raise BindingError(f"extension {BROKER_TTL} must be an integer, got {raw!r}") from None
    ttl -= 1
    if ttl <= 0:
        raise TtlExhausted(
            f"extension {BROKER_TTL} ran out: the event has passed through the broker too many "
            "times (a reply loop?) and is dropped"
        )
    attributes[BROKER_TTL] = ttl


class Ingress:
    """Accepts events over HTTP and publishes them to the bus of their Broker or Channel."""

    def __init__(
        self,
        *,
        buses: Mapping[str, Bus],
        metrics: Metrics,
        max_request_bytes: int,
        max_ttl: int,
        verifier: OidcVerifier | TrustedIssuers | None = None,
    ) -> None:
        self.buses = buses
        # Set only with ingress OIDC on: then every POST is authenticated and authorized.
        self._verifier = verifier
        self._authorization: Mapping[tuple[str, str, str], IngressAuthorization] = {}
        self._snapshot = Snapshot()
        # Where each ingress route publishes, keyed as match_route returns it (one lookup).
        self._targets: dict[tuple[str, str, str], BrokerSpec | ChannelSpec] = {}
        self.max_request_bytes = max_request_bytes
        self.max_ttl = max_ttl
        self._metrics = metrics

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot) -> None:
        targets: dict[tuple[str, str, str], BrokerSpec | ChannelSpec] = {
            ("broker", namespace, name): spec
            for (namespace, name), spec in snapshot.brokers.items()
        }
        for (namespace, name), channel in snapshot.channels.items():
            targets[("channel", namespace, name)] = channel
        self._snapshot, self._targets = snapshot, targets
        self._authorization = snapshot.ingress_authorization

    # -- programmatic entry (replies re-entering a broker: K104, K108) ------------------------

    async def publish_to_broker(self, namespace: str, name: str, event: CloudEvent) -> bool:
        """Put ``event`` into a Broker as ingress would. False if the loop guard dropped it.

        Raises PublishError if the Broker is gone or its bus refuses the event, so that the
        delivery that produced this reply is retried (K106).
        """
        broker = self.snapshot.brokers.get((namespace, name))
        if broker is None:
            raise PublishError(f"broker {namespace}/{name} does not exist", retryable=True)
        try:
            apply_broker_ttl(event, self.max_ttl)
        except TtlExhausted:
            self._metrics.loops_stopped += 1
            log.warning(
                "reply dropped: knativebrokerttl ran out (loop guard)",
                extra={"broker": f"{namespace}/{name}", "event_id": event.attributes.get("id")},
            )
            return False
        event.attributes[ARRIVAL_TIME] = now_rfc3339()
        await self.buses[broker.bus].publish(broker.topic, event, key=event.key)
        return True

    # -- HTTP ----------------------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, route: tuple[str, str, str]
    ) -> None:
        method = scope["method"]
        if method == "POST":
            await self.post(scope, receive, send, route)
        elif method == "OPTIONS":
            await send({"type": "http.response.start", "status": 200, "headers": _OPTIONS_HEADERS})
            await send(_EMPTY_BODY)
        else:
            await self._reject(send, 405, f"method {method} is not allowed; use POST")

    async def post(
        self, scope: Scope, receive: Receive, send: Send, route: tuple[str, str, str]
    ) -> None:
        target = self._targets.get(route)
        kind = route[0]
        if target is None:
            await self._reject(send, 404, f"{kind} {route[1]}/{route[2]} not found")
            return

        headers = scope["headers"]
        sub: str | None = None
        if self._verifier is not None:
            # Fast path: a token verified before (the verifier's cache), without a coroutine.
            token = _bearer_token(headers)
            authorization = self._authorization.get(route)
            claims = (
                None
                if token is None or authorization is None
                else self._verifier.cached(token, authorization.audience)
            )
            if claims is not None:
                sub = claims["sub"]
            else:
                sub = await self._authenticate(send, token, authorization, route)
                if sub is None:
                    return
        # The whole body usually comes in one message; the general reader handles the rest.
        # A missing more_body counts as more: http.disconnect has none, and must never pass
        # for the end of a body (read_body tells the two apart).
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body", True) or len(body) > self.max_request_bytes:
            try:
                body = await read_body(receive, self.max_request_bytes, message)
            except RequestIncomplete:  # the client is gone: nothing to publish, no one to answer
                self._metrics.incomplete_requests += 1
                return
        if body is None:
            await self._reject(
                send, 413, f"request body is larger than {self.max_request_bytes} bytes"
            )
            return
        try:
            events = binding.parse_request(headers, body)
            if kind == "broker":
                arrival = now_rfc3339()
                for event in events:
                    attributes = event.attributes
                    if BROKER_TTL in attributes:
                        apply_broker_ttl(event, self.max_ttl)
                    else:  # the usual case, without a call (K45)
                        attributes[BROKER_TTL] = self.max_ttl
                    attributes[ARRIVAL_TIME] = arrival
        except BindingError as exc:
            await self._reject(send, 400, exc.message)
            return
        if sub is not None:
            refusal = self._authorization[route].refusal(sub, events)
            if refusal is not None:
                await self._reject(send, 403, refusal)
                return

        bus = self.buses[target.bus]
        topic = target.topic
        try:
            for event in events:
                await bus.publish(topic, event, key=event.key)
        except PublishError as exc:
            log.error(
                "bus refused an event",
                extra={"topic": topic, "error": exc.message},
                exc_info=exc.__cause__ is not None,
            )
            status = 503 if exc.retryable else 500
            await self._reject(send, status, f"event not accepted: {exc.message}")
            return
        self._metrics.accepted += len(events)
        await send(_ACCEPTED_START)
        await send(_EMPTY_BODY)

    async def _authenticate(
        self,
        send: Send,
        token: str | None,
        authorization: IngressAuthorization | None,
        route: tuple[str, str, str],
    ) -> str | None:
        """The verified ``sub`` of the request's bearer token; None once it has been refused."""
        assert self._verifier is not None
        what = f"{route[0]} {route[1]}/{route[2]}"
        if authorization is None:  # Ready, yet not in the authorization map: refuse, never open
            await self._reject(send, 403, f"{what} has no authorization configured yet")
            return None
        if token is None:
            await self._reject(
                send,
                401,
                f"{what} requires a bearer token: send 'Authorization: Bearer <JWT>' with "
                f"audience {authorization.audience!r}",
            )
            return None
        try:
            claims = await self._verifier.verify(token, authorization.audience)
        except Unauthenticated as exc:
            await self._reject(send, 401, exc.message)
            return None
        return str(claims["sub"])

    async def _reject(self, send: Send, status: int, message: str) -> None:
        self._metrics.ingress_events[str(status)] += 1
        await _error(send, status, message)


def _bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case), or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


async def _error(send: Send, status: int, message: str) -> None:
    """A JSON error body ``{"code": status, "message": ...}`` with the Allow header (K38)."""
    body = orjson.dumps({"code": status, "message": message})
    headers = [_ALLOW, _JSON, (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    elif status == 401:
        headers.append(_BEARER_CHALLENGE)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
