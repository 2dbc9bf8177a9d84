"""The Redis Streams bus (``bus: redis``): a stream per topic, a consumer group per group.

Model:

- Names: Redis keys and group names are binary-safe strings, so topic ``t`` is stored in the
  stream whose key is ``t`` itself (UTF-8) and group ``g`` is the consumer group named ``g``
  (:func:`stream_key`, :func:`group_name`): ``cemesh.broker.default.b`` stays
  ``cemesh.broker.default.b``. Each subscription reads as its own consumer (:func:`consumer_name`:
  host, pid and a random suffix), so subscriptions of one group compete and every group gets
  its own copy. Standalone Redis (or a proxy in front of a primary); Redis Cluster is not
  supported (publishes to several streams share one pipeline).
- Each event is one stream entry: field ``e`` holds the cemesh envelope (``broker/events.py``,
  which keeps typed extensions and every data byte), field ``k`` the key (UTF-8; absent when
  there is none, so ``""`` and no key differ). ``publish`` returns once Redis answered the XADD;
  concurrent publishes are sent together in pipelines (one round trip for many events). How
  durable an answered XADD is depends on the server: ``appendonly yes`` with ``appendfsync
  always`` answers only after the AOF is fsynced; ``everysec`` may lose the last second on a
  crash of the host; without persistence a restart of Redis loses everything (``DURABLE`` is
  declared for the persistent configuration). ``maxlen`` adds approximate ``MAXLEN ~`` trimming
  to every XADD: a safety cap that may drop entries not yet acked, so keep it generous.
- ``subscribe`` creates the group at ``$`` with MKSTREAM before returning (BUSYGROUP: the group
  exists and resumes where it was, which is what makes events survive a restart of cemesh), so
  everything published after it returned reaches the group.
- Reading: each subscription runs one fetch loop that asks for at most as many entries as it
  has free handler slots (``concurrency`` minus what it holds): XREADGROUP ``>`` with ``BLOCK
  block_ms`` (short, so that close is prompt), and every ``claim_interval`` (and whenever one of
  its own redeliveries falls due) it takes over entries pending longer than
  ``visibility_timeout`` on *any* consumer of the group (XPENDING ``IDLE`` then XCLAIM with
  that minimum idle time, so that only one subscription gets each): those of a crashed
  replica, and those released by a nack or a close (below). ``concurrency`` handler tasks live
  as long as the subscription.
- Settling: the handler returning acks (XACK). A failure leaves the entry pending: ``Nack(delay)``
  (or, after another exception, :data:`ERROR_REDELIVERY_DELAY`) *releases* it with XCLAIM to the
  placeholder consumer :data:`RELEASED_CONSUMER` with ``IDLE = visibility_timeout - delay``, so
  that it becomes due for takeover by any subscription of the group ``delay`` seconds later
  (the delay lives on the server and survives a crash). A delay longer than the visibility
  timeout is held locally and released once what is left fits. An entry a handler holds (or that
  waits for a long delay) is kept alive by re-claiming it to its consumer every third of the
  visibility timeout (deliveries with retries and backoff can take minutes), so nobody takes it
  over while it is being handled. Acks, releases and keep-alives of a subscription go through
  one ordered queue, sent in pipelines.
- ``Message.attempt`` is the group's delivery count of the entry (1 from XREADGROUP; on a
  takeover, the count XPENDING reported plus the XCLAIM): ``REDELIVERY_COUNT``. Releases and
  keep-alives use XCLAIM ``JUSTID``, which does not count. An entry read but released by a
  close before a handler saw it counts as delivered too.
- Closing a subscription stops reading (after the current ``BLOCK``), cancels its handlers and
  releases everything it holds for immediate takeover: it never acks in-flight work. It then
  deletes its consumer from the group when nothing is pending on it any more. A crashed replica
  leaves its consumer and pending entries behind; they are taken over after the visibility
  timeout.
- ``delete_group`` closes the group's subscriptions of this bus (releasing what they hold),
  then XGROUP DESTROY: the group, its consumers and its pending entries go, and the stream is
  trimmed at once (the group no longer holds its place). A group or stream that does not exist
  is fine.
- Trimming: entries stay in a stream after every group acked them (XACK does not delete), so
  every ``trim_interval`` the bus trims each stream it used up to the oldest entry some group
  still needs (XTRIM ``MINID ~``: the oldest pending entry, or the first not yet delivered, of
  every group; everything when the stream has no group, as an event published with no group
  reaches no one). A group nobody consumes any more (a Trigger not Ready for a while) still holds
  its place and so stops trimming of its stream (a deleted Trigger's group is destroyed by
  ``delete_group``); ``maxlen`` is the backstop.
- Run Redis with ``maxmemory-policy noeviction``: an evicting policy may delete whole streams;
  with ``noeviction`` a full Redis refuses XADD (``OOM``), a retryable :class:`PublishError`.
- Not declared: ``ORDERED_BY_KEY``. Entries go to whichever consumer of the group asks first and
  a released entry is redelivered while later entries of its key are handled, so one key's
  events can be handled out of order across replicas and redeliveries; ordering per key would
  need a stream per key partition with one reader each. ``subscribe(ordered=True)`` is refused.

Options (settings ``redis_<option>``): ``url`` (``redis://`` or ``rediss://`` with user,
password and db), ``maxlen`` (approximate cap per stream; default none), ``visibility_timeout``
(s, 30), ``block_ms`` (200), ``claim_interval`` (s, 1), ``trim_interval`` (s, 60; 0 = never),
``socket_timeout`` (s, 5), ``connect_timeout`` (s, 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import os
import socket
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisError,
    ResponseError,
)

from broker.bus import BusFactory, Capability, Handler, Message, run_handler
from broker.errors import BusError, PublishError, SubscribeError
from broker.events import CloudEvent, decode_envelope, encode_envelope

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

EVENT_FIELD = b"e"
KEY_FIELD = b"k"
# Released entries are parked on this consumer: pending (never acked), owned by no subscription,
# so that a closing subscription can delete its own consumer without orphaning them.
RELEASED_CONSUMER = "cemesh:released"

# Redelivery delay after a handler raised something other than Nack (as the memory bus): a handler
# failing on every message must not spin, a transient error should not wait long.
ERROR_REDELIVERY_DELAY = 0.05
# An entry that is not a cemesh envelope (someone else wrote to the stream) cannot be handed to a
# handler, and dropping it is not ours to decide: it is logged and comes back this much later.
UNDECODABLE_REDELIVERY_DELAY = 60.0
RETRY_PAUSE = 0.5  # after a failed read, claim or settle (Redis unreachable, restarting)
CLOSE_TIMEOUT = 2.0  # bound on each network step of close (server possibly unreachable)
MAX_PUBLISH_BATCH = 512  # XADDs per pipeline
PUBLISH_PIPELINES = 2  # pipelines in flight at once: the next batch fills while one is sent
# A command that failed on a broken connection is sent again on a new one (at most this many
# times, with a short backoff): enough to get over stale pooled connections after a restart of
# Redis, short enough that publishing to a Redis that is down fails fast. A resent XADD whose
# first answer was lost may store the event twice: at-least-once.
CONNECTION_RETRIES = 2
# In Redis's error for XGROUP on a missing stream (XGROUP DESTROY of a never-used topic).
_NO_STREAM = "requires the key to exist"
WAKEUP_SLACK = 0.005  # s: our clock and the server's round milliseconds differently

# Error replies after which the same command may succeed later (memory freed, failover done...).
_RETRYABLE_REPLIES = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MASTERDOWN",
    "NOREPLICAS",
    "CLUSTERDOWN",
)


# -- names, options and policy (pure) -------------------------------------------------------------


def stream_key(topic: str) -> str:
    """The stream of ``topic``: the topic itself (Redis keys are binary-safe)."""
    return topic


def group_name(group: str) -> str:
    """The consumer group of ``group``: the name itself (group names are binary-safe)."""
    return group


def consumer_name() -> str:
    """A consumer name of its own for one subscription: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class Options:
    """The adapter's options, validated (see the module docstring)."""

    url: str = "redis://127.0.0.1:6379/0"
    maxlen: int | None = None
    visibility_timeout: float = 30.0
    block_ms: int = 200
    claim_interval: float = 1.0
    trim_interval: float = 60.0
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0

    @property
    def visibility_ms(self) -> int:
        return math.ceil(self.visibility_timeout * 1000)


def _number(name: str, value: Any, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BusError(f"redis bus: {name} must be a number, not {value!r}", retryable=False)
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise BusError(f"redis bus: {name} must be {relation} {minimum}", retryable=False)
    return float(value)


def parse_options(options: Mapping[str, Any] | None) -> Options:
    """Validate ``options``; unknown keys and bad values are a terminal :class:`BusError`."""
    values = dict(options or {})
    known = set(Options.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise BusError(
            f"redis bus: unknown options {unknown}; known: {sorted(known)}", retryable=False
        )
    defaults = Options()
    url = values.get("url", defaults.url)
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise BusError(f"redis bus: url must be a redis:// URL, not {url!r}", retryable=False)
    maxlen = values.get("maxlen")
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int)):
        raise BusError(f"redis bus: maxlen must be an integer, not {maxlen!r}", retryable=False)
    if maxlen is not None and maxlen < 1:
        raise BusError("redis bus: maxlen must be >= 1", retryable=False)
    block_ms = values.get("block_ms", defaults.block_ms)
    if isinstance(block_ms, bool) or not isinstance(block_ms, int) or block_ms < 1:
        # BLOCK 0 would wait forever, and close waits for the current BLOCK to end.
        raise BusError(
            f"redis bus: block_ms must be an integer >= 1, not {block_ms!r}", retryable=False
        )
    parsed = Options(
        url=url,
        maxlen=maxlen,
        visibility_timeout=_number(
            "visibility_timeout",
            values.get("visibility_timeout", defaults.visibility_timeout),
            minimum=0.01,
            strict=False,
        ),
        block_ms=block_ms,
        claim_interval=_number(
            "claim_interval",
            values.get("claim_interval", defaults.claim_interval),
            minimum=0,
            strict=True,
        ),
        trim_interval=_number(
            "trim_interval",
            values.get("trim_interval", defaults.trim_interval),
            minimum=0,
            strict=False,
        ),
        socket_timeout=_number(
            "socket_timeout",
            values.get("socket_timeout", defaults.socket_timeout),
            minimum=0,
            strict=True,
        ),
        connect_timeout=_number(
            "connect_timeout",
            values.get("connect_timeout", defaults.connect_timeout),
            minimum=0,
            strict=True,
        ),
    )
    if parsed.socket_timeout * 1000 <= parsed.block_ms:
        raise BusError(
            "redis bus: socket_timeout must be longer than block_ms (a blocking read would "
            "time out)",
            retryable=False,
        )
    return parsed


def retryable(exc: BaseException) -> bool:
    """Whether the command that raised ``exc`` may succeed if sent again."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_RETRYABLE_REPLIES)
    return isinstance(exc, RedisError | OSError)


def release_idle_ms(visibility_ms: int, delay: float) -> int | None:
    """The XCLAIM ``IDLE`` that makes an entry claimable ``delay`` seconds from now (XAUTOCLAIM
    takes entries idle for ``visibility_ms``); None when the delay is longer than that."""
    idle = visibility_ms - math.ceil(max(delay, 0.0) * 1000)
    return idle if idle >= 0 else None


def _parse_id(stream_id: bytes | str) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def successor(stream_id: bytes | str) -> str:
    """The smallest stream id after ``stream_id``."""
    ms, seq = _parse_id(stream_id)
    return f"{ms}-{seq + 1}"


def trim_floor(last_generated: bytes | str, groups: Iterable[tuple[bytes | str, Any]]) -> str:
    """The MINID below which no group needs anything.

    ``groups`` holds, per group, its last delivered id and its oldest pending id (None when
    nothing is pending): a group needs its pending entries and everything not yet delivered.
    With no group, nothing up to ``last_generated`` is needed.
    """
    needed = [
        _parse_id(oldest) if oldest is not None else _parse_id(successor(last_delivered))
        for last_delivered, oldest in groups
    ]
    if not needed:
        needed = [_parse_id(successor(last_generated))]
    ms, seq = min(needed)
    return f"{ms}-{seq}"


def _decode_message(fields: Mapping[bytes, bytes], attempt: int) -> Message:
    """The message of one stream entry. Raises ValueError for an entry that is not ours."""
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        raise ValueError(f"no {EVENT_FIELD.decode()!r} field: not a cemesh event entry")
    raw_key = fields.get(KEY_FIELD)
    key = None if raw_key is None else raw_key.decode("utf-8", "surrogatepass")
    return Message(decode_envelope(payload), key, attempt)


def _encode_fields(event: CloudEvent, key: str | None) -> dict[bytes, bytes]:
    fields = {EVENT_FIELD: encode_envelope(event)}
    if key is not None:
        fields[KEY_FIELD] = key.encode("utf-8", "surrogatepass")
    return fields


# -- publishing -----------------------------------------------------------------------------------


class _Publisher:
    """Sends the XADDs of concurrent publishes together, one pipeline per batch."""

    def __init__(self, client: redis.Redis, maxlen: int | None) -> None:
        self._client = client
        self._maxlen = maxlen
        self._pending: deque[tuple[str, dict[bytes, bytes], asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._sending = 0  # pipelines in flight
        self._idle = asyncio.Event()  # nothing pending, nothing in flight
        self._idle.set()
        self._tasks = [
            asyncio.create_task(self._run(), name="redis-bus publisher")
            for _ in range(PUBLISH_PIPELINES)
        ]

    async def xadd(self, stream: str, fields: dict[bytes, bytes]) -> None:
        """Return once Redis answered this entry's XADD; raise the driver's error otherwise."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((stream, fields, future))
        self._idle.clear()
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if not self._sending:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch: list[tuple[str, dict[bytes, bytes], asyncio.Future[None]]] = []
            while self._pending and len(batch) < MAX_PUBLISH_BATCH:
                item = self._pending.popleft()
                if not item[2].done():  # a cancelled publish is not sent at all
                    batch.append(item)
            if not batch:
                continue
            pipe = self._client.pipeline(transaction=False)
            for stream, fields, _ in batch:
                pipe.xadd(stream, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
            self._sending += 1
            try:
                results = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(ConnectionError("redis bus closed while publishing"))
                raise
            except Exception as exc:
                results = [exc] * len(batch)
            finally:
                self._sending -= 1
            if not self._pending and not self._sending:
                self._idle.set()
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(None)

    async def close(self) -> None:
        """Send what was published before (bounded by :data:`CLOSE_TIMEOUT`), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._pending:
            future = self._pending.popleft()[2]
            if not future.done():
                future.set_exception(ConnectionError("redis bus closed before publishing"))


# -- settling -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Op:
    kind: str  # "ack" | "release" | "touch"
    ids: list[bytes]
    delay: float = 0.0  # release: seconds until the entry may be claimed again


class _Settler:
    """Acks, releases and keep-alives of one subscription: applied in order, in pipelines.

    Order matters: a keep-alive of an entry must not overtake its release (it would take the
    entry back from the placeholder consumer and reset its idle time).
    """

    def __init__(self, subscription: _RedisSubscription) -> None:
        self._sub = subscription
        self._ops: deque[_Op] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"redis-bus settler {subscription}")

    def ack(self, entry_id: bytes) -> None:
        self._push(_Op("ack", [entry_id]))

    def release(self, entry_id: bytes, delay: float) -> None:
        self._push(_Op("release", [entry_id], delay))

    def touch(self, ids: list[bytes]) -> None:
        if ids:
            self._push(_Op("touch", ids))

    def _push(self, op: _Op) -> None:
        self._ops.append(op)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ops:
                ops = list(self._ops)
                self._ops.clear()
                try:
                    await self._apply(ops)
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._closing:
                        log.warning(
                            "redis bus: could not settle on close; entries stay pending and "
                            "are taken over after the visibility timeout",
                            extra=self._sub.log_extra(error=repr(exc)),
                        )
                        continue
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,  # once per outage
                        "redis bus: settling failed; trying again",
                        extra=self._sub.log_extra(error=repr(exc)),
                    )
                    failing = True
                    # Keep-alives are redone by the next heartbeat; acks and releases are not.
                    self._ops.extendleft(reversed([op for op in ops if op.kind != "touch"]))
                    await asyncio.sleep(RETRY_PAUSE)
            self._idle.set()

    async def _apply(self, ops: list[_Op]) -> None:
        sub = self._sub
        client, stream, group = sub.client, sub.stream, sub.group
        pipe = client.pipeline(transaction=False)
        released: list[float] = []
        acks: list[bytes] = []
        for op in ops:
            if op.kind == "ack":
                acks.extend(op.ids)
                continue
            if acks:  # consecutive acks go out as one XACK
                pipe.xack(stream, group, *acks)
                acks = []
            if op.kind == "release":
                idle = release_idle_ms(sub.options.visibility_ms, op.delay)
                pipe.xclaim(stream, group, RELEASED_CONSUMER, 0, op.ids, idle=idle, justid=True)  # type: ignore[arg-type]
                released.append(op.delay)
            else:
                pipe.xclaim(stream, group, sub.consumer, 0, op.ids, justid=True)  # type: ignore[arg-type]
        if acks:
            pipe.xack(stream, group, *acks)
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, BaseException):
                log.warning(
                    "redis bus: a settle command failed", extra=sub.log_extra(error=repr(result))
                )
        for delay in released:
            sub.wake_claimer_in(delay)

    async def drain(self) -> None:
        """Apply what is queued (bounded by :data:`CLOSE_TIMEOUT`), then stop."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# -- subscriptions --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    id: bytes
    fields: dict[bytes, bytes]
    attempt: int


class _RedisSubscription:
    """One consumer of a group: a fetch loop, ``concurrency`` handler tasks, a heartbeat."""

    def __init__(
        self, bus: RedisStreamsBus, stream: str, group: str, handler: Handler, concurrency: int
    ) -> None:
        self.bus = bus
        self.client = bus.client
        self.options = bus.options
        self.stream = stream
        self.group = group
        self.consumer = consumer_name()
        self._handler = handler
        self._concurrency = concurrency
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._held: dict[bytes, _Entry] = {}  # taken from Redis, not settled yet
        self._parked: dict[bytes, float] = {}  # id -> when due (loop time); delay > visibility
        self._wakeups: list[float] = []  # heap: when own releases fall due (loop time)
        self._changed = asyncio.Event()  # a slot freed, a wakeup added, or closing
        self._next_claim = self._loop.time()  # claim first: take over what was abandoned
        self._closed = False
        self._failing = False  # the last read or claim failed (logged once per outage)
        self._close_task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[Any] | None = None
        self._settler = _Settler(self)
        name = f"redis-bus {stream}/{group}"
        self._fetcher = asyncio.create_task(self._fetch(), name=f"{name} fetch")
        self._heartbeat = asyncio.create_task(self._keep_alive(), name=f"{name} heartbeat")
        self._workers = [
            asyncio.create_task(self._work(), name=f"{name} handler") for _ in range(concurrency)
        ]

    def __str__(self) -> str:
        return f"{self.stream}/{self.group}/{self.consumer}"

    def log_extra(self, **fields: Any) -> dict[str, Any]:
        return {"topic": self.stream, "group": self.group, "consumer": self.consumer, **fields}

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch(self) -> None:
        while not self._closed:
            try:
                while len(self._held) >= self._concurrency and not self._closed:
                    self._changed.clear()
                    await self._changed.wait()
                if self._closed:
                    return
                free = self._concurrency - len(self._held)
                now = self._loop.time()
                claim_at = min(self._next_claim, self._wakeups[0] if self._wakeups else math.inf)
                if now >= claim_at:
                    await self._claim(free, now)
                else:
                    block = min(self.options.block_ms, math.ceil((claim_at - now) * 1000))
                    await self._read(free, max(block, 1))
                if self._failing:
                    self._failing = False
                    log.info("redis bus: reading again", extra=self.log_extra())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
                    if await self._recreate_group():
                        continue
                else:
                    # Once per outage, not every RETRY_PAUSE while Redis is down.
                    log.log(
                        logging.DEBUG if self._failing else logging.WARNING,
                        "redis bus: reading failed; trying again",
                        extra=self.log_extra(error=repr(exc)),
                    )
                    self._failing = True
                self._changed.clear()
                with contextlib.suppress(TimeoutError):  # a pause that close cuts short
                    await asyncio.wait_for(self._changed.wait(), RETRY_PAUSE)

    async def _read(self, count: int, block_ms: int) -> None:
        reply: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        for _, entries in reply or ():  # RESP2: [[stream, [(id, {field: value})]]]
            for entry_id, fields in entries:
                self._take(_Entry(entry_id, fields, 1))

    async def _claim(self, count: int, now: float) -> None:
        """Take over up to ``count`` entries pending on any consumer for the visibility timeout.

        XPENDING ``IDLE`` finds them (oldest first, with their delivery counts) in one command
        however long the group's pending list is, where XAUTOCLAIM would need a round trip per
        ten pending entries at a small ``count``. XCLAIM with the same minimum idle time then
        takes only those still idle, so two subscriptions never both take one entry.
        """
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        visibility = self.options.visibility_ms
        idle = await self.client.xpending_range(
            self.stream, self.group, "-", "+", count, idle=visibility
        )
        # All of them at once, or more are waiting: look again right away.
        self._next_claim = now if len(idle) >= count else now + self.options.claim_interval
        if not idle:
            return
        delivered = {item["message_id"]: int(item["times_delivered"]) for item in idle}
        claimed: Any = await self.client.xclaim(
            self.stream, self.group, self.consumer, visibility, list(delivered)
        )
        gone = []
        for entry_id, fields in claimed:
            if fields:
                self._take(_Entry(entry_id, fields, delivered[entry_id] + 1))
            else:  # trimmed away (Redis 6.2 answers it without fields; 7 forgets it at once)
                gone.append(entry_id)
        if gone:
            log.error(
                "redis bus: pending entries were trimmed from the stream before they were "
                "acked (maxlen too small?); they are lost",
                extra=self.log_extra(entries=len(gone)),
            )
            await self.client.xack(self.stream, self.group, *gone)

    def _take(self, entry: _Entry) -> None:
        if self._closed:
            self._settler.release(entry.id, 0.0)  # read during close: straight back
            return
        self._held[entry.id] = entry
        self._queue.put_nowait(entry)

    async def _recreate_group(self) -> bool:
        """Create the group again after NOGROUP; False if that failed (try again later)."""
        log.error(
            "redis bus: the stream or group disappeared (Redis restarted without persistence, "
            "or it was deleted); recreating it at the end of the stream: events in between are "
            "lost",
            extra=self.log_extra(),
        )
        try:
            await self.client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except ResponseError as exc:
            return str(exc).startswith("BUSYGROUP")  # someone else recreated it
        except (RedisError, OSError):
            return False
        return True

    def wake_claimer_in(self, delay: float) -> None:
        """An own release falls due in ``delay`` seconds: claim then, not only periodically."""
        heapq.heappush(self._wakeups, self._loop.time() + max(delay, 0.0) + WAKEUP_SLACK)
        self._changed.set()

    # -- handling ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                message = _decode_message(entry.fields, entry.attempt)
            except ValueError as exc:
                log.error(
                    "redis bus: entry is not a cemesh event; leaving it pending",
                    extra=self.log_extra(entry_id=entry.id.decode(), error=str(exc)),
                )
                self._settle(entry, UNDECODABLE_REDELIVERY_DELAY)
                continue
            try:
                delay = await run_handler(
                    self._handler,
                    message,
                    error_delay=ERROR_REDELIVERY_DELAY,
                    logger=log,
                    log_extra=self.log_extra(),
                )
            except BaseException:  # cancellation (close) and interpreter exit: never an ack
                self._settle(entry, 0.0)
                raise
            if delay is not None:
                self._settle(entry, delay)
                continue
            if self._closed:
                self._settle(entry, 0.0)  # the handler swallowed close's cancellation
            else:
                self._settle(entry, None)

    def _settle(self, entry: _Entry, delay: float | None) -> None:
        """Ack (``delay`` None) or release ``entry`` for redelivery after ``delay`` seconds."""
        if self._held.pop(entry.id, None) is None:
            return
        self._changed.set()  # a free slot
        if delay is None:
            self._settler.ack(entry.id)
        elif self._closed or release_idle_ms(self.options.visibility_ms, delay) is not None:
            self._settler.release(entry.id, delay)
        else:
            self._parked[entry.id] = self._loop.time() + delay

    async def _keep_alive(self) -> None:
        """Every third of the visibility timeout: re-claim what we hold, release what is due."""
        interval = self.options.visibility_timeout / 3
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for something
            now = self._loop.time()
            for entry_id, due in list(self._parked.items()):
                if release_idle_ms(self.options.visibility_ms, due - now) is not None:
                    del self._parked[entry_id]
                    self._settler.release(entry_id, due - now)
            self._settler.touch([*self._held, *self._parked])

    # -- closing ----------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Stop reading and cancel the handlers (close finishes the job)."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        self.bus.forget(self)
        # A handler may close its own subscription: its task is neither cancelled nor awaited
        # (its message is released with the others; its late return settles nothing).
        self._closer = asyncio.current_task()
        for task in (self._heartbeat, *self._workers):
            if task is not self._closer:
                task.cancel()

    async def close(self) -> None:
        """Stop consuming; release (never ack) what this subscription holds. Idempotent."""
        self.begin_close()
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._finish_close())
        await asyncio.shield(self._close_task)

    async def _finish_close(self) -> None:
        tasks = [t for t in (self._heartbeat, *self._workers) if t is not self._closer]
        await asyncio.gather(*tasks, return_exceptions=True)
        # The fetch loop ends after its current BLOCK; entries it gets meanwhile go back.
        try:
            await asyncio.wait_for(
                asyncio.shield(self._fetcher), self.options.block_ms / 1000 + CLOSE_TIMEOUT
            )
        except (TimeoutError, Exception):
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        # Queued ones no handler saw, and the one of a handler that closed its own subscription.
        for entry in list(self._held.values()):
            self._held.pop(entry.id)
            self._settler.release(entry.id, 0.0)
        now = self._loop.time()
        for entry_id, due in self._parked.items():
            # Nobody keeps it alive from now on: it may come back after the visibility timeout.
            self._settler.release(entry_id, min(due - now, self.options.visibility_timeout))
        self._parked.clear()
        await self._settler.drain()
        await self._forget_consumer()

    async def _forget_consumer(self) -> None:
        """Delete this consumer from the group if nothing is pending on it any more."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                pending = await self.client.xpending_range(
                    self.stream, self.group, "-", "+", 1, consumername=self.consumer
                )
                if not pending:
                    await self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except (TimeoutError, RedisError, OSError) as exc:
            log.info(
                "redis bus: could not delete the closed consumer from its group (harmless: "
                "what is pending on it is taken over after the visibility timeout)",
                extra=self.log_extra(error=repr(exc)),
            )


# -- the bus --------------------------------------------------------------------------------------


class RedisStreamsBus:
    """The Redis Streams bus (``bus: redis``); see the module docstring for the model."""

    name = "redis"
    capabilities = frozenset(
        {Capability.DURABLE, Capability.NACK_DELAY, Capability.REDELIVERY_COUNT}
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(options)
        self._client: redis.Redis | None = None
        self._publisher: _Publisher | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._subscriptions: set[_RedisSubscription] = set()
        self._streams: set[str] = set()  # streams this bus used: the ones it trims
        self._open_lock = asyncio.Lock()
        self._closed = False

    @property
    def client(self) -> redis.Redis:
        assert self._client is not None, "open() first"
        return self._client

    async def open(self) -> None:
        """Connect (and check the server answers). Idempotent; a closed bus stays closed."""
        if self._closed:
            raise BusError("redis bus is closed", retryable=False)
        if self._publisher is not None:
            return
        async with self._open_lock:
            if self._publisher is not None:
                return
            options = self.options
            client = redis.Redis.from_url(
                options.url,
                socket_timeout=options.socket_timeout,
                socket_connect_timeout=options.connect_timeout,
                decode_responses=False,
                # Passed explicitly: from_url leaves pooled connections with no retry at all, so
                # after a restart of Redis every stale pooled connection would fail one command.
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CONNECTION_RETRIES),
            )
            try:
                await client.ping()
            except RedisError as exc:
                await client.aclose()
                raise BusError(
                    f"redis bus: cannot reach {_safe_url(options.url)}: {exc}",
                    retryable=retryable(exc),
                ) from exc
            await _warn_if_not_persistent(client, options.url)
            self._client = client
            self._publisher = _Publisher(client, options.maxlen)
            if options.trim_interval > 0:
                self._housekeeper = asyncio.create_task(self._trim_loop(), name="redis-bus trim")

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Return once Redis answered the XADD of ``event`` to the stream of ``topic``."""
        if self._closed:
            raise PublishError("redis bus is closed", retryable=False)
        try:
            await self.open()
        except BusError as exc:
            raise PublishError(exc.message, retryable=exc.retryable) from exc
        assert self._publisher is not None
        stream = stream_key(topic)
        self._streams.add(stream)
        try:
            await self._publisher.xadd(stream, _encode_fields(event, key))
        except (RedisError, OSError) as exc:
            raise PublishError(
                f"redis bus: XADD to {stream!r} failed: {exc}",
                retryable=retryable(exc) and not self._closed,
            ) from exc

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> _RedisSubscription:
        """Consume ``topic`` as ``group`` with ``concurrency`` handler tasks; live on return."""
        if self._closed:
            raise SubscribeError("redis bus is closed", retryable=False)
        if concurrency < 1:
            raise SubscribeError(f"concurrency must be >= 1, not {concurrency}", retryable=False)
        if ordered:
            raise SubscribeError(
                "redis bus does not order events per key (no ORDERED_BY_KEY)", retryable=False
            )
        try:
            await self.open()
        except BusError as exc:
            raise SubscribeError(exc.message, retryable=exc.retryable) from exc
        stream, name = stream_key(topic), group_name(group)
        try:
            await self.client.xgroup_create(stream, name, id="$", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise SubscribeError(
                    f"redis bus: cannot create group {name!r} on {stream!r}: {exc}",
                    retryable=retryable(exc),
                ) from exc
            # The group exists: it resumes where it was (a restart, or another replica).
        except (RedisError, OSError) as exc:
            raise SubscribeError(
                f"redis bus: cannot create group {name!r} on {stream!r}: {exc}",
                retryable=retryable(exc),
            ) from exc
        if self._closed:
            raise SubscribeError("redis bus closed while subscribing", retryable=False)
        subscription = _RedisSubscription(self, stream, name, handler, concurrency)
        self._subscriptions.add(subscription)
        self._streams.add(stream)
        return subscription

    async def delete_group(self, topic: str, group: str) -> None:
        """Close ``group``'s subscriptions here, then XGROUP DESTROY it. Idempotent."""
        if self._closed:
            raise BusError("redis bus is closed", retryable=False)
        stream, name = stream_key(topic), group_name(group)
        mine = [s for s in self._subscriptions if (s.stream, s.group) == (stream, name)]
        for subscription in mine:  # all stopped before any releases (as in close)
            subscription.begin_close()
        await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        try:
            await self.open()
            # 0 when the group did not exist; an error only when the stream does not exist.
            await self.client.xgroup_destroy(stream, name)
        except ResponseError as exc:
            if _NO_STREAM in str(exc):
                return  # no stream, so no group
            raise BusError(
                f"redis bus: cannot destroy group {name!r} of {stream!r}: {exc}",
                retryable=retryable(exc),
            ) from exc
        except (RedisError, OSError) as exc:
            raise BusError(
                f"redis bus: cannot destroy group {name!r} of {stream!r}: {exc}",
                retryable=retryable(exc),
            ) from exc
        with contextlib.suppress(RedisError, OSError):
            await self.trim(stream)  # what only this group held back goes now

    def forget(self, subscription: _RedisSubscription) -> None:
        self._subscriptions.discard(subscription)

    async def close(self) -> None:
        """Stop every subscription (releasing what they hold) and disconnect. Idempotent."""
        self._closed = True
        subscriptions = list(self._subscriptions)
        # Stop all of them before any releases: a closing peer must not take over the releases.
        for subscription in subscriptions:
            subscription.begin_close()
        await asyncio.gather(*(s.close() for s in subscriptions), return_exceptions=True)
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
            self._housekeeper = None
        if self._publisher is not None:
            await self._publisher.close()
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()

    # -- trimming ---------------------------------------------------------------------------

    async def _trim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.trim_interval)  # a period, not a wait for something
            for stream in list(self._streams):
                try:
                    await self.trim(stream)
                except (RedisError, OSError) as exc:
                    log.warning(
                        "redis bus: trimming failed", extra={"topic": stream, "error": repr(exc)}
                    )

    async def trim(self, stream: str) -> int:
        """Delete the entries of ``stream`` that no group needs; return how many were deleted.

        Run by the bus every ``trim_interval``; public so that tests and tools can call it.
        The order of the reads makes it safe against concurrent readers and new groups: the
        stream's last id is read before the groups (a group created later starts after it),
        and each group's floor only moves forward.
        """
        client = self.client
        try:
            info = await client.xinfo_stream(stream)
        except ResponseError:
            return 0  # no such stream (yet)
        groups = await client.xinfo_groups(stream)
        floors: list[tuple[bytes, Any]] = []
        for group in groups:
            oldest = None
            if group["pending"]:
                summary = await client.xpending(stream, group["name"])
                oldest = summary["min"]
            floors.append((group["last-delivered-id"], oldest))
        floor = trim_floor(info["last-generated-id"], floors)
        return int(await client.xtrim(stream, minid=floor, approximate=True))


async def _warn_if_not_persistent(client: redis.Redis, url: str) -> None:
    """Say so when the server keeps no append-only file: what it accepted dies with it."""
    try:
        info = await client.info("persistence")
    except (RedisError, OSError):
        return  # INFO may be disabled (managed Redis): nothing to say then
    if not int(info.get("aof_enabled", 0)):
        log.warning(
            "redis bus: the server keeps no append-only file, so events it accepted are lost "
            "if it restarts (durable: appendonly yes, appendfsync always)",
            extra={"url": _safe_url(url)},
        )


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


# Checked by mypy: RedisStreamsBus is a BusFactory building a Bus.
_factory: BusFactory = RedisStreamsBus
