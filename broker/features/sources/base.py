"""The contract every source implements, and the sender that delivers its events to the sink.

A source kind is described by one :class:`SourceKind` (its resource type, its admission rules,
what it resolves at reconcile time, the event types it produces, and the :class:`Source` class
that runs it). The generic parts are done once for all kinds: ``spec.sink`` and
``spec.ceOverrides`` admission, sink resolution, ``status.sinkUri`` and conditions
(:mod:`broker.features.sources.reconcile`), and starting/stopping a :class:`Source` per resource
(:mod:`broker.features.sources.runner`).

Writing a source (see README "Writing a source")::

    class TickSource(Source):
        async def run(self) -> None:
            while True:
                await self.sink.send(new_event(type="dev.example.tick", source=self.source_uri))
                await asyncio.sleep(1)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.controlplane.catalog import ResourceType
from broker.core.asgi import Receive, Scope, Send, send_json
from broker.core.binding import to_binary
from broker.core.errors import DeliveryError, InvalidResource
from broker.core.events import CloudEvent
from broker.core.logging import ContextAdapter
from broker.core.spec import DeliveryPolicy
from broker.dataplane.dispatch.delivery import TokenSource
from broker.dataplane.dispatch.http import HttpClient
from broker.dataplane.dispatch.retry import backoff_delay, is_success, should_retry
from broker.features.components import RuntimeContext

log = logging.getLogger(__name__)

SOURCES_GROUP = "sources.knative.dev"


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A Ready source as the runner runs it: everything resolved, nothing to look up."""

    kind: str
    namespace: str
    name: str
    uid: str
    sink_uri: str
    ce_overrides: Mapping[str, str]  # spec.ceOverrides.extensions, added to every event
    spec: Mapping[str, Any]  # the admitted resource spec, as applied
    # What the kind's ``prepare`` resolved at reconcile time (secrets, parsed schedules, ...).
    resolved: Mapping[str, Any] = field(default_factory=dict)
    applied_by: str = ""  # the cemesh.dev/applied-by annotation: who applied the resource
    sink_audience: str | None = None  # the sink's token audience: tokens are sent when set
    sink_ca_certs: str | None = None  # PEM an https sink's certificate must chain to
    identity: str = ""  # sub of the delivery tokens sent on this source's behalf


class SourceNotReady(Exception):
    """Raised by a kind's ``prepare``: the source cannot run now. ``reason`` is CamelCase."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class PrepareContext:
    """What a kind's ``prepare`` may read at reconcile time (pure: the stored objects)."""

    def __init__(
        self, base_url: str, objects: Mapping[tuple[str, str, str, str], Mapping[str, Any]]
    ):
        self.base_url = base_url
        self._objects = objects

    def find(self, group: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._objects.get((group, kind, namespace, name))

    def secret_value(self, namespace: str, ref: Mapping[str, Any], field_: str) -> str:
        """The decoded value of a ``secretKeyRef`` ({name, key}); SourceNotReady if missing."""
        import base64

        name, key = str(ref.get("name", "")), str(ref.get("key", ""))
        secret = self.find("", "Secret", namespace, name)
        if secret is None:
            raise SourceNotReady(
                "SecretNotFound", f"{field_}: Secret {namespace}/{name} does not exist"
            )
        data = secret.get("data") or {}
        if key not in data:
            raise SourceNotReady(
                "SecretKeyNotFound", f"{field_}: Secret {namespace}/{name} has no key {key!r}"
            )
        return base64.b64decode(data[key]).decode("utf-8", "replace")


class EventSender:
    """Delivers a source's events to its sink: binary mode, ceOverrides applied, retried.

    Retries follow the delivery's rules (:mod:`broker.dataplane.dispatch.retry`: which statuses are
    worth another try, exponential backoff from ``backoff``, here capped at ``backoff_max``) for
    ``retries`` attempts after the first; after that :class:`~broker.core.errors.DeliveryError` is
    raised so the source can tell its producer (GitHub gets a 5xx and redelivers). With an
    ``audience`` and ``tokens``, each attempt carries cemesh's bearer token for the sink; an
    https sink is checked against ``ca_certs`` besides the system bundle.
    """

    def __init__(
        self,
        client: HttpClient,
        sink_uri: str,
        ce_overrides: Mapping[str, str],
        *,
        retries: int = 4,
        backoff: float = 0.2,
        backoff_max: float = 5.0,
        timeout: float = 10.0,
        audience: str | None = None,
        ca_certs: str | None = None,
        identity: str = "",
        tokens: TokenSource | None = None,
    ) -> None:
        self.client = client
        self.audience = audience
        self.ca_certs = ca_certs
        self.identity = identity
        self.tokens = tokens
        self.sink_uri = sink_uri
        self.ce_overrides = dict(ce_overrides)
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        # The waits between attempts, by the delivery's own rule (broker.dataplane.dispatch.retry).
        self._policy = DeliveryPolicy(
            retry=retries, backoff_policy="exponential", backoff_delay=backoff, timeout=timeout
        )

    async def send(self, event: CloudEvent) -> None:
        """Deliver ``event`` (2xx from the sink) or raise DeliveryError after the retries."""
        if self.ce_overrides:
            event = CloudEvent({**event.attributes, **self.ce_overrides}, event.data)
        headers, body = to_binary(event)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(backoff_delay(self._policy, attempt), self.backoff_max))
            try:
                request_headers = headers
                if self.audience is not None and self.tokens is not None:
                    bearer = self.tokens.token(self.audience, self.identity)
                    request_headers = [*headers, ("authorization", f"Bearer {bearer}")]
                response = await self.client.post(
                    self.sink_uri,
                    request_headers,
                    body,
                    timeout=self.timeout,
                    ca_certs=self.ca_certs,
                )
            except DeliveryError as exc:
                last = exc.message
                if not exc.retryable:
                    break
                continue
            if is_success(response.status):
                return
            last = f"sink answered {response.status}"
            if not should_retry(response.status):
                break  # the sink rejects this event; sending it again changes nothing
        raise DeliveryError(
            f"event {event.attributes.get('id')} not delivered to {self.sink_uri}: {last}",
            retryable=True,
        )


# What a running source tells its status: (reason, message) when it cannot do its job now, or
# None when it can; and, when it learns it, the URI its events carry as ``source``.
Problem = tuple[str, str] | None
Reporter = Callable[["SourceSpec", Problem, str | None], None]


def _ignore_report(spec: SourceSpec, problem: Problem, source_uri: str | None) -> None:
    """Where reports go when no runner listens (a source used on its own, in tests)."""


class Source:
    """One running source. Subclasses override :meth:`run` and/or :meth:`handle_http`, and call
    :meth:`report` when what they run stops (or starts again) working."""

    def __init__(self, spec: SourceSpec, sink: EventSender, context: RuntimeContext) -> None:
        self.spec = spec
        self.sink = sink
        self.context = context
        self.log = ContextAdapter(log, {"source": f"{spec.kind}/{spec.namespace}/{spec.name}"})
        self.reporter: Reporter = _ignore_report  # set by the runner

    def report(self, problem: Problem, *, source_uri: str | None = None) -> None:
        """Say in the source's status why it cannot do its job now (``(reason, message)``,
        reason CamelCase), or that it can again (None): its ``Deployed`` condition and Ready
        follow. ``source_uri``: the ``source`` its events carry, once known at run time."""
        self.reporter(self.spec, problem, source_uri)

    async def run(self) -> None:
        """Produce events until cancelled. The default waits: webhook sources only answer HTTP."""
        await asyncio.Event().wait()

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request to this source's webhook URL (``/sources/<kind>/<ns>/<name>``)."""
        await send_json(send, 404, b'{"message": "this source has no webhook"}')

    async def close(self) -> None:
        """Release what :meth:`run` did not (called after run is cancelled)."""


Check = Callable[[dict[str, Any], Mapping[str, Any] | None], None]
Prepare = Callable[[Mapping[str, Any], PrepareContext], Mapping[str, Any]]


def _no_check(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """A kind with no rules beyond sink and ceOverrides."""


def _nothing_to_prepare(obj: Mapping[str, Any], context: PrepareContext) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class SourceKind:
    """Everything cemesh needs to know about one kind of source."""

    resource: ResourceType
    runner: type[Source] | None  # None: nothing runs (SinkBinding only binds)
    check: Check = _no_check  # kind-specific admission, in place; InvalidResource naming the field
    # Pure, at reconcile time: resolve secrets and the like into SourceSpec.resolved; extra
    # status fields go under the "status" key of the result. Raises SourceNotReady.
    prepare: Prepare = _nothing_to_prepare
    # The CloudEvent types a source of this kind produces (EventType resources, item 6).
    event_types: Callable[[Mapping[str, Any]], list[str]] = lambda obj: []
    requires_sink: bool = True
    # Path segment of the webhook URL (/sources/<webhook>/<ns>/<name>), for kinds that take HTTP.
    webhook: str | None = None


def check_ce_overrides(value: object, field_: str) -> None:
    """``ceOverrides``: ``{extensions: {name: string}}``, names as CloudEvents allows (C11)."""
    import re

    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidResource(field_, "must be an object with 'extensions'")
    extensions = value.get("extensions")
    if extensions is None:
        return
    if not isinstance(extensions, Mapping):
        raise InvalidResource(f"{field_}.extensions", "must be a map of attribute name to string")
    for name, item in extensions.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]{1,20}", name):
            raise InvalidResource(
                f"{field_}.extensions",
                f"invalid extension name {name!r}: lower-case letters and digits, at most 20",
            )
        if name in ("id", "source", "type", "specversion"):
            raise InvalidResource(
                f"{field_}.extensions[{name}]", "cannot override a required attribute"
            )
        if not isinstance(item, str):
            raise InvalidResource(f"{field_}.extensions[{name}]", "must be a string; quote it")
