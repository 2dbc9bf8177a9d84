"""The thread of one librdkafka group member: its blocking calls, one at a time, in order.

It does what a one-thread :class:`concurrent.futures.ThreadPoolExecutor` would, with one
difference that is the reason it exists: the thread is a daemon. librdkafka's consumer ``close``
has no deadline of its own, and a test run on Tansu 0.6 once saw it wait for over 15 minutes in
its revoke step (in ``rd_kafka_assign``, called by confluent-kafka after the revoke callback
returned; Tansu has known group bugs, see ``tests/support/servers/kafka.py``).
:meth:`LibrdkafkaConsumer.stop
<adapters.kafka.librdkafka_consumer.LibrdkafkaConsumer.stop>` then gives up waiting; an executor's
thread stuck there would still be joined when the interpreter exits, so the process could never
end. A daemon thread stuck in C is left behind instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class MemberThread:
    """Runs callables on one daemon thread, in the order given; results come back as futures of
    the event loop that created it."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``call``; its result (or exception) in the returned future. RuntimeError once
        :meth:`shutdown` was called (as an executor's ``submit`` raises)."""
        if self._stopped:
            raise RuntimeError("the member's thread is stopped")
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((call, future))
        return future

    def shutdown(self) -> None:
        """No more calls: the thread ends after those already queued (if it ever gets there)."""
        if not self._stopped:
            self._stopped = True
            self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future = item
            try:
                result, error = call(), None
            except BaseException as exc:  # handed to the caller, as an executor does
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller stopped waiting (cancelled, or timed out)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
