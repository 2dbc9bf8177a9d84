"""One Kafka consumer-group member of the Kafka bus: fetching, handing to handlers, committing.

A :class:`KafkaSubscription` owns an ``AIOKafkaConsumer`` (or, with ``driver: confluent``, a
:class:`~adapters.kafka.librdkafka_consumer.LibrdkafkaConsumer` offering the same calls), its
fetch loop, its commit loop and ``concurrency`` handler tasks, and follows the group's
rebalances (see the package's ``bus.py`` for the model). Messages reach handler tasks through
:class:`~broker.dataplane.bus.handoff.HandOff`, whose lanes are (partition, key) for ordered
groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from adapters.kafka.client import client_kwargs
from adapters.kafka.librdkafka_consumer import LibrdkafkaConsumer, Record
from adapters.kafka.options import KafkaOptions
from adapters.kafka.wire import decode_record
from broker.core.errors import BusError
from broker.core.events import CloudEvent
from broker.dataplane.bus import Handler, Message, run_handler
from broker.dataplane.bus.handoff import HandOff

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

# Redelivery delay after a handler raised something other than Nack: long enough that a handler
# failing on every message does not busy-loop, short enough not to matter for a transient error.
ERROR_REDELIVERY_DELAY = 0.05
# Commits are batched: at most one per interval per subscription (plus one on revoke and close).
# A crash re-delivers what was acked within the last interval (plus the commit's round trip)
# and what was in a handler. At 0.1 s a crash in the crash test re-delivered ~1% of what was
# accepted; at 25 ms it is a few events, for at most 40 small commits a second per subscription.
COMMIT_INTERVAL = 0.025
# How long the fetch loop may wait for room before it polls anyway: a consumer that does not
# poll for max_poll_interval_ms (300 s) is put out of its group.
KEEPALIVE_POLL = 60.0
# Per-bus memory of delivery counts of messages a closed or revoked subscription left unacked.
ATTEMPTS_REMEMBERED = 100_000
# How long close waits for the final commit and for leaving the group.
CLOSE_TIMEOUT = 10.0

# Delivery counts a closed or revoked subscription left, by (topic, group, partition, offset).
Attempts = OrderedDict[tuple[str, str, int, int], int]


class _Entry:
    """One fetched record of one partition, until its offset is committed."""

    __slots__ = ("deliveries", "done", "event", "key", "offset", "partition", "timer")

    def __init__(
        self, partition: _Partition, offset: int, event: CloudEvent | None, key: str | None
    ) -> None:
        self.partition = partition
        self.offset = offset
        self.event = event  # None once settled (done entries wait only for the commit point)
        self.key = key
        self.deliveries = 0
        self.done = event is None
        self.timer: asyncio.TimerHandle | None = None


class _Partition:
    """What one subscription holds of one assigned partition."""

    __slots__ = (
        "commit_to",
        "committed",
        "draining",
        "in_handler",
        "lost",
        "next_offset",
        "pending",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: deque[_Entry] = deque()  # fetched, offset order, up to the first unsettled
        self.next_offset = 0  # after the last offset fetched
        self.commit_to: int | None = None  # the offset after the settled prefix
        self.committed = -1  # what this subscription last committed
        self.draining = False  # revoked: hand nothing more out
        self.lost = False  # revoked and given up: ignore whatever its handlers still do
        self.in_handler = 0

    def advance(self) -> bool:
        """Drop the settled prefix; True when the commit point moved."""
        pending = self.pending
        moved = False
        while pending and pending[0].done:
            self.commit_to = pending.popleft().offset + 1
            moved = True
        return moved


class _Listener(ConsumerRebalanceListener):
    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._subscription.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._subscription.assign(assigned)


class KafkaSubscription:
    """One member of a consumer group: a consumer, a fetch loop, a committer, handler tasks."""

    def __init__(
        self,
        options: KafkaOptions,
        topic: str,
        group: str,
        handler: Handler,
        concurrency: int,
        ordered: bool,
        *,
        attempts: Attempts,
        on_close: Callable[[KafkaSubscription], None],
    ) -> None:
        self._attempts = attempts  # the bus's, shared by its subscriptions
        self._on_close = on_close
        self._topic = topic
        self._group = group
        self._handler = handler
        self._ordered = ordered
        self._concurrency = concurrency
        self._limit = max(options.max_buffered, 4 * concurrency)
        self._grace = options.rebalance_grace_ms / 1000
        self.consumer: AIOKafkaConsumer | LibrdkafkaConsumer
        if options.driver == "confluent":
            self.consumer = LibrdkafkaConsumer(options, group)
        else:
            self.consumer = AIOKafkaConsumer(
                **client_kwargs(options),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_ms,
            )
        self._partitions: dict[TopicPartition, _Partition] = {}
        # Deliverable messages for the handler tasks; lanes are (partition, key) when ordered.
        self._handoff: HandOff[_Entry] = HandOff()
        self._room = asyncio.Event()  # a message was settled: the fetch loop may fetch more
        self._settled = asyncio.Event()  # a handler call ended (revoke waits on it)
        self._dirty = asyncio.Event()  # a commit point moved
        self._closing = asyncio.Event()
        self._assigned = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._buffered = 0  # fetched, not settled, of partitions still held
        self._running: dict[asyncio.Task[None], _Entry] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._loop = asyncio.get_running_loop()

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str:
        return self._group

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, kafka_name: str) -> None:
        await self.consumer.start()
        self.consumer.subscribe([kafka_name], listener=_Listener(self))
        name = f"kafka-bus {self._topic}/{self._group}"
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"{name} fetch"),
            asyncio.create_task(self._commit_loop(), name=f"{name} commit"),
        ]
        self._tasks += [
            asyncio.create_task(self._work(), name=f"{name} handler")
            for _ in range(self._concurrency)
        ]

    async def wait_assigned(self, limit: float) -> None:
        """Until the group gave this member its (possibly empty) assignment, or ``limit`` s."""
        try:
            await asyncio.wait_for(self._assigned.wait(), limit)
        except TimeoutError:
            # Safe: the group's offsets are set, so nothing published meanwhile will be missed.
            log.warning(
                "kafka group join not finished after %.0fs; consuming will start when it is",
                limit,
                extra={"topic": self._topic, "group": self._group},
            )

    async def close(self) -> None:
        """Cancel handlers (never an ack), commit the settled prefix, leave the group."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._settled.set()  # a revoke waiting for handlers stops waiting
        self._on_close(self)
        # A handler closing its own subscription is not cancelled: its task ends after it.
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        parts = list(self._partitions.values())
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._commit(parts, final=True)
                await self.consumer.stop()  # leaves the group: its partitions move at once
        except (TimeoutError, kafka_errors.KafkaError, BusError) as exc:
            log.warning("kafka consumer did not stop cleanly: %r", exc, extra=self._log_extra())
        finally:
            for part in parts:
                self._give_up(part)

    # -- rebalance (called by the consumer's coordinator) ----------------------------------------

    def assign(self, assigned: set[TopicPartition]) -> None:
        # Called before any record of these partitions is fetched (aiokafka's join completion).
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp)
        self._assigned.set()

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        parts = [self._partitions.pop(tp) for tp in revoked if tp in self._partitions]
        if not parts:
            return
        for part in parts:
            part.draining = True
        # Let handlers already running finish (bounded), so that their work is committed.
        deadline = self._loop.time() + self._grace
        while any(part.in_handler for part in parts) and not self._closing.is_set():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), remaining)
        await self._commit(parts, final=True)
        for part in parts:
            self._give_up(part)
        for task, entry in list(self._running.items()):
            if entry.partition.lost:
                task.cancel()  # the partition's next owner will deliver it again

    def _give_up(self, part: _Partition) -> None:
        """Forget a partition: its unsettled messages are for its next owner to read again."""
        part.draining = part.lost = True
        attempts = self._attempts
        for entry in part.pending:
            if entry.timer is not None:
                entry.timer.cancel()
            if not entry.done:
                self._buffered -= 1
                if entry.deliveries:
                    key = (self._topic, self._group, part.tp.partition, entry.offset)
                    attempts[key] = entry.deliveries
                    attempts.move_to_end(key)
        while len(attempts) > ATTEMPTS_REMEMBERED:
            attempts.popitem(last=False)
        part.pending.clear()
        self._handoff.drop_lanes(lambda lane: isinstance(lane, tuple) and lane[0] is part)
        self._room.set()

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        while True:
            room = self._limit - self._buffered
            if room <= 0:
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), KEEPALIVE_POLL)
                    continue
                except TimeoutError:
                    room = 1  # poll anyway (one record at most) to stay in the group
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=min(room, 500))
            except (kafka_errors.KafkaError, kafka_errors.ConsumerStoppedError, BusError) as exc:
                log.warning("kafka fetch failed: %r", exc, extra=self._log_extra())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 1.0)
                continue
            for tp, records in batches.items():
                part = self._partitions.get(tp)
                if part is None or part.draining:
                    continue  # no longer ours: the new owner reads them from the commit point
                for record in records:
                    if record.offset >= part.next_offset:  # never twice, never backwards
                        part.next_offset = record.offset + 1
                        self._admit(part, record)

    def _admit(self, part: _Partition, record: ConsumerRecord[Any, Any] | Record) -> None:
        key = None if record.key is None else record.key.decode(errors="replace")
        try:
            event: CloudEvent | None = decode_record(record.value, record.headers)
        except (ValueError, UnicodeDecodeError) as exc:
            # Not a CloudEvent (another producer's record): nothing to deliver, so it is passed
            # over (logged) rather than stalling its partition for ever.
            log.error(
                "kafka record is not a CloudEvent; skipped: %s",
                exc,
                extra={
                    **self._log_extra(),
                    "partition": part.tp.partition,
                    "offset": record.offset,
                },
            )
            event = None
        entry = _Entry(part, record.offset, event, key)
        part.pending.append(entry)
        if event is None:
            if part.advance():
                self._dirty.set()
            return
        if self._attempts:  # deliveries left by a closed or revoked subscription of the bus
            remembered = (self._topic, self._group, part.tp.partition, record.offset)
            entry.deliveries = self._attempts.pop(remembered, 0)
        self._buffered += 1
        self._handoff.put(entry, self._lane(entry) if self._ordered else None)

    # -- handling -------------------------------------------------------------------------------

    def _lane(self, entry: _Entry) -> tuple[_Partition, str] | None:
        """Ordered groups run one message per key of a partition at a time (lanes die with the
        partition object: a partition assigned again starts with none)."""
        if self._ordered and entry.key is not None:
            return (entry.partition, entry.key)
        return None

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        handler = self._handler
        handoff = self._handoff
        log_extra = self._log_extra()  # once, not per message
        # The closing check is for handlers that swallow the cancellation of close().
        while not self._closing.is_set():
            entry: _Entry | None = None
            try:
                entry = await handoff.take()
                part = entry.partition
                if part.draining:  # revoked: passed over, its next owner delivers it
                    entry = None
                    continue
                assert entry.event is not None
                entry.deliveries += 1
                self._running[task] = entry
                part.in_handler += 1
                try:
                    delay = await run_handler(
                        handler,
                        Message(entry.event, entry.key, entry.deliveries),
                        error_delay=ERROR_REDELIVERY_DELAY,
                        logger=log,
                        log_extra=log_extra,
                    )
                finally:
                    part.in_handler -= 1
                    del self._running[task]
                    self._settled.set()
                if self._closing.is_set() or part.lost:
                    # Closed or revoked meanwhile (the handler may have swallowed our
                    # cancellation, whose count is then reset): still not an ack.
                    while not self._closing.is_set() and task.cancelling():
                        task.uncancel()
                    continue
                if delay is None:
                    self._ack(entry)
                else:
                    self._redeliver(entry, delay)
            except asyncio.CancelledError:
                if self._closing.is_set():
                    raise  # close: the entry stays unsettled, for the group's next consumer
                task.uncancel()  # a revoked partition's handler was cancelled; carry on
                if entry is not None and not entry.partition.lost and not entry.done:
                    self._redeliver(entry, ERROR_REDELIVERY_DELAY)  # a stray cancellation

    def _ack(self, entry: _Entry) -> None:
        part = entry.partition
        entry.done = True
        entry.event = None
        self._buffered -= 1
        self._room.set()
        self._handoff.finish(self._lane(entry))
        if part.advance():
            self._dirty.set()

    def _redeliver(self, entry: _Entry, delay: float) -> None:
        # Even without a delay, through the loop: a handler that nacks at once must not spin.
        entry.timer = self._loop.call_later(max(delay, 0.0), self._requeue, entry)

    def _requeue(self, entry: _Entry) -> None:
        entry.timer = None
        if not entry.partition.draining and not self._closing.is_set():
            self._handoff.release(entry)

    # -- committing -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self._commit(list(self._partitions.values())):
                self._dirty.set()  # try again after the interval (a rebalance is under way)
            await asyncio.sleep(COMMIT_INTERVAL)

    async def _commit(self, parts: list[_Partition], *, final: bool = False) -> bool:
        """Commit each partition's settled prefix; False if the group refused (rebalancing)."""
        async with self._commit_lock:  # in order, so that a commit point never goes back
            offsets = {
                part.tp: part.commit_to
                for part in parts
                if part.commit_to is not None and part.commit_to > part.committed and not part.lost
            }
            if not offsets:
                return True
            try:
                await self.consumer.commit(offsets)
            except (kafka_errors.KafkaError, AssertionError, BusError) as exc:
                # Those messages will be redelivered to the partitions' next owner: at least once.
                level = logging.WARNING if final else logging.INFO
                log.log(level, "kafka commit failed: %r", exc, extra=self._log_extra())
                return False
            for part in parts:
                committed = offsets.get(part.tp)
                if committed is not None:
                    part.committed = committed
            return True

    def _log_extra(self) -> dict[str, Any]:
        return {"topic": self._topic, "group": self._group}
