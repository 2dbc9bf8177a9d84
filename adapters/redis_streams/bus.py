"""The Redis Streams bus (``bus: redis``): a stream per topic, a consumer group per group.

Model:

- Names: Redis keys and group names are binary-safe strings, so topic ``t`` is stored in the
  stream whose key is ``t`` itself (UTF-8) and group ``g`` is the consumer group named ``g``
  (:func:`stream_key`, :func:`group_name`): ``cemesh.broker.default.b`` stays
  ``cemesh.broker.default.b``. Each subscription reads as its own consumer (:func:`consumer_name`:
  host, pid and a random suffix), so subscriptions of one group compete and every group gets
  its own copy. Standalone Redis (or a proxy in front of a primary); Redis Cluster is not
  supported (publishes to several streams share one pipeline).
- Each event is one stream entry: field ``e`` holds the cemesh envelope (``broker/core/events.py``,
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
- ``delete_topic`` closes every subscription of the topic in this bus, then DEL the stream key:
  its entries, groups, consumers and pending entries go in one step. A missing key is fine.
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

Options: :class:`~adapters.redis_streams.options.RedisOptions` (each also the setting
``redis_<option>``), where their defaults, limits and meanings are declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from adapters.redis_streams.consumer import RedisSubscription
from adapters.redis_streams.options import RedisOptions
from adapters.redis_streams.policy import (
    encode_fields,
    group_name,
    retryable,
    stream_key,
    trim_floor,
)
from adapters.redis_streams.publisher import Publisher
from broker.core.errors import BusError, PublishError, SubscribeError
from broker.core.events import CloudEvent
from broker.dataplane.bus import BusFactory, Capability, Handler
from broker.dataplane.bus.arguments import check_subscribe
from broker.dataplane.bus.options import parse_options

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

# A command that failed on a broken connection is sent again on a new one (at most this many
# times, with a short backoff): enough to get over stale pooled connections after a restart of
# Redis, short enough that publishing to a Redis that is down fails fast. A resent XADD whose
# first answer was lost may store the event twice: at-least-once.
CONNECTION_RETRIES = 2
# In Redis's error for XGROUP on a missing stream (XGROUP DESTROY of a never-used topic).
_NO_STREAM = "requires the key to exist"


class RedisStreamsBus:
    """The Redis Streams bus (``bus: redis``); see the module docstring for the model."""

    name = "redis"
    capabilities = frozenset(
        {Capability.DURABLE, Capability.NACK_DELAY, Capability.REDELIVERY_COUNT}
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(RedisOptions, self.name, options)
        self._client: redis.Redis | None = None
        self._publisher: Publisher | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._subscriptions: set[RedisSubscription] = set()
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
            self._publisher = Publisher(client, options.maxlen)
            if options.trim_interval > 0:
                self._housekeeper = asyncio.create_task(self._trim_loop(), name="redis-bus trim")

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Return once Redis answered the XADD of ``event`` to the stream of ``topic``."""
        await self._publish(topic, (encode_fields(event, key),))

    async def publish_batch(self, topic: str, events: Sequence[CloudEvent]) -> None:
        """Queue every event's XADD before awaiting any answer (PublishesBatch): they go out in
        the publisher's pipelines, in order."""
        await self._publish(topic, [encode_fields(event, event.key) for event in events])

    async def _publish(self, topic: str, entries: Sequence[dict[bytes, bytes]]) -> None:
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
            if len(entries) == 1:
                await self._publisher.xadd(stream, entries[0])
            else:
                await self._publisher.xadd_many(stream, entries)
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
    ) -> RedisSubscription:
        """Consume ``topic`` as ``group`` with ``concurrency`` handler tasks; live on return."""
        check_subscribe(
            self.name,
            self.capabilities,
            closed=self._closed,
            concurrency=concurrency,
            ordered=ordered,
        )
        try:
            await self.open()
        except BusError as exc:
            raise SubscribeError(exc.message, retryable=exc.retryable) from exc
        stream, name = stream_key(topic), group_name(group)
        try:
            await self.client.xgroup_create(stream, name, id="$", mkstream=True)
        except (RedisError, OSError) as exc:
            # BUSYGROUP: the group exists and resumes where it was (a restart, another replica).
            if not (isinstance(exc, ResponseError) and str(exc).startswith("BUSYGROUP")):
                raise SubscribeError(
                    f"redis bus: cannot create group {name!r} on {stream!r}: {exc}",
                    retryable=retryable(exc),
                ) from exc
        if self._closed:
            raise SubscribeError("redis bus closed while subscribing", retryable=False)
        subscription = RedisSubscription(
            self.client, self.options, stream, name, handler, concurrency, on_close=self.forget
        )
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
        except (RedisError, OSError) as exc:
            if isinstance(exc, ResponseError) and _NO_STREAM in str(exc):
                return  # no stream, so no group
            raise BusError(
                f"redis bus: cannot destroy group {name!r} of {stream!r}: {exc}",
                retryable=retryable(exc),
            ) from exc
        with contextlib.suppress(RedisError, OSError):
            await self.trim(stream)  # what only this group held back goes now

    async def delete_topic(self, topic: str) -> None:
        """Close ``topic``'s subscriptions here, then DEL its stream. Idempotent."""
        if self._closed:
            raise BusError("redis bus is closed", retryable=False)
        stream = stream_key(topic)
        mine = [s for s in self._subscriptions if s.stream == stream]
        for subscription in mine:  # all stopped before any releases (as in close)
            subscription.begin_close()
        await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        self._streams.discard(stream)  # nothing left to trim
        try:
            await self.open()
            await self.client.delete(stream)  # 0 when there was no such key: fine
        except (RedisError, OSError) as exc:
            raise BusError(
                f"redis bus: cannot delete stream {stream!r}: {exc}", retryable=retryable(exc)
            ) from exc

    def forget(self, subscription: RedisSubscription) -> None:
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
