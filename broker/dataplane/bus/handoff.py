"""The hand-off queue between an adapter's receiving side and its handler tasks, written once.

Every adapter that receives messages on one task (a fetch loop, a publisher) and handles them on
``concurrency`` handler tasks needs the same small machine, with the same subtle rules:

- A message is handed to *one* waiting handler task (never woken all at once to race for it),
  else queued in ``ready`` (first in, first out).
- Per-key lanes (``ORDERED_BY_KEY``): a message admitted with a lane waits behind the lane's
  message that is out (in a handler, or awaiting redelivery) and is released only when that one
  is finished for good (:meth:`HandOff.finish`). So a lane's messages reach handlers one at a
  time, in admission order, even across redeliveries (the adapter re-releases the lane's own
  message with :meth:`HandOff.release`; the lane stays taken meanwhile).
- Give-back on cancel: a handler task cancelled after a message was handed to it but before it
  saw it (the hand-off and the wake-up are two loop turns apart) gives the message back to the
  *front*, for the next handler: a message is never lost between the two.

Adapters keep their own bookkeeping (counts, commit points) through the ``on_handed`` and
``on_given_back`` hooks, called synchronously when a message leaves for a handler task and when
one comes back unseen, and ``on_queued``, when a message has to wait because no handler task is
waiting (an adapter that starts handler tasks on demand starts one then).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class HandOff(Generic[T]):
    """Messages waiting for a handler task: ready ones, waiting handler tasks, per-key lanes."""

    __slots__ = ("_getters", "_lanes", "_on_given_back", "_on_handed", "_on_queued", "ready")

    def __init__(
        self,
        *,
        on_handed: Callable[[T], None] | None = None,
        on_given_back: Callable[[T], None] | None = None,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.ready: deque[T] = deque()  # deliverable, no handler task waiting for them yet
        self._getters: deque[asyncio.Future[T]] = deque()  # handler tasks waiting, in order
        # lane -> later messages of that lane, behind the one that is out. A lane is present
        # while one of its messages is anywhere between admission and finish.
        self._lanes: dict[Hashable, deque[T]] = {}
        self._on_handed = on_handed
        self._on_given_back = on_given_back
        # Called when a message is queued in ``ready`` because no handler task waits for it
        # (an adapter that starts handler tasks on demand starts one).
        self._on_queued = on_queued

    @property
    def has_waiting_taker(self) -> bool:
        """Some handler task is waiting in :meth:`take` for the next message."""
        return any(not getter.done() for getter in self._getters)

    def put(self, item: T, lane: Hashable | None = None) -> None:
        """Admit a new message: behind its lane's message that is out, else deliverable now."""
        if lane is not None:
            waiting = self._lanes.get(lane)
            if waiting is not None:
                waiting.append(item)
                return
            self._lanes[lane] = deque()
        self.release(item)

    def release(self, item: T, *, front: bool = False) -> None:
        """Make ``item`` deliverable (its lane, if any, stays taken by it): hand it to one
        waiting handler task, else queue it (at the ``front``: it was out before)."""
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(item)
                if self._on_handed is not None:
                    self._on_handed(item)
                return
        if front:
            self.ready.appendleft(item)
        else:
            self.ready.append(item)
        if self._on_queued is not None:
            self._on_queued()

    async def take(self) -> T:
        """The next deliverable message, waiting for one; given back if cancelled meanwhile."""
        if self.ready:
            item = self.ready.popleft()
            if self._on_handed is not None:
                self._on_handed(item)
            return item
        getter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._getters.append(getter)
        try:
            return await getter
        except asyncio.CancelledError:
            if getter.done() and not getter.cancelled():
                # Handed one, but cancelled before the handler saw it: not a delivery.
                item = getter.result()
                if self._on_given_back is not None:
                    self._on_given_back(item)
                self.release(item, front=True)
            else:
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
            raise

    def finish(self, lane: Hashable | None) -> None:
        """The message out for ``lane`` is settled for good: release the lane's next one."""
        if lane is None:
            return
        waiting = self._lanes[lane]
        if waiting:
            self.release(waiting.popleft())
        else:
            del self._lanes[lane]

    def drop_lanes(self, which: Callable[[Hashable], bool]) -> None:
        """Forget the lanes ``which`` selects, with the messages waiting in them."""
        for lane in [lane for lane in self._lanes if which(lane)]:
            del self._lanes[lane]

    def clear(self) -> None:
        """Forget every queued message and lane (the handler tasks waiting keep waiting)."""
        self.ready.clear()
        self._lanes.clear()

    @property
    def lanes(self) -> int:
        """How many lanes have a message out."""
        return len(self._lanes)
