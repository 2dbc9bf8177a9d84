"""The NATS JetStream bus (``bus: nats``): a stream per topic, a durable pull consumer per group.

Model:

- Topic ``t`` is stored in the file-backed stream :func:`stream_name` (``t`` with ``.`` made
  ``_``: stream names may not contain dots) that captures the one subject :func:`subject_of`
  (``t`` itself when it is a valid NATS subject). Streams are created on first use, idempotently;
  one that already exists with another configuration (an operator changed it) is used as it is.
  Retention is ``interest`` by default: an event is kept until every group of the topic acked
  it, and an event published while a topic has no group is not kept (as with the memory bus);
  ``retention: limits`` plus ``max_age`` keeps a replayable log instead.
- A group is the durable pull consumer :func:`consumer_name` of that stream (explicit ack, no
  delivery limit: the adapter never dead-letters). ``subscribe`` creates (or updates) it before
  returning, with deliver policy ``new``: a new group starts at the end of the stream, so it gets
  everything published after ``subscribe`` returned; an existing group resumes where it was
  (which is what makes events survive a restart of cemesh). Subscriptions of one group pull from
  the same consumer, so they compete; every group gets its own copy.
- Each event is one message: the payload is the cemesh envelope (``broker/events.py``), which
  keeps typed extensions (int, bool) that the NATS binary binding (C76, ``ce-`` headers) would
  turn into strings. Headers: ``Nats-Msg-Id`` (:func:`dedup_id`: source and id, plus the
  ``knativebrokerttl`` when present) so that publishing the same event again within
  ``duplicate_window`` is stored once, and ``Cemesh-Key`` (the key, percent-encoded; absent
  when there is none). ``publish`` returns once the stream answered with its PubAck.
- Pulling: each subscription keeps at most one pull request open, for as many messages as it
  has free handler slots (``concurrency`` minus the messages it holds), so the server never sends
  it more than its handlers can take. Requests expire after :data:`PULL_EXPIRES` and are simply
  renewed; a reconnect renews them at once. Nothing here blocks the event loop.
- Settling: the handler returning acks; :class:`~broker.bus.Nack` naks with its delay (NAK
  ``delay``); another exception is logged and naked after :data:`ERROR_REDELIVERY_DELAY`. A
  message a handler still holds is kept alive with ``in_progress`` every third of ``ack_wait``
  (deliveries with retries and backoff can take minutes); one whose holder died (a crash, a lost
  connection) is redelivered by the server after ``ack_wait``. Closing a subscription or the bus
  never acks: it naks what it holds (and what the server had already sent) so that the group's
  next subscriber gets it at once. ``Message.attempt`` is the server's delivery count
  (``num_delivered``); a message naked by ``close`` before a handler saw it counts too.
- Order (``ORDERED_BY_KEY``): a group subscribed with ``ordered=True`` gets
  ``max_ack_pending=1``: the server hands out one message of the group at a time, to whichever
  subscription, and the next only once it is acked, so events reach the group in publish order,
  across competing subscriptions and redeliveries, whatever ``concurrency``. That orders all keys
  together: an ordered group has one delivery in flight (the price of ordering on JetStream
  without a consumer per key). Unordered groups use ``max_ack_pending`` (default 1000).
- ``delete_group`` closes the group's subscriptions of this bus (naking what they hold), then
  deletes the durable consumer: its position and its unacked messages go with it (on an
  ``interest`` stream, messages only it still needed are removed). A consumer or stream that
  does not exist is fine.
- Errors: a publish that timed out is a retryable PublishError although the server may have
  stored it (the request went out): the producer's retry is then de-duplicated by its
  ``Nats-Msg-Id``. An event larger than the server's ``max_payload`` (1 MiB by default) is a
  terminal PublishError. The client reconnects forever; meanwhile pulls pause and publishes fail
  (retryably) after ``request_timeout``.

Options (settings ``nats_<option>``): ``url`` (comma-separated servers), ``user``,
``password``, ``token``, ``creds_file``, ``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``,
``ack_wait`` (s, 30), ``max_ack_pending`` (1000), ``duplicate_window`` (s, 120), ``retention``
(``interest`` | ``limits``), ``max_age`` (s, 0 = none), ``replicas`` (1),
``inactive_threshold`` (s: delete a group nobody pulled from for that long; default never),
``request_timeout`` (s, 5: PubAck and JetStream API calls), ``connect_timeout`` (s, 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import quote, unquote

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import api
from nats.js.client import JetStreamContext

from broker.bus import BusFactory, Capability, Handler, Message, run_handler
from broker.errors import BusError, PublishError, SubscribeError
from broker.events import BROKER_TTL, CloudEvent, attribute_text, decode_envelope, encode_envelope

log = logging.getLogger(__name__)

KEY_HEADER = "Cemesh-Key"
MSG_ID_HEADER = "Nats-Msg-Id"
STATUS_HEADER = "Status"

# Pull requests are renewed this often (seconds) when nothing arrives; short enough that a
# request lost without a reply (a server restart) is noticed soon, long enough to cost nothing.
PULL_EXPIRES = 5.0
PULL_GRACE = 1.0  # beyond the expiry, how long to wait for the server's 408 before moving on
# Redelivery delay after a handler raised something other than Nack (as the memory bus): a handler
# failing on every message must not spin, a transient error should not wait long.
ERROR_REDELIVERY_DELAY = 0.05
# A message that is not a cemesh envelope (someone else published on the subject) cannot be
# handed to a handler, and dropping it is not ours to decide: it is logged and comes back.
UNDECODABLE_REDELIVERY_DELAY = 60.0
RETRY_PAUSE = 0.5  # after a failed pull request or a failed consumer re-creation
CLOSE_TIMEOUT = 2.0  # bound on each network step of close (server possibly unreachable)
_EXPIRES = b'"expires":%d' % int(PULL_EXPIRES * 1e9)

_STREAM_EXISTS_DIFFERENTLY = 10058  # JetStream: stream name already in use, other config
_MAX_NAME = 200
_PLAIN_NAME = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_SUBJECT_CHARS = frozenset(chr(code) for code in range(0x21, 0x7F)) - {".", "*", ">"}
_ID_SAFE = "/:@!$&'()*+,;=?#~"


# -- names (pure) ---------------------------------------------------------------------------------


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _name(text: str) -> str:
    # Stream and consumer names may not contain '.', '*', '>', whitespace or path separators.
    # Plain names (letters, digits, '-', '.') only swap '.' for '_', which no plain name
    # contains, so the mapping stays one-to-one; anything else gets a digest after a '~', which
    # no plain name contains either.
    if len(text) <= _MAX_NAME and _PLAIN_NAME.fullmatch(text):
        return text.replace(".", "_")
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', text)[:100]}~{_digest(text, 16)}"


def stream_name(topic: str) -> str:
    """The stream of ``topic``: ``cemesh.broker.default.b`` -> ``cemesh_broker_default_b``."""
    return _name(topic)


def consumer_name(group: str) -> str:
    """The durable consumer of ``group``: ``cemesh.trigger.<uid>`` -> ``cemesh_trigger_<uid>``."""
    return _name(group)


def subject_of(topic: str) -> str:
    """The subject events of ``topic`` are published on: the topic when it is a valid subject
    (dot-separated tokens of printable ASCII without ``*``, ``>`` or a leading ``$``), otherwise
    ``cemesh-topic.<digest>``."""
    tokens = topic.split(".")
    if len(topic) <= _MAX_NAME and all(
        token and token[0] != "$" and all(c in _SUBJECT_CHARS for c in token) for token in tokens
    ):
        return topic
    return f"cemesh-topic.{_digest(topic, 32)}"


def dedup_id(event: CloudEvent) -> str | None:
    """The ``Nats-Msg-Id`` of ``event``: its source and id (what makes an event unique), plus its
    ``knativebrokerttl`` if any, so that a reply re-entering the broker unchanged but for the
    decremented ttl is a new message, not a duplicate. None when source or id is missing."""
    source, id_ = event.attributes.get("source"), event.attributes.get("id")
    if source is None or id_ is None:
        return None
    parts = [quote(attribute_text(source), safe=_ID_SAFE), quote(attribute_text(id_), _ID_SAFE)]
    ttl = event.attributes.get(BROKER_TTL)
    if ttl is not None:
        parts.append(quote(attribute_text(ttl), safe=_ID_SAFE))
    return " ".join(parts)


# -- options --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """The adapter's options, validated (see the module docstring)."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    ack_wait: float = 30.0
    max_ack_pending: int = 1000
    duplicate_window: float = 120.0
    retention: Literal["interest", "limits"] = "interest"
    max_age: float = 0.0
    replicas: int = 1
    inactive_threshold: float | None = None
    request_timeout: float = 5.0
    connect_timeout: float = 5.0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> NatsOptions:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise BusError(f"nats bus: unknown options {unknown}", retryable=False)
        values = {name: value for name, value in options.items() if value is not None}
        for name in ("url", "user", "password", "token", "creds_file"):
            _check(name, values, lambda v: isinstance(v, str) and v != "", "a non-empty string")
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            _check(name, values, lambda v: isinstance(v, str) and v != "", "a non-empty string")
        for name in ("ack_wait", "duplicate_window", "request_timeout", "connect_timeout"):
            _check(name, values, lambda v: _number(v) and v > 0, "a positive number of seconds")
        _check("inactive_threshold", values, lambda v: _number(v) and v > 0, "positive seconds")
        _check("max_age", values, lambda v: _number(v) and v >= 0, "seconds >= 0 (0 = no limit)")
        for name in ("max_ack_pending", "replicas"):
            _check(name, values, lambda v: _integer(v) and v >= 1, "a positive integer")
        _check("retention", values, lambda v: v in ("interest", "limits"), "interest or limits")
        if ("tls_cert_file" in values) != ("tls_key_file" in values):
            raise BusError("nats bus: tls_cert_file and tls_key_file go together", retryable=False)
        return cls(**values)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(name: str, values: Mapping[str, Any], valid: Any, what: str) -> None:
    if name in values and not valid(values[name]):
        raise BusError(f"nats bus: {name} must be {what}, not {values[name]!r}", retryable=False)


# -- errors ---------------------------------------------------------------------------------------


def _retryable(exc: BaseException) -> bool:
    """Whether trying again may succeed after the driver raised ``exc``."""
    if isinstance(exc, nats.js.errors.APIError) and not isinstance(
        exc, nats.js.errors.ServiceUnavailableError
    ):
        # 4xx: the request itself is wrong (overlapping subjects, bad config); 5xx: the server.
        return exc.code is None or exc.code >= 500 or exc.code in (408, 429)
    return not isinstance(
        exc,
        nats.errors.MaxPayloadError
        | nats.errors.BadSubjectError
        | nats.errors.BadHeaderError
        | nats.errors.AuthorizationError
        | ValueError,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{type(exc).__name__} {exc.code}/{exc.err_code}: {exc.description}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- the bus --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    stream: str
    subject: str


class NatsBus:
    """The NATS JetStream bus (``bus: nats``); see the module docstring."""

    name = "nats"
    capabilities = frozenset(
        {
            Capability.DURABLE,
            Capability.NACK_DELAY,
            Capability.REDELIVERY_COUNT,
            Capability.ORDERED_BY_KEY,
        }
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = NatsOptions.from_mapping(options or {})
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._open_lock = asyncio.Lock()
        self._stream_lock = asyncio.Lock()
        self._targets: dict[str, _Target] = {}  # topics whose stream exists
        self._subscriptions: set[_NatsSubscription] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (bounded by ``connect_timeout``). Idempotent; a closed bus stays closed."""
        if self._closed:
            raise BusError("nats bus is closed", retryable=False)
        async with self._open_lock:
            if self._nc is not None:
                return
            nc = Client()
            try:
                # The client reconnects forever once connected, so the first connect would too:
                # bound it here.
                await asyncio.wait_for(
                    nc.connect(**self._connect_options()), self.options.connect_timeout
                )
            except (Exception, asyncio.CancelledError) as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if isinstance(exc, BusError):
                    raise
                raise BusError(
                    f"nats bus: cannot connect to {self.options.url}: {_describe(exc)}",
                    retryable=_retryable(exc),
                ) from exc
            self._nc = nc
            self._js = nc.jetstream(timeout=self.options.request_timeout)

    def _connect_options(self) -> dict[str, Any]:
        o = self.options
        connect: dict[str, Any] = {
            "servers": [url.strip() for url in o.url.split(",") if url.strip()],
            "name": "cemesh",
            "connect_timeout": o.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # a durable bus outlives server restarts
            "reconnect_time_wait": 1,
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if o.user is not None:
            connect["user"] = o.user
        if o.password is not None:
            connect["password"] = o.password
        if o.token is not None:
            connect["token"] = o.token
        if o.creds_file is not None:
            connect["user_credentials"] = o.creds_file
        if o.tls_ca_file or o.tls_cert_file:
            connect["tls"] = self._tls_context()
        return connect

    def _tls_context(self) -> ssl.SSLContext:
        o = self.options
        try:
            context = ssl.create_default_context(cafile=o.tls_ca_file)
            if o.tls_cert_file and o.tls_key_file:
                context.load_cert_chain(o.tls_cert_file, o.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise BusError(f"nats bus: bad TLS files: {exc}", retryable=False) from exc
        return context

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats connection error: %s", _describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("nats connection lost; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("nats connection re-established")
        # Open pull requests died with the old connection: renew them now, not at their expiry.
        for subscription in list(self._subscriptions):
            subscription.renew_pull()

    async def close(self) -> None:
        """Stop every subscription (naking what they hold) and disconnect. Idempotent."""
        self._closed = True
        subscriptions = list(self._subscriptions)
        # Stop every subscription before any of them naks: a message naked by one must not be
        # handed to another one of this bus that is closing too.
        for subscription in subscriptions:
            subscription.stop()
        if subscriptions:
            await asyncio.gather(*(s.close() for s in subscriptions), return_exceptions=True)
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=int(CLOSE_TIMEOUT))  # the naks above
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Store ``event`` in the stream of ``topic``; return once the server acknowledged it."""
        js = self._js
        if self._closed or js is None:
            state = "closed" if self._closed else "not open"
            raise PublishError(f"nats bus is {state}", retryable=False)
        target = self._targets.get(topic) or await self._target(topic, PublishError)
        headers: dict[str, str] = {}
        msg_id = dedup_id(event)
        if msg_id is not None:
            headers[MSG_ID_HEADER] = msg_id
        if key is not None:
            headers[KEY_HEADER] = quote(key, safe="")
        try:
            await js.publish(target.subject, encode_envelope(event), headers=headers)
        except Exception as exc:
            if isinstance(exc, nats.js.errors.NoStreamResponseError):
                # The stream went away (deleted by hand, server state lost): the next publish
                # creates it again.
                self._targets.pop(topic, None)
            raise PublishError(
                f"nats bus: publish to {topic!r} failed: {_describe(exc)}",
                retryable=not self._closed and _retryable(exc),
            ) from exc

    async def _target(self, topic: str, error: type[BusError]) -> _Target:
        """Create the stream of ``topic`` unless this bus already did."""
        async with self._stream_lock:
            target = self._targets.get(topic)
            if target is None:
                target = _Target(stream_name(topic), subject_of(topic))
                await self._create_stream(topic, target, error)
                self._targets[topic] = target
            return target

    async def _create_stream(self, topic: str, target: _Target, error: type[BusError]) -> None:
        js = self._jetstream(error)
        o = self.options
        config = api.StreamConfig(
            name=target.stream,
            description=f"cemesh topic {topic}",
            subjects=[target.subject],
            retention=api.RetentionPolicy(o.retention),
            storage=api.StorageType.FILE,
            num_replicas=o.replicas,
            duplicate_window=o.duplicate_window,
            max_age=o.max_age,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_EXISTS_DIFFERENTLY:
                raise error(
                    f"nats bus: cannot create stream {target.stream!r} for topic {topic!r}: "
                    f"{_describe(exc)}",
                    retryable=_retryable(exc),
                ) from exc
            # Someone configured the stream otherwise (limits, replicas): theirs to decide.
            log.info("nats stream %s exists with another configuration; using it", target.stream)
        except Exception as exc:
            raise error(
                f"nats bus: cannot create stream {target.stream!r}: {_describe(exc)}",
                retryable=not self._closed and _retryable(exc),
            ) from exc

    def _jetstream(self, error: type[BusError]) -> JetStreamContext:
        if self._closed or self._js is None:
            raise error(f"nats bus is {'closed' if self._closed else 'not open'}", retryable=False)
        return self._js

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> _NatsSubscription:
        """Create (or resume) the durable consumer of ``group``, then pull from it."""
        self._jetstream(SubscribeError)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise SubscribeError(
                f"nats bus: concurrency must be a positive integer, not {concurrency!r}",
                retryable=False,
            )
        target, consumer = await self._declare(topic, group, ordered=ordered)
        assert self._nc is not None  # checked by _jetstream above, and close() is not awaited
        subscription = _NatsSubscription(
            self, self._nc, topic, group, target, consumer, handler, concurrency, ordered
        )
        try:
            await subscription.start()
        except Exception as exc:
            raise SubscribeError(
                f"nats bus: cannot subscribe to {topic!r} as {group!r}: {_describe(exc)}",
                retryable=not self._closed and _retryable(exc),
            ) from exc
        if self._closed:  # closed while we were starting
            subscription.stop()
            await subscription.close()
            raise SubscribeError("nats bus is closed", retryable=False)
        self._subscriptions.add(subscription)
        return subscription

    async def _declare(self, topic: str, group: str, *, ordered: bool) -> tuple[_Target, str]:
        """Make sure the stream of ``topic`` and the consumer of ``group`` exist, as configured."""
        target = self._targets.get(topic) or await self._target(topic, SubscribeError)
        consumer = consumer_name(group)
        o = self.options
        config = api.ConsumerConfig(
            name=consumer,
            durable_name=consumer,
            description=f"cemesh group {group}",
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=o.ack_wait,
            max_deliver=-1,  # redelivered until acked: dead letters are the dispatcher's
            max_ack_pending=1 if ordered else o.max_ack_pending,
            inactive_threshold=o.inactive_threshold,
        )
        js = self._jetstream(SubscribeError)
        try:
            # Creates the consumer, or updates an existing one (ack_wait, max_ack_pending...)
            # keeping its position: a group resumes where it was.
            await js.add_consumer(target.stream, config)
        except Exception as exc:
            stream_gone = isinstance(exc, nats.js.errors.NotFoundError)
            if stream_gone:
                self._targets.pop(topic, None)  # deleted by hand: the next attempt re-creates it
            raise SubscribeError(
                f"nats bus: cannot create consumer {consumer!r} on stream {target.stream!r}: "
                f"{_describe(exc)}",
                retryable=not self._closed and (stream_gone or _retryable(exc)),
            ) from exc
        return target, consumer

    async def delete_group(self, topic: str, group: str) -> None:
        """Close ``group``'s subscriptions here, then delete its durable consumer. Idempotent."""
        js = self._jetstream(BusError)
        mine = [s for s in self._subscriptions if (s.topic, s.group) == (topic, group)]
        for subscription in mine:  # all stopped before any naks (as in close)
            subscription.stop()
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        stream, consumer = stream_name(topic), consumer_name(group)
        try:
            await js.delete_consumer(stream, consumer)
        except nats.js.errors.NotFoundError:
            return  # no such consumer, or no such stream: nothing to delete
        except Exception as exc:
            raise BusError(
                f"nats bus: cannot delete consumer {consumer!r} of stream {stream!r}: "
                f"{_describe(exc)}",
                retryable=not self._closed and _retryable(exc),
            ) from exc

    def _forget(self, subscription: _NatsSubscription) -> None:
        self._subscriptions.discard(subscription)


class _Held:
    """A message this subscription holds (queued for or in a handler), with its last touch."""

    __slots__ = ("msg", "touched")

    def __init__(self, msg: Msg, touched: float) -> None:
        self.msg = msg
        self.touched = touched


class _NatsSubscription:
    """One subscription: a pull loop, ``concurrency`` handler tasks, and an in-progress ticker."""

    def __init__(
        self,
        bus: NatsBus,
        nc: Client,
        topic: str,
        group: str,
        target: _Target,
        consumer: str,
        handler: Handler,
        concurrency: int,
        ordered: bool,
    ) -> None:
        self._bus = bus
        self._nc = nc
        self._topic = topic
        self._group = group
        self._handler = handler
        self._concurrency = concurrency
        self._ordered = ordered
        self._ack_wait = bus.options.ack_wait
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{target.stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._queue: asyncio.Queue[_Held] = asyncio.Queue()
        self._held: set[_Held] = set()
        self._slot_freed = asyncio.Event()
        # The one open pull request: its reply subject and the messages it may still bring.
        self._request_reply = ""
        self._credits = 0
        self._request_over = asyncio.Event()
        self._requests = 0
        self._recreate = False  # the consumer (or stream) vanished: declare it again
        self._pause = False  # the last pull request failed: wait a little before the next
        self._log_extra = {"topic": topic, "group": group}
        self._sub: NatsSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._stopped = asyncio.Event()

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str:
        return self._group

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        name = f"nats-bus {self._topic}/{self._group}"
        self._tasks = [
            asyncio.create_task(self._pull(), name=f"{name} pull"),
            asyncio.create_task(self._keep_alive(), name=f"{name} in-progress"),
            *(
                asyncio.create_task(self._work(), name=f"{name} handler")
                for _ in range(self._concurrency)
            ),
        ]

    # -- receiving ----------------------------------------------------------------------------

    async def _pull(self) -> None:
        while not self._closed:
            try:
                await self._pull_once()
            except Exception:  # a bug here must not silently stop the subscription
                log.exception("nats bus: pull loop failed; going on", extra=self._log_extra)
                await asyncio.sleep(RETRY_PAUSE)

    async def _pull_once(self) -> None:
        """Wait for a free handler slot, then send one pull request and wait for its end."""
        free = self._concurrency - len(self._held)
        if free <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
            return
        if self._pause:
            # The last request ended in an error (no consumer, too many waiting requests...):
            # do not hammer the server.
            self._pause = False
            await asyncio.sleep(RETRY_PAUSE)
        if self._recreate:
            try:
                await self._bus._declare(self._topic, self._group, ordered=self._ordered)
            except BusError as exc:
                log.warning("nats bus: cannot re-create consumer: %s", exc.message)
                self._pause = True
                return
            self._recreate = False
        self._requests += 1
        self._request_reply = f"{self._inbox}.{self._requests}"
        self._credits = free
        self._request_over.clear()
        try:
            await self._nc.publish(
                self._next_subject, b'{"batch":%d,%s}' % (free, _EXPIRES), self._request_reply
            )
        except Exception as exc:  # disconnected with a full buffer, closing...
            log.debug("nats bus: pull request failed: %s", _describe(exc))
            self._pause = True
            return
        # Over when it brought all it asked for, when the server ended it (408 at expiry), or,
        # should that answer be lost, a little after its expiry.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._request_over.wait(), PULL_EXPIRES + PULL_GRACE)

    def renew_pull(self) -> None:
        """Forget the open pull request (it died with the connection); the loop sends a new one."""
        self._credits = 0
        self._request_over.set()

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(STATUS_HEADER) if headers else None
        if status is not None:
            self._on_status(msg, status)
            return
        if self._closed:
            await _settle(msg, "nak")  # sent before the server saw us leave: give it back now
            return
        held = _Held(msg, asyncio.get_running_loop().time())
        self._held.add(held)
        if self._credits > 0:
            self._credits -= 1
            if self._credits == 0:
                self._request_over.set()
        self._queue.put_nowait(held)

    def _on_status(self, msg: Msg, status: str) -> None:
        if status == "100" or msg.subject != self._request_reply:
            return  # a heartbeat, or the end of a request already given up
        if status not in ("404", "408"):  # 404/408: no messages / expired; anything else:
            assert msg.headers is not None
            description = msg.headers.get(api.Header.DESCRIPTION, "")
            log.warning(
                "nats bus: pull request ended with %s %s",
                status,
                description,
                extra=self._log_extra,
            )
            self._pause = True
            # 503 (no responders): the consumer or its stream is gone; 409 "Consumer Deleted".
            if status == "503" or "deleted" in description.lower():
                self._bus._targets.pop(self._topic, None)
                self._recreate = True
        self._credits = 0
        self._request_over.set()

    # -- handling -----------------------------------------------------------------------------

    async def _work(self) -> None:
        handler = self._handler
        while not self._closed:
            held = await self._queue.get()
            msg = held.msg
            try:
                message = _message(msg)
            except Exception:
                log.error(
                    "nats bus: message is not a cemesh event; redelivering it in %ss",
                    UNDECODABLE_REDELIVERY_DELAY,
                    exc_info=True,
                    extra={"topic": self._topic, "group": self._group, "subject": msg.subject},
                )
                await self._settle(held, "nak", UNDECODABLE_REDELIVERY_DELAY)
                continue
            try:
                delay = await run_handler(
                    handler,
                    message,
                    error_delay=ERROR_REDELIVERY_DELAY,
                    logger=log,
                    log_extra={"topic": self._topic, "group": self._group},
                )
            except BaseException:  # cancellation (close) and interpreter exit: never an ack
                await self._settle(held, "nak")
                raise
            if delay is not None:
                await self._settle(held, "nak", delay)
                continue
            # A handler that swallowed the cancellation of close() did not succeed either.
            await self._settle(held, "nak" if self._closed else "ack")

    async def _settle(self, held: _Held, how: Literal["ack", "nak"], delay: float = 0.0) -> None:
        self._held.discard(held)
        self._slot_freed.set()
        await _settle(held.msg, how, delay)

    async def _keep_alive(self) -> None:
        """Tell the server every ``ack_wait / 3`` that held messages are still being worked on."""
        interval = self._ack_wait / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for something to happen
            now = loop.time()
            for held in list(self._held):
                if now - held.touched >= interval:
                    held.touched = now
                    with contextlib.suppress(Exception):  # settled meanwhile, or disconnected
                        await held.msg.in_progress()

    # -- closing ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop pulling and cancel the handler tasks (their messages are naked as they end)."""
        if self._closed:
            return
        self._closed = True
        self._bus._forget(self)
        current = asyncio.current_task()
        for task in self._tasks:
            # A handler closing its own subscription is not cancelled: it naks once it returns.
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        """Stop consuming; nak (never ack) every message this subscription holds. Idempotent."""
        if self._closed and not self._tasks:
            await self._stopped.wait()
            return
        self.stop()
        current = asyncio.current_task()
        tasks, self._tasks = [t for t in self._tasks if t is not current], []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            # Drain: the server forgets the open pull request, and what it had already sent
            # reaches _on_msg, which naks it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sub.drain(), CLOSE_TIMEOUT)
        while not self._queue.empty():
            await self._settle(self._queue.get_nowait(), "nak")
        self._stopped.set()


def _message(msg: Msg) -> Message:
    headers = msg.headers
    key = headers.get(KEY_HEADER) if headers else None
    return Message(
        decode_envelope(msg.data),
        None if key is None else unquote(key),
        msg.metadata.num_delivered,
    )


async def _settle(msg: Msg, how: Literal["ack", "nak"], delay: float = 0.0) -> None:
    """Ack or nak ``msg``; a lost ack or nak only means a redelivery after ``ack_wait``."""
    try:
        if how == "ack":
            await msg.ack()
        else:
            await msg.nak(delay=delay if delay > 0 else None)
    except Exception as exc:
        log.debug("nats bus: could not %s a message: %s", how, _describe(exc))


# Checked by mypy: NatsBus is a BusFactory building a Bus.
_factory: BusFactory = NatsBus
