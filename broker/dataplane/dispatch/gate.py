"""The per-subscriber in-flight limit of deliveries: at most N requests at once per origin.

:class:`OriginGates` gives each ``scheme://host:port`` one :class:`Gate` of ``limit`` slots; a
delivery attempt holds a slot while its request is on the way (never while it backs off between
retries: :mod:`broker.dataplane.dispatch.delivery`).

Why not :class:`asyncio.Semaphore`: on the delivery hot path it costs ~2 us per request (the
coroutines of ``async with`` and ``acquire``, and a scan of the waiters on every acquire), and
the slot is nearly always free. Here taking a free slot is a plain call and a coroutine is made
only when the attempt has to wait. Slots go first come, first served: a slot given back goes
straight to the attempt that has waited longest, never to a newcomer, and a waiting attempt that
is cancelled passes on a slot it was handed but never used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from urllib.parse import urlsplit

# URLs come from configuration; this only bounds a leak.
_MAX_URLS = 10_000


class Gate:
    """``limit`` slots; :meth:`enter` (or, when it says no, :meth:`wait`) takes one and
    :meth:`leave` gives it back."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Slots nobody holds (none while attempts wait)."""
        return self._free

    def enter(self) -> bool:
        """Take a slot if one is free and nobody waits for one; False: :meth:`wait` for one."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait behind the attempts already waiting until :meth:`leave` hands over a slot."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot, but gone before using it: pass it on
            else:
                with contextlib.suppress(ValueError):  # leave() may have dropped it already
                    self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        """Give the slot back: to the attempt waiting longest, else to the free ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class OriginGates:
    """The :class:`Gate` of each origin (``scheme://host:port``) a URL is on."""

    __slots__ = ("_gates", "_limit", "_origins")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._gates: dict[str, Gate] = {}  # by origin
        self._origins: dict[str, str] = {}  # URL -> its origin

    def __call__(self, url: str) -> Gate:
        """The gate shared by every URL on the same scheme://host:port as ``url``."""
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) > _MAX_URLS:
                self._origins.clear()
            origin = self._origins[url] = _origin(url)
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = Gate(self._limit)
        return gate


def _origin(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a malformed port: the request will fail on its own, keep one gate
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{parts.hostname}:{port}"
