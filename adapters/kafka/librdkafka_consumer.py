"""The librdkafka consumer of the Kafka bus (``driver: confluent``), bridged to asyncio.

:class:`LibrdkafkaConsumer` offers :class:`~adapters.kafka.consumer.KafkaSubscription` the few
calls it makes of aiokafka's consumer (``start``, ``subscribe`` with a rebalance listener,
``getmany``, ``commit``, ``stop``), so that the subscription's model (hand-off, settled-prefix
commits, rebalance grace) is written once for both drivers.

confluent-kafka's consumer blocks, so each member has a thread of its own that makes every call
on it: ``consume``, ``close`` and synchronous commits. librdkafka runs the rebalance callbacks
inside ``consume`` (or ``close``); a callback runs the listener's coroutine on the event loop and
waits for it, so partitions are assigned before any of their records is returned and revoked
only once the listener is done. The listener commits what its handlers settled before it lets
revoked partitions go, and librdkafka holds a commit made from another thread until the callback
returns: so commits are jobs on a queue that the member's thread runs between two ``consume``
calls and, while it waits in a callback, from there. librdkafka failures become
:class:`~broker.core.errors.BusError` here, at the boundary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from adapters.kafka.librdkafka import bus_error, consumer_config, load
from adapters.kafka.member_thread import MemberThread
from adapters.kafka.options import KafkaOptions
from broker.core.errors import BusError

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

# How long (s) the member's thread waits in ``consume``: ``stop`` waits for it to come back.
POLL_SLICE = 0.2
# How long a rebalance callback may wait for the listener (its grace plus the final commit).
LISTENER_TIMEOUT = 60.0
# How long ``stop`` waits for librdkafka's ``close`` (its revoke callback included) before it
# gives the member up (see stop).
CLOSE_TIMEOUT = LISTENER_TIMEOUT + 10.0


def _answer(
    future: asyncio.Future[list[Any]], result: list[Any] | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])


class Record:
    """The parts of a fetched record the subscription reads (aiokafka's attribute names)."""

    __slots__ = ("headers", "key", "offset", "value")

    def __init__(self, offset: int, key: bytes | None, value: bytes | None, headers: Any) -> None:
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers or ()


class LibrdkafkaConsumer:
    """One consumer-group member on librdkafka, with aiokafka's consumer calls (module doc)."""

    def __init__(self, options: KafkaOptions, group: str) -> None:
        self._kafka = load()
        self._consumer = self._kafka.Consumer(consumer_config(options, group))
        self._loop = asyncio.get_running_loop()
        self._member = MemberThread(f"kafka-consume {group}")
        # Commits waiting for the member's thread: (offsets, the committer's future).
        self._commits: queue.SimpleQueue[tuple[list[Any], asyncio.Future[list[Any]]] | None] = (
            queue.SimpleQueue()
        )
        self._listener: ConsumerRebalanceListener | None = None
        self._stopped = False  # stop began: no more fetching
        self._gone = False  # closed: no more commits either

    async def start(self) -> None:
        """Nothing to do: librdkafka connects on the first ``consume``."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        self._listener = listener
        self._consumer.subscribe(
            topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        """Records fetched within ``timeout_ms`` (at most ``max_records``), by partition."""
        if self._stopped:
            raise BusError("kafka consumer is stopped", retryable=False)
        timeout = min(timeout_ms / 1000, POLL_SLICE)  # so that stop is never kept waiting long
        consume = partial(self._fetch, max_records, timeout)
        try:
            messages = await self._member.run(consume)
        except (self._kafka.KafkaException, RuntimeError) as exc:  # RuntimeError: closed
            raise bus_error("fetch", exc) from exc
        batches: dict[TopicPartition, list[Record]] = {}
        # A fetch holds runs of records of one partition: look its list up once per run.
        last: tuple[str, int] | None = None
        records: list[Record] = []
        for message in messages:
            error = message.error()
            if error is not None:
                # An event, not a record (librdkafka retries by itself): never a reason to drop
                # the records fetched with it, which librdkafka would not hand out again.
                if error.code() != self._kafka.KafkaError._PARTITION_EOF:
                    log.warning("kafka consumer: %s", error.str(), extra={"fatal": error.fatal()})
                continue
            where = (message.topic(), message.partition())
            if where != last:
                last = where
                records = batches.setdefault(TopicPartition(*where), [])
            records.append(
                Record(message.offset(), message.key(), message.value(), message.headers())
            )
        return batches

    def _fetch(self, max_records: int, timeout: float) -> list[Any]:
        """What is there, up to ``max_records``; else wait (``timeout``) for the first record.

        librdkafka's ``consume(n, timeout)`` waits until it has ``n`` records or the time is
        up, which would hold records back for the whole timeout under a light load.
        """
        consume = self._consumer.consume
        messages: list[Any] = consume(max_records, 0)
        if messages or max_records <= 1:
            return messages or consume(1, timeout)
        messages = consume(1, timeout)
        if messages:
            messages += consume(max_records - 1, 0)
        return messages

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition); BusError if refused."""
        if self._gone:
            raise BusError("kafka consumer is closed", retryable=False)
        positions = [
            self._kafka.TopicPartition(tp.topic, tp.partition, offset)
            for tp, offset in offsets.items()
        ]
        answered: asyncio.Future[list[Any]] = self._loop.create_future()
        self._commits.put((positions, answered))
        try:
            # The job runs now if the thread is in a rebalance callback, else on this call.
            self._member.run(self._run_commits)
            answers = await answered
        except (self._kafka.KafkaException, RuntimeError) as exc:
            raise bus_error("commit", exc) from exc
        for answer in answers or ():
            if answer.error is not None:
                raise bus_error("commit", self._kafka.KafkaException(answer.error))

    async def stop(self) -> None:
        """Leave the group (the revoke callback runs first) and release the thread.

        librdkafka's ``close`` has no deadline, and was seen waiting in it for good
        (:mod:`adapters.kafka.member_thread`): after ``CLOSE_TIMEOUT`` the member is given up
        (logged) and its daemon thread left behind. Nothing is lost: what the member did not
        commit is redelivered to the group, which the server rebalances once the member's
        session expires.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._member.run(self._consumer.close)
        except TimeoutError:
            log.warning(
                "kafka consumer did not leave its group within %.0fs; given up", CLOSE_TIMEOUT
            )
        except (self._kafka.KafkaException, RuntimeError) as exc:
            raise bus_error("leave the group", exc) from exc
        finally:
            self._gone = True
            self._member.shutdown()
            self._run_commits()  # the thread is done: fail what still waits

    # -- rebalance callbacks (in the consume thread) ----------------------------------------------

    def _assigned(self, _consumer: Any, partitions: list[Any]) -> None:
        if self._listener is not None:
            tps = {TopicPartition(p.topic, p.partition) for p in partitions}
            self._wait(self._listener.on_partitions_assigned(tps))

    def _revoked(self, _consumer: Any, partitions: list[Any]) -> None:
        if self._listener is not None:
            tps = {TopicPartition(p.topic, p.partition) for p in partitions}
            self._wait(self._listener.on_partitions_revoked(tps))

    def _wait(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on the event loop, running its commits here; bounded."""
        try:
            done = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            return
        done.add_done_callback(lambda _: self._commits.put(None))  # wakes the loop below
        deadline = time.monotonic() + LISTENER_TIMEOUT
        while not done.done():
            try:
                job = self._commits.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                done.cancel()
                log.warning("kafka rebalance listener took over %.0fs", LISTENER_TIMEOUT)
                return
            if job is not None:
                self._commit_now(*job)
        try:
            done.result()
        except (Exception, concurrent.futures.CancelledError):  # lost in librdkafka: log here
            log.exception("kafka rebalance listener failed")

    def _run_commits(self) -> None:
        """Run the commits waiting (on the member's thread, or failing them once stopped)."""
        while True:
            try:
                job = self._commits.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._commit_now(*job)

    def _commit_now(self, positions: list[Any], answered: asyncio.Future[list[Any]]) -> None:
        result: list[Any] | None = None
        error: BaseException | None = None
        try:
            if self._gone:
                raise BusError("kafka consumer is closed", retryable=False)
            result = self._consumer.commit(offsets=positions, asynchronous=False)
        except (self._kafka.KafkaException, RuntimeError, BusError) as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(_answer, answered, result, error)
