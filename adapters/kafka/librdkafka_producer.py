"""The librdkafka producer of the Kafka bus (``driver: confluent``), bridged to asyncio.

confluent-kafka's producer is thread-based: ``produce`` only queues a record (librdkafka's own
threads batch and send it), and delivery reports come back through callbacks that run inside
``poll``. :class:`LibrdkafkaProducer` calls ``poll(0)`` (never blocking) from the event loop
every :data:`POLL_EVERY` seconds while records await their report, so the callbacks resolve
the publishers' futures on the loop's own thread: no thread of ours waits for the GIL behind a
busy event loop to hand reports over (a first version did; under load it added tens of
milliseconds to every publish), and nothing runs while nothing is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from adapters.kafka.librdkafka import bus_error, load, producer_config
from adapters.kafka.options import KafkaOptions

POLL_EVERY = 0.001  # seconds between two polls for delivery reports while records are in flight
FLUSH_TIMEOUT = 10.0  # seconds close gives records still queued to be acknowledged


class LibrdkafkaProducer:
    """``send`` returns once the server acknowledged the record (``acks=all``)."""

    def __init__(self, options: KafkaOptions) -> None:
        self._kafka = load()
        self._options = options
        self._producer = self._kafka.Producer(producer_config(options))
        self._loop = asyncio.get_running_loop()
        self._in_flight = 0
        self._idle = asyncio.Event()  # nothing in flight
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None

    async def send(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Queue the record; return once acknowledged (BusError when it was not)."""
        await self.produce(topic, value, key, headers)

    def produce(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        """Queue the record now (records queued one after the other keep their order); the
        future resolves once it is acknowledged, or fails with a BusError. Raises BusError when
        librdkafka refuses to queue it."""
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: Any, _message: Any) -> None:  # inside poll, on the loop's thread
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            if future.done():  # the publisher was cancelled meanwhile
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(bus_error("publish", self._kafka.KafkaException(error)))

        try:
            self._producer.produce(topic, value, key, headers=headers, on_delivery=delivered)
        except (BufferError, self._kafka.KafkaException) as exc:
            raise bus_error(f"publish to {topic!r}", exc) from exc
        self._in_flight += 1
        self._idle.clear()
        if self._timer is None:
            self._timer = self._loop.call_later(POLL_EVERY, self._poll)
        return future

    def _poll(self) -> None:
        self._timer = None
        self._producer.poll(0)
        if self._in_flight > 0:
            self._timer = self._loop.call_later(POLL_EVERY, self._poll)

    async def close(self) -> None:
        """Wait (bounded) for queued records' acknowledgements, then stop polling.

        Records still unacknowledged after :data:`FLUSH_TIMEOUT` are purged: their publishers
        get a retryable BusError (the record may or may not have reached the server).
        """
        with contextlib.suppress(TimeoutError):  # the timer polls meanwhile
            await asyncio.wait_for(self._idle.wait(), FLUSH_TIMEOUT)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._producer.purge()
        self._producer.poll(0)  # the purged records' reports fail their publishers
