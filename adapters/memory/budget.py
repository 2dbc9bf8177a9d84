"""What the memory bus's events weigh, and the waits of publishers for room.

:func:`event_footprint` is the bytes one held event counts for; :class:`ByteBudget` is the
bus-wide bound on them (``queue_bytes``) and :class:`WaitQueue` the publishers waiting for room,
woken one at a time (see the back-pressure rules in :mod:`adapters.memory.bus`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import orjson

from broker.core.events import CloudEvent

# What :func:`event_footprint` adds for the Python objects of one held event (the CloudEvent,
# its attribute dict, the queue entry) and for each attribute (its key and value objects):
# measured sizes rounded up, so that many small events are not undercounted.
EVENT_OVERHEAD = 512
ATTRIBUTE_OVERHEAD = 128


def event_footprint(event: CloudEvent) -> int:
    """About how many bytes of memory ``event`` takes while a group holds it (pure).

    Its data, its attributes as JSON (names and values: one C call, cheaper on the ingress hot
    path than a loop over them), and the fixed overheads.
    """
    attributes = event.attributes
    size = EVENT_OVERHEAD + ATTRIBUTE_OVERHEAD * len(attributes) + len(orjson.dumps(attributes))
    return size if event.data is None else size + len(event.data)


class WaitQueue:
    """Publishers waiting for room, woken one at a time, first come first served."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Return when woken (to look again: the room may be gone by then)."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # The wake-up was meant for someone waiting: pass it on rather than lose it.
            if waiter.done() and not waiter.cancelled():
                self.wake_one()
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def wake_one(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class ByteBudget:
    """The bytes of events the whole bus holds (``held``), bounded by ``limit``."""

    __slots__ = ("held", "limit", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting = WaitQueue()

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit (always, when nothing is held: no event is refused)."""
        return self.held == 0 or self.held + size <= self.limit

    def release(self, size: int) -> None:
        self.held -= size
        if self.waiting.waiters:
            self.waiting.wake_one()
