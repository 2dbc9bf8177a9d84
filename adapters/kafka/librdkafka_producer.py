"""The librdkafka producer of the Kafka bus (``driver: confluent``), bridged to asyncio.

confluent-kafka's producer is thread-based: ``produce`` only queues a record (librdkafka's own
threads batch and send it), and delivery reports come back through callbacks that run inside
``poll``. :class:`LibrdkafkaProducer` keeps one thread calling ``poll``; the callbacks it runs
only collect (future, error) pairs, and after each ``poll`` the whole batch is handed to the
event loop with one ``call_soon_threadsafe``, so waking the loop costs one call per batch of
acknowledgements rather than one per record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from adapters.kafka.librdkafka import POLL_SLICE, bus_error, load, producer_config
from adapters.kafka.options import KafkaOptions

FLUSH_TIMEOUT = 10.0  # seconds close gives records still queued to be acknowledged
_Settled = list[tuple[asyncio.Future[None], Any]]


class LibrdkafkaProducer:
    """``send`` returns once the server acknowledged the record (``acks=all``)."""

    def __init__(self, options: KafkaOptions) -> None:
        self._kafka = load()
        self._options = options
        self._producer = self._kafka.Producer(producer_config(options))
        self._loop = asyncio.get_running_loop()
        self._settled: _Settled = []  # filled by delivery callbacks in the poll thread
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Queue the record; return once acknowledged (BusError when it was not)."""
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: Any, _message: Any) -> None:  # in the poll thread (or close's)
            self._settled.append((future, error))

        try:
            self._producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
        except (BufferError, self._kafka.KafkaException) as exc:
            raise bus_error(f"publish to {topic!r}", exc) from exc
        await future

    async def partitions(self, topic: str) -> set[int]:
        """The partitions of ``topic`` the cluster's metadata knows (empty when none yet)."""
        timeout = self._options.request_timeout_ms / 1000
        try:
            metadata = await asyncio.to_thread(self._producer.list_topics, topic, timeout)
        except self._kafka.KafkaException as exc:
            raise bus_error(f"metadata of {topic!r}", exc) from exc
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return set()
        return set(described.partitions)

    async def close(self) -> None:
        """Wait (bounded) for queued records' acknowledgements, then stop the poll thread.

        Records still unacknowledged after :data:`FLUSH_TIMEOUT` are purged: their publishers
        get a retryable BusError (the record may or may not have reached the server).
        """
        await asyncio.to_thread(self._producer.flush, FLUSH_TIMEOUT)
        self._stopping.set()
        await asyncio.to_thread(self._thread.join)
        self._producer.purge()
        self._producer.poll(0)  # the purged records' reports, into self._settled
        self._settle(self._take())

    def _take(self) -> _Settled:
        batch, self._settled = self._settled, []
        return batch

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(POLL_SLICE)
            if self._settled:
                batch = self._take()
                try:
                    self._loop.call_soon_threadsafe(self._settle, batch)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return

    def _settle(self, batch: _Settled) -> None:
        for future, error in batch:
            if future.done():  # the publisher was cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(bus_error("publish", self._kafka.KafkaException(error)))
