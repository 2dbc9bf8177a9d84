"""The XADDs of the Redis Streams bus: concurrent publishes are sent together in pipelines."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence

import redis.asyncio as redis

MAX_PUBLISH_BATCH = 512  # XADDs per pipeline
PUBLISH_PIPELINES = 2  # pipelines in flight at once: the next batch fills while one is sent
CLOSE_TIMEOUT = 2.0  # bound on sending what was published before close


class Publisher:
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

    async def xadd_many(self, stream: str, entries: Sequence[dict[bytes, bytes]]) -> None:
        """Queue every entry's XADD at once (in order: they share a pipeline, or follow in the
        next); return once Redis answered them all; raise the first error otherwise."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for fields in entries:
            future: asyncio.Future[None] = loop.create_future()
            self._pending.append((stream, fields, future))
            futures.append(future)
        self._idle.clear()
        self._wake.set()
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

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
