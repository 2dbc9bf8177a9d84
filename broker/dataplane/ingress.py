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
``sub`` to send these events (:mod:`broker.core.ingress_authorization`, compiled once per snapshot).
With OIDC off none of this runs.

Every response carries ``Allow: POST, OPTIONS`` (K38). Broker ingress adds ``knativearrivaltime``
(K44) and sets or decrements ``knativebrokerttl`` (K45, the loop guard of
:mod:`broker.dataplane.reply`); Channels forward events unaltered (K147).
Events are never upgraded from 0.3 (K32, K146).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter

import orjson

from broker.auth.oidc import OidcVerifier, TrustedIssuers
from broker.core import binding, tracing
from broker.core.asgi import Receive, Scope, Send, read_body, send_json
from broker.core.errors import BindingError, PublishError, RequestIncomplete, Unauthenticated
from broker.core.events import ARRIVAL_TIME, BROKER_TTL, AttributeValue, CloudEvent, now_rfc3339
from broker.core.http_status import http_status
from broker.core.ingress_authorization import IngressAuthorization
from broker.core.metrics import Metrics
from broker.core.spec import BrokerSpec, ChannelSpec, Snapshot
from broker.dataplane.bus import Bus
from broker.dataplane.live_feed import LiveFeed
from broker.dataplane.reply import BrokerReentry, apply_broker_ttl
from broker.dataplane.routes import match_route as match_route  # the app routes requests by it

log = logging.getLogger(__name__)

_ALLOW = (b"allow", b"POST, OPTIONS")
# An explicit empty Content-Length: otherwise uvicorn answers chunked, with one more send.
_ACCEPTED_HEADERS = [_ALLOW, (b"content-length", b"0")]
_ACCEPTED_START = {"type": "http.response.start", "status": 202, "headers": _ACCEPTED_HEADERS}
_EMPTY_BODY = {"type": "http.response.body", "body": b""}
_BEARER_CHALLENGE = (b"www-authenticate", b"Bearer")
_OPTIONS_HEADERS = [
    _ALLOW,
    (b"content-length", b"0"),
    (b"webhook-allowed-origin", b"*"),
    (b"webhook-allowed-rate", b"*"),
]


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
        feed: LiveFeed | None = None,
        spans: tracing.Spans | None = None,
    ) -> None:
        self.buses = buses
        self._spans = spans  # span export (OTLP) when configured
        # What it accepts is offered to the watchers of the live feed (cemesh tail).
        self.feed = feed or LiveFeed()
        # Set only with ingress OIDC on: then every POST is authenticated and authorized.
        self._verifier = verifier
        self._authorization: Mapping[tuple[str, str, str], IngressAuthorization] = {}
        self._snapshot = Snapshot()
        # Where each ingress route publishes, keyed as match_route returns it (one lookup).
        self._targets: dict[tuple[str, str, str], BrokerSpec | ChannelSpec] = {}
        self.max_request_bytes = max_request_bytes
        self.max_ttl = max_ttl
        self._metrics = metrics
        self._reentry = BrokerReentry(buses=buses, metrics=metrics, max_ttl=max_ttl, feed=self.feed)

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
        self._reentry.brokers = snapshot.brokers
        self._authorization = snapshot.ingress_authorization

    def serves(self, route: tuple[str, str, str]) -> bool:
        """Whether the current snapshot has the Broker or Channel of ``route`` (Ready)."""
        return route in self._targets

    # -- programmatic entry (replies re-entering a broker: K104, K108) ------------------------

    async def publish_to_broker(self, namespace: str, name: str, event: CloudEvent) -> bool:
        """Put ``event`` into a Broker as ingress would
        (:class:`broker.dataplane.reply.BrokerReentry`).

        False if the loop guard dropped it; raises PublishError if the Broker is gone or its bus
        refuses the event, so that the delivery that produced this reply is retried (K106).
        """
        return await self._reentry.publish(namespace, name, event)

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
        timed = (route, perf_counter())  # for the per-Broker/Channel count of the answer

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
            too_large = f"request body is larger than {self.max_request_bytes} bytes"
            await self._reject(send, 413, too_large, timed=timed)
            return
        try:
            events = binding.parse_request(headers, body)
            span_ends = self._stamp(route, headers, events)
        except BindingError as exc:
            await self._reject(send, http_status(exc)[0], exc.message, timed=timed)
            return
        if sub is not None:
            refusal = self._authorization[route].refusal(sub, events)
            if refusal is not None:
                await self._reject(send, 403, refusal, timed=timed)
                return

        bus = self.buses[target.bus]
        topic = target.topic
        try:
            # A batch goes out together where the bus can (PublishesBatch): one wait for all of
            # its acks rather than one per event.
            publish_batch = getattr(bus, "publish_batch", None) if len(events) > 1 else None
            if publish_batch is not None:
                await publish_batch(topic, events)
            else:
                for event in events:
                    await bus.publish(topic, event, key=event.key)
        except PublishError as exc:
            _end_all(span_ends)
            log.error(
                "bus refused an event",
                extra={"topic": topic, "error": exc.message},
                exc_info=exc.__cause__ is not None,
            )
            status, _ = http_status(exc)  # 503 when the bus may take it later
            await self._reject(send, status, f"event not accepted: {exc.message}", timed=timed)
            return
        _end_all(span_ends)
        self._count_accepted(timed, events)
        await send(_ACCEPTED_START)
        await send(_EMPTY_BODY)

    def _stamp(
        self,
        route: tuple[str, str, str],
        headers: Sequence[tuple[bytes, bytes]],
        events: list[CloudEvent],
    ) -> list[Callable[[], None]] | None:
        """What the ingress adds: the request's trace context (:mod:`broker.core.tracing`) and,
        for a Broker, ``knativearrivaltime`` and the loop guard's ttl (K44, K45). Raises
        BindingError when the ttl ran out. With span export on, starts each event's ingress
        span and returns the functions ending them."""
        trace = tracing.from_headers(headers)
        if trace is not None:
            for event in events:
                tracing.stamp(event, trace)
        spans = self._spans
        span_ends = None if spans is None else [spans.ingress(route, e) for e in events]
        if route[0] == "broker":
            arrival = now_rfc3339()
            for event in events:
                attributes = event.attributes
                if BROKER_TTL in attributes:
                    apply_broker_ttl(event, self.max_ttl)
                else:  # the usual case, without a call (K45)
                    attributes[BROKER_TTL] = self.max_ttl
                attributes[ARRIVAL_TIME] = arrival
        return span_ends

    def _count_accepted(
        self, timed: tuple[tuple[str, str, str], float], events: list[CloudEvent]
    ) -> None:
        route, started = timed
        if self.feed.watched:  # nobody watching: this test is all it costs
            self.feed.offer(route, events)
        metrics = self._metrics
        metrics.accepted += len(events)
        if metrics.detail:
            elapsed_ms = (perf_counter() - started) * 1000.0
            meter = metrics.ingress_meter(route)
            if len(events) == 1:
                meter.accepted(events[0].type, elapsed_ms)
                return
            # A batch: one observation per event type, counted once per event.
            counts: dict[AttributeValue, int] = {}
            for event in events:
                event_type = event.attributes["type"]
                counts[event_type] = counts.get(event_type, 0) + 1
            for event_type, count in counts.items():
                meter.accepted(str(event_type), elapsed_ms, count)

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

    async def _reject(
        self,
        send: Send,
        status: int,
        message: str,
        *,
        timed: tuple[tuple[str, str, str], float] | None = None,
    ) -> None:
        """Answer ``status``; counted per Broker/Channel (``timed``: its route and when the
        request started) once the target is known, else only by status (an unknown name is
        not a label: senders could make up any number of them)."""
        self._metrics.ingress_events[str(status)] += 1
        if timed is not None and self._metrics.detail:
            (kind, namespace, name), started = timed
            self._metrics.ingress_latency.observe(
                (kind, namespace, name, "", str(status)), (perf_counter() - started) * 1000.0
            )
        await _error(send, status, message)


def _end_all(span_ends: list[Callable[[], None]] | None) -> None:
    for end in span_ends or ():
        end()


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
    headers = [_ALLOW]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    elif status == 401:
        headers.append(_BEARER_CHALLENGE)
    await send_json(send, status, orjson.dumps({"code": status, "message": message}), headers)
