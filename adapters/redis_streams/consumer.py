"""One subscription of the Redis Streams bus: a fetch and claim loop, handlers, keep-alives.

A :class:`RedisSubscription` reads as its own consumer of the group, takes over entries others
abandoned, hands entries to ``concurrency`` handler tasks and settles them through its
:class:`~adapters.redis_streams.settler.Settler` (see the package's ``bus.py`` for the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from adapters.redis_streams.options import RedisOptions
from adapters.redis_streams.policy import consumer_name, decode_message, release_idle_ms
from adapters.redis_streams.settler import CLOSE_TIMEOUT, RETRY_PAUSE, Settler
from broker.dataplane.bus import Handler, run_handler

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

# Redelivery delay after a handler raised something other than Nack (as the memory bus): a handler
# failing on every message must not spin, a transient error should not wait long.
ERROR_REDELIVERY_DELAY = 0.05
# An entry that is not a cemesh envelope (someone else wrote to the stream) cannot be handed to a
# handler, and dropping it is not ours to decide: it is logged and comes back this much later.
UNDECODABLE_REDELIVERY_DELAY = 60.0
WAKEUP_SLACK = 0.005  # s: our clock and the server's round milliseconds differently


@dataclass(slots=True)
class _Entry:
    id: bytes
    fields: dict[bytes, bytes]
    attempt: int


class RedisSubscription:
    """One consumer of a group: a fetch loop, ``concurrency`` handler tasks, a heartbeat."""

    def __init__(
        self,
        client: redis.Redis,
        options: RedisOptions,
        stream: str,
        group: str,
        handler: Handler,
        concurrency: int,
        *,
        on_close: Callable[[RedisSubscription], None],
    ) -> None:
        self.client = client
        self.options = options
        self._on_close = on_close
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
        self._settler = Settler(self)
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
        log_extra = self.log_extra()  # once, not per message
        while True:
            entry = await self._queue.get()
            try:
                message = decode_message(entry.fields, entry.attempt)
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
                    log_extra=log_extra,
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
        self._on_close(self)
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
