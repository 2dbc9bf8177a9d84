"""Delivery of one event to one destination: attempts, retries, the reply, the dead letter.

:meth:`Deliverer.deliver` POSTs an event to a subscriber (``Prefer: reply``, K16, K94; binary
mode unless the policy says ``json``, K93), retries retryable failures with the policy's backoff
(K113, :mod:`broker.dataplane.dispatch.retry`), hands a reply to the target's ``on_reply`` (K104,
K109), with the ``knativebrokerttl`` of the event it answers for the loop guard
(:mod:`broker.dataplane.reply`), and counts a failure there as a failure of the whole attempt (K106,
K110). When every attempt failed the *original* event goes to the dead-letter sink with
``knativeerror*`` extensions (K125-K134); if the dead-letter sink fails too,
:class:`~broker.dataplane.bus.Nack` keeps the event on the bus.

Waiting between retries goes through the injectable ``sleep`` and never holds the per-subscriber
in-flight slot, so a slow-retrying event does not block fresh ones to the same host. A caller
that passes ``hand_back`` (the dispatcher, on a durable bus, while shutting down) gets a
:class:`~broker.dataplane.bus.Nack` (no delay) instead of a wait once it is set: the bus keeps the
event and redelivers it, so a backoff never holds a shutdown.

Every failed attempt is logged (WARNING, one line): the Trigger or Subscription
(``Target.log_fields``), the event id, the destination, the attempt number out of how many, the
status or transport error, and the delay before the next attempt (``next_delay``; null on the
last one, whose outcome is logged next: dead-lettered, dropped, or left on the bus).

Delivery identity: a destination with an ``audience`` gets ``Authorization: Bearer <JWT>`` from
the :class:`TokenSource` handed in (cemesh's issuer, built by the app; None: no tokens), minted
for (audience, the Trigger's or Subscription's identity) and looked up per attempt, so a token
never outlives its use even across long backoffs. ``https`` destinations are verified against
their ``CACerts`` (or the system bundle), which travel to the client with each request.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from broker.core import binding, tracing
from broker.core.errors import BindingError, CemeshError, DeliveryError
from broker.core.events import ERROR_CODE, ERROR_DATA, ERROR_DEST, AttributeValue, CloudEvent
from broker.core.spec import DeliveryPolicy
from broker.dataplane.bus import Nack
from broker.dataplane.dispatch.gate import OriginGates
from broker.dataplane.dispatch.http import HttpClient, Response
from broker.dataplane.dispatch.retry import (
    RETRY_AFTER_STATUSES,
    is_success,
    next_wait,
    parse_retry_after,
    should_retry,
)
from broker.dataplane.reply import ReplyHandler

logger = logging.getLogger(__name__)


class TokenSource(Protocol):
    """Mints cemesh's bearer token for a destination (implemented by the control plane)."""

    def token(self, audience: str, subject: str) -> str:
        """A valid token with ``aud`` = ``audience`` and ``sub`` = ``subject`` (cached by the
        source). Raises :class:`~broker.core.errors.DeliveryError` when none can be made now."""
        ...


PREFER_REPLY = ("prefer", "reply")
# knativeerrorcode when there was no HTTP status at all: refused, reset, timed out (K130).
TRANSPORT_ERROR_CODE = 500
# knativeerrorcode when the subscriber answered 2xx with something that is not a usable reply
# (K100, K101). Reporting the 2xx itself as the error code would read as success; Knative's
# broker filter answers 502 Bad Gateway in exactly this case.
BAD_REPLY_CODE = 502
ERROR_DATA_MAX_CHARS = 1024  # K131
# Base64 turns every 3 bytes into 4 characters, so the first 768 bytes of the body encode to
# exactly the first 1024 characters of the encoding of the whole body: no need to encode more.
ERROR_DATA_MAX_BYTES = ERROR_DATA_MAX_CHARS // 4 * 3


@dataclass(frozen=True, slots=True)
class _Peer:
    """Who one request goes to, beyond its URL: token audience, trusted CAs, our identity."""

    audience: str | None
    ca_certs: str | None
    identity: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how one event is delivered (built per Trigger / Subscription by the dispatcher).

    ``strict_reply``: a Trigger treats a 2xx whose non-empty body is not a CloudEvent as a failed
    delivery (K100); a Subscription ignores such a body (K102).
    """

    subscriber_uri: str
    policy: DeliveryPolicy
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. ("kn-namespace", ns) (K95)
    on_reply: ReplyHandler | None = None  # None -> replies are dropped (K109)
    strict_reply: bool = False
    audience: str | None = None  # of the subscriber: a token is sent when set
    ca_certs: str | None = None  # PEM the subscriber's https certificate must chain to
    identity: str = ""  # sub of the tokens sent on behalf of this Trigger/Subscription
    # Who this delivery is for, added to its log lines: (("trigger", "ns/name"),), say.
    log_fields: tuple[tuple[str, str], ...] = ()
    # Made once per Target, not per event: the peer of its requests, and the headers each of
    # them carries after the event's own (Prefer: reply, then ``headers``).
    peer: _Peer = field(init=False, repr=False, compare=False)
    request_headers: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer", _Peer(self.audience, self.ca_certs, self.identity))
        object.__setattr__(self, "request_headers", (PREFER_REPLY, *self.headers))


class Outcome(enum.Enum):
    """How a delivery settled. The bus message is acked for every one of them."""

    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"
    DROPPED = "dropped"  # failed, and there was no dead-letter sink to take it (K125)


@dataclass(slots=True)
class DeliveryRecord:
    """What one delivery did, for metrics: the subscriber's last HTTP status (None: no
    response) and the retries it took. Filled in by :meth:`Deliverer.deliver` when handed one."""

    status: int | None = None
    retries: int = 0


class ReplyError(DeliveryError):
    """Forwarding a reply failed; names the destination that failed, for ``knativeerrordest``.

    A ``ReplyHandler`` may raise any :class:`~broker.core.errors.CemeshError` (a ``PublishError``
    when storing the reply in the broker failed, say); raising this one instead lets the dead letter
    report the reply destination, its status and its response body (K129-K131).
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str,
        status: int | None = None,
        body: bytes = b"",
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, status=status, retryable=retryable)
        self.destination = destination
        self.body = body


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why one attempt failed; the last one is what the dead letter reports."""

    destination: str
    status: int | None  # None: no HTTP status at all
    body: bytes
    retryable: bool
    reason: str
    retry_after: float | None = None  # seconds, from a Retry-After header


_SUBSCRIBER = "subscriber"
_DEAD_LETTER_SINK = "dead_letter_sink"


class _Job:
    """What one delivery's attempts need beyond the request: the event and its target (for the
    reply and the log lines), the ttl a reply gets, the ``hand_back`` signal, the record to fill
    in, and which destination is tried. One object per delivery, and per dead letter."""

    __slots__ = ("event", "hand_back", "phase", "record", "reply_ttl", "target")

    def __init__(
        self,
        event: CloudEvent,
        target: Target,
        reply_ttl: AttributeValue | None,
        hand_back: asyncio.Event | None,
        record: DeliveryRecord | None,
        phase: str = _SUBSCRIBER,
    ) -> None:
        self.event = event
        self.target = target
        self.reply_ttl = reply_ttl
        self.hand_back = hand_back
        self.record = record
        # _SUBSCRIBER: a 2xx may carry a reply, and attempts are traced. _DEAD_LETTER_SINK: any
        # 2xx will do and its body is ignored.
        self.phase = phase

    @property
    def fields(self) -> dict[str, object]:
        """Who and what its log lines are about."""
        return {**dict(self.target.log_fields), "event_id": self.event.id}

    def to_dead_letter(self) -> _Job:
        """The job of sending the event to the dead-letter sink (no record, no reply)."""
        return _Job(self.event, self.target, None, self.hand_back, None, _DEAD_LETTER_SINK)


class Deliverer:
    """Delivers events to HTTP destinations over one shared :class:`HttpClient`."""

    def __init__(
        self,
        client: HttpClient,
        *,
        max_inflight_per_subscriber: int = 128,
        dead_letter_redelivery_delay: float = 30.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        tokens: TokenSource | None = None,
        error_data_max_bytes: int = ERROR_DATA_MAX_BYTES,
        spans: tracing.Spans | None = None,
    ) -> None:
        self._client = client
        self._spans = spans  # span export (OTLP) when configured
        self._tokens = tokens
        self._error_data_max_bytes = error_data_max_bytes
        self._redelivery_delay = dead_letter_redelivery_delay
        self._sleep = sleep
        self._gates = OriginGates(max_inflight_per_subscriber)  # by scheme://host:port

    async def deliver(
        self,
        event: CloudEvent,
        target: Target,
        *,
        hand_back: asyncio.Event | None = None,
        reply_ttl: AttributeValue | None = None,
        record: DeliveryRecord | None = None,
    ) -> Outcome:
        """Deliver ``event`` to ``target``; dead-letter or drop it when every attempt failed.

        ``reply_ttl`` goes to ``target.on_reply`` with the reply: the ``knativebrokerttl`` of
        the event as it came off the bus (the dispatcher strips it from what subscribers see).

        Raises :class:`~broker.dataplane.bus.Nack` when the dead-letter sink failed as well, so that
        the bus keeps the event and offers it again later; and, once ``hand_back`` is set, instead
        of waiting out a backoff (see the module docstring). ``record``, when given, is told the
        subscriber's last status and the number of retries.
        """
        policy = target.policy
        headers, body = _encode(event, policy)
        headers += target.request_headers
        job = _Job(event, target, reply_ttl, hand_back, record)
        failure = await self._send(target.subscriber_uri, headers, body, policy, target.peer, job)
        if failure is None:
            return Outcome.DELIVERED
        return await self._dead_letter(event, target, failure, job)

    async def _settle_reply(self, response: Response, job: _Job) -> _Failure | None:
        """A 2xx other than 202 arrived: find the reply in it and pass it on (K17-K19,
        K100-K110). A 202 never gets here: its body is never a reply (K18, :meth:`_attempt`)."""
        target, answered = job.target, job.event
        url = target.subscriber_uri
        try:
            reply = binding.parse_response(response.headers, response.body)
        except BindingError as exc:
            # It claims to be a CloudEvent and is not a valid one (K101).
            return _Failure(url, BAD_REPLY_CODE, response.body, True, f"malformed reply: {exc}")
        if reply is None:
            if target.strict_reply and response.body:
                # Triggers: a body that is not an event means the subscriber misunderstood the
                # contract (K100); Subscriptions just ignore the body (K102).
                return _Failure(url, BAD_REPLY_CODE, response.body, True, "reply is not an event")
            return None
        if target.on_reply is None:
            return None  # nowhere to send it (K109)
        tracing.inherit(reply, answered)  # the reply stays in the trace of what it answers
        if self._spans is not None:
            self._spans.reply(reply, answered)
        try:
            await target.on_reply(reply, job.reply_ttl)
        except ReplyError as exc:
            return _Failure(exc.destination, exc.status, exc.body, exc.retryable, exc.message)
        except CemeshError as exc:
            # Storing the reply failed (e.g. the broker's bus refused it): the whole delivery is
            # retried (K106). No other URL failed, so the subscriber stays the reported one.
            return _Failure(url, None, b"", exc.retryable, f"reply not forwarded: {exc.message}")
        return None

    async def _dead_letter(
        self, event: CloudEvent, target: Target, failure: _Failure, job: _Job
    ) -> Outcome:
        policy = target.policy
        log_fields = {
            **dict(target.log_fields),
            "event_id": event.id,
            "destination": failure.destination,
            "status": failure.status,
            "reason": failure.reason,
        }
        if policy.dead_letter_uri is None:
            logger.warning(
                "delivery failed and no dead-letter sink: event dropped", extra=log_fields
            )
            return Outcome.DROPPED
        dead = event.evolve(  # the original event, never the reply (K128)
            set={
                ERROR_DEST: failure.destination,  # K129
                ERROR_CODE: TRANSPORT_ERROR_CODE if failure.status is None else failure.status,
                ERROR_DATA: error_data(failure.body, self._error_data_max_bytes),  # K131, K132
            }
        )
        headers, body = _encode(dead, policy)
        # Pass-through headers such as Kn-Namespace go to the sink too (K134). No Prefer: reply:
        # a dead-letter sink's answer is never processed, and sinks must not rely on it (K134).
        headers.extend(target.headers)
        peer = _Peer(policy.dead_letter_audience, policy.dead_letter_ca_certs, target.identity)
        dls_failure = await self._send(
            policy.dead_letter_uri,
            headers,
            body,
            policy,
            peer,
            job.to_dead_letter(),
        )
        if dls_failure is not None:
            logger.error(
                "dead-letter sink failed too: event stays on the bus",
                extra={
                    **log_fields,
                    "dead_letter_uri": policy.dead_letter_uri,
                    "dead_letter_status": dls_failure.status,
                    "dead_letter_reason": dls_failure.reason,
                    "redelivery_delay": self._redelivery_delay,
                },
            )
            raise Nack(self._redelivery_delay)
        logger.info(
            "event dead-lettered", extra={**log_fields, "dead_letter_uri": policy.dead_letter_uri}
        )
        return Outcome.DEAD_LETTERED

    async def _send(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        policy: DeliveryPolicy,
        peer: _Peer,
        job: _Job,
    ) -> _Failure | None:
        """Up to ``policy.retry + 1`` attempts (K113); the last failure, or None on success.

        Raises Nack instead of waiting for a retry once ``job.hand_back`` is set. With span
        export on, each attempt to the subscriber is a span whose context the attempt's W3C
        headers carry.
        """
        retry_number = 0
        record = job.record
        while True:
            if self._spans is not None and job.phase == _SUBSCRIBER:
                failure = await self._traced_attempt(
                    retry_number + 1, url, headers, body, policy, peer, job
                )
            else:
                failure = await self._attempt(url, headers, body, policy, peer, job)
            if failure is None:
                return None
            last = not failure.retryable or retry_number >= policy.retry
            wait = (
                None
                if last
                else next_wait(policy, retry_number + 1, failure.status, failure.retry_after)
            )
            _log_failed(job, failure, retry_number + 1, policy.retry + 1, wait)
            if wait is None:
                return failure
            retry_number += 1
            if record is not None:
                record.retries = retry_number
            # Sleeping outside the in-flight gate: a backing-off event holds no slot.
            await self._wait(wait, job)

    async def _traced_attempt(
        self,
        attempt: int,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        policy: DeliveryPolicy,
        peer: _Peer,
        job: _Job,
    ) -> _Failure | None:
        """One attempt inside its span; the W3C headers name the span as the parent."""
        assert self._spans is not None
        record = job.record
        (parent, state), end = self._spans.attempt(job.event, url, attempt)
        traced = [h for h in headers if h[0] not in (tracing.TRACEPARENT, tracing.TRACESTATE)]
        traced.append((tracing.TRACEPARENT, parent))
        if state:
            traced.append((tracing.TRACESTATE, state))
        status: int | None = None
        try:
            failure = await self._attempt(url, traced, body, policy, peer, job)
            status = None if failure is None else failure.status
            if failure is None:
                status = record.status if record is not None else 200
            return failure
        finally:
            end(status)

    async def _wait(self, seconds: float, job: _Job) -> None:
        """Wait ``seconds`` before a retry, or raise Nack once ``hand_back`` is set."""
        hand_back = job.hand_back
        if hand_back is None:
            await self._sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        if not hand_back.is_set():
            sleeping = asyncio.ensure_future(self._sleep(seconds))
            handed_back = asyncio.ensure_future(hand_back.wait())
            try:
                await asyncio.wait((sleeping, handed_back), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in (sleeping, handed_back):
                    future.cancel()
            if not hand_back.is_set():
                return
        remaining = max(0.0, seconds - (loop.time() - start))
        logger.info(
            "shutting down: event handed back to the bus instead of waiting out its backoff",
            extra={**job.fields, "backoff_left": round(remaining, 3)},
        )
        # No delay: the next delivery (after the restart, or by another replica) is a fresh
        # one, with the policy's retries from the start, and should not wait for this one.
        raise Nack(0.0)

    async def _attempt(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        policy: DeliveryPolicy,
        peer: _Peer,
        job: _Job,
    ) -> _Failure | None:
        record = job.record
        if peer.audience is not None and self._tokens is not None:
            try:
                bearer = self._tokens.token(peer.audience, peer.identity)
            except DeliveryError as exc:
                return _Failure(url, None, b"", exc.retryable, exc.message)
            headers = [*headers, ("authorization", f"Bearer {bearer}")]
        gate = self._gates(url)  # the in-flight limit shared by the URLs of one origin
        if not gate.enter():
            await gate.wait()
        try:
            response = await self._client.post(
                url, headers, body, timeout=policy.timeout, ca_certs=peer.ca_certs
            )
        except DeliveryError as exc:
            if record is not None:
                record.status = None
            return _Failure(url, None, b"", exc.retryable, exc.message)
        finally:
            gate.leave()
        if record is not None:
            record.status = response.status
        if not is_success(response.status):
            return _Failure(
                url,
                response.status,
                response.body,
                should_retry(response.status),
                f"HTTP {response.status}",
                _retry_after(response),
            )
        if response.status == 202:
            # Success for every destination, and never a reply, even with a valid CloudEvent
            # in its body (K18): no settle coroutine needed.
            return None
        if job.phase != _SUBSCRIBER:
            return None  # a dead-letter sink: any 2xx will do and its body is ignored (K134)
        # Outside the gate: on_reply may publish or POST elsewhere and must not hold this slot.
        return await self._settle_reply(response, job)


def reply_poster(
    client: HttpClient,
    uri: str,
    policy: DeliveryPolicy,
    *,
    audience: str | None = None,
    ca_certs: str | None = None,
    identity: str = "",
    tokens: TokenSource | None = None,
) -> ReplyHandler:
    """A ReplyHandler that POSTs a Subscription's reply to its reply URI (K109).

    One attempt per call: a retryable failure here fails the whole delivery, which retries the
    subscriber and the reply together (K110). Failures raise :class:`ReplyError` naming ``uri``.
    With an ``audience`` and ``tokens``, the reply carries cemesh's token for that audience.
    """

    async def post_reply(reply: CloudEvent, _ttl: AttributeValue | None) -> None:
        # The loop guard ran before this (broker.dataplane.reply.subscription_reply): the ttl is on
        # reply.
        headers, body = _encode(reply, policy)
        try:
            if audience is not None and tokens is not None:
                headers.append(("authorization", f"Bearer {tokens.token(audience, identity)}"))
            response = await client.post(
                uri, headers, body, timeout=policy.timeout, ca_certs=ca_certs
            )
        except DeliveryError as exc:
            raise ReplyError(
                f"reply to {uri}: {exc.message}", destination=uri, retryable=exc.retryable
            ) from exc
        if not is_success(response.status):
            raise ReplyError(
                f"reply to {uri}: HTTP {response.status}",
                destination=uri,
                status=response.status,
                body=response.body,
                retryable=should_retry(response.status),
            )

    return post_reply


def error_data(body: bytes, max_bytes: int = ERROR_DATA_MAX_BYTES) -> str:
    """``knativeerrordata``: standard base64 of the body's first ``max_bytes`` (K131, K132).

    The default keeps it within 1024 characters; Knative reads 1024 bytes of the body.
    """
    return base64.b64encode(body[:max_bytes]).decode("ascii")


def _log_failed(
    job: _Job, failure: _Failure, attempt: int, attempts: int, wait: float | None
) -> None:
    """Log one failed attempt (WARNING), with the delay before the next one (None: none)."""
    logger.warning(
        "delivery attempt failed" if wait is not None else "delivery attempt failed (last)",
        extra={
            **job.fields,
            "to": job.phase,
            "destination": failure.destination,
            "attempt": attempt,
            "attempts": attempts,
            "status": failure.status,
            "reason": failure.reason,
            "retryable": failure.retryable,
            "next_delay": wait,
        },
    )


def _encode(event: CloudEvent, policy: DeliveryPolicy) -> tuple[list[tuple[str, str]], bytes]:
    if policy.format == "json":
        headers, body = binding.to_structured(event)
    else:
        headers, body = binding.to_binary(event)  # binary is the default (K93)
    # Every request cemesh sends carries the event's trace context as W3C headers too.
    if tracing.TRACEPARENT in event.attributes:  # without one it has no context: no calls
        headers += tracing.http_headers(event)
    return headers, body


def _retry_after(response: Response) -> float | None:
    """Seconds asked for by the response's Retry-After, only where it is honoured (K121)."""
    if response.status not in RETRY_AFTER_STATUSES:
        return None
    for name, value in response.headers:
        if name == b"retry-after":
            return parse_retry_after(value.decode("latin-1"), datetime.now(UTC))
    return None
