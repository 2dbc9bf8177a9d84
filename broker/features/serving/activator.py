"""Per-Revision activator and queue-proxy, in-process: hold, admit, count.

What Knative splits between the activator (buffer requests while a Revision is at zero) and the
queue-proxy sidecar (enforce ``containerConcurrency``, report concurrency) is one object here,
:class:`Activator`, on the request path with no extra hop:

- :meth:`Activator.acquire` hands out the least-loaded ready replica that is below the
  Revision's ``containerConcurrency`` (0: unlimited), so a replica never has more requests in
  flight than that. When none is free (none ready, or all full) the request waits in a bounded
  FIFO queue; a slot freed by :meth:`Activator.release` or a replica becoming ready
  (:meth:`Activator.replicas_changed`) goes to the oldest waiter directly. A full queue raises
  :class:`Overloaded`, a wait past the hold timeout :class:`HoldTimeout` (both answered 503
  with ``Retry-After``). Waiting at zero ready replicas calls ``wake`` once, so the autoscaler
  scales from zero at once rather than at its next tick (Knative's activator "poke").
- It counts, for the autoscaler, requests arrived and the time-weighted average concurrency
  (in flight + waiting, as Knative's activator and queue-proxy report it) between two
  :meth:`Activator.sample` calls.
- :meth:`Activator.drained` lets the backend stop a replica only once nothing is in flight on it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from broker.features.serving.backend import Backend, Replica, RevisionRef


class Overloaded(Exception):
    """The Revision's queue of waiting requests is full."""


class HoldTimeout(Exception):
    """No replica became free within the hold timeout."""


def _give_back(activator: Activator, future: asyncio.Future[Replica]) -> None:
    if future.done() and not future.cancelled() and future.exception() is None:
        activator.release(future.result().id)


class Activator:
    """Admission, queueing and concurrency counting for one Revision (module docstring)."""

    def __init__(
        self,
        ref: RevisionRef,
        backend: Backend,
        *,
        container_concurrency: int,
        queue_size: int,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self.ref = ref
        self.backend = backend
        self.container_concurrency = container_concurrency
        self.queue_size = queue_size
        self.clock = clock
        self.wake = wake
        self.inflight: dict[str, int] = {}  # replica id -> requests in flight on it
        self.active = 0  # requests in flight on replicas
        self.waiting = 0  # requests waiting for a replica
        self.max_seen: dict[str, int] = {}  # replica id -> highest in flight (tests, bench)
        self._waiters: deque[asyncio.Future[Replica]] = deque()
        self._idle: dict[str, asyncio.Event] = {}
        self._requests = 0
        self._area = 0.0  # integral of (active + waiting) over time since the last sample
        self._last = clock()
        self._since = self._last
        self.closed = False

    # --- metrics ----------------------------------------------------------------------------------

    def _level_changes(self) -> None:
        now = self.clock()
        self._area += (self.active + self.waiting) * (now - self._last)
        self._last = now

    def sample(self, now: float) -> tuple[float, int]:
        """(average concurrency, requests arrived) since the previous sample; starts a new one."""
        self._area += (self.active + self.waiting) * max(0.0, now - self._last)
        elapsed = now - self._since
        average = self._area / elapsed if elapsed > 1e-3 else float(self.active + self.waiting)
        requests = self._requests
        self._area, self._requests, self._last, self._since = 0.0, 0, now, now
        return average, requests

    @property
    def concurrency(self) -> int:
        return self.active + self.waiting

    # --- admission --------------------------------------------------------------------------------

    def _pick(self) -> Replica | None:
        limit = self.container_concurrency
        best: Replica | None = None
        best_load = 0
        for replica in self.backend.ready(self.ref):
            load = self.inflight.get(replica.id, 0)
            if limit and load >= limit:
                continue
            if best is None or load < best_load:
                best, best_load = replica, load
                if load == 0:
                    break
        return best

    def _take(self, replica: Replica) -> None:
        load = self.inflight.get(replica.id, 0) + 1
        self.inflight[replica.id] = load
        if load > self.max_seen.get(replica.id, 0):
            self.max_seen[replica.id] = load
        self.active += 1

    async def acquire(self, timeout: float) -> Replica:  # noqa: ASYNC109
        """A replica with a free slot, taken for this request; :meth:`release` it after.

        Raises :class:`Overloaded` or :class:`HoldTimeout` (module docstring).
        """
        self._requests += 1
        if not self._waiters:  # FIFO: nobody may overtake a request already waiting
            replica = self._pick()
            if replica is not None:
                self._level_changes()
                self._take(replica)
                return replica
        if self.closed:
            raise HoldTimeout
        if self.waiting >= self.queue_size:
            raise Overloaded
        future: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._level_changes()
        self.waiting += 1
        self._waiters.append(future)
        self._dispatch()  # a slot may be free behind waiters that gave up meanwhile
        if not future.done() and not self.backend.ready(self.ref):
            self.wake()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            _give_back(self, future)  # handed over just as the timeout struck
            raise HoldTimeout from None
        except BaseException:
            _give_back(self, future)
            raise
        finally:
            self._level_changes()
            self.waiting -= 1

    def release(self, replica_id: str) -> None:
        """The request on ``replica_id`` finished: free its slot (to the oldest waiter)."""
        self._level_changes()
        load = self.inflight.get(replica_id, 1) - 1
        self.active -= 1
        if load <= 0:
            self.inflight.pop(replica_id, None)
            idle = self._idle.pop(replica_id, None)
            if idle is not None:
                idle.set()
        else:
            self.inflight[replica_id] = load
        if self._waiters:
            self._dispatch()

    def replicas_changed(self) -> None:
        """The ready replicas changed: hand free slots to waiting requests."""
        if self._waiters:
            self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters:
            if self._waiters[0].done():  # timed out or cancelled meanwhile
                self._waiters.popleft()
                continue
            replica = self._pick()
            if replica is None:
                return
            self._take(replica)
            self._waiters.popleft().set_result(replica)

    async def drained(self, replica_id: str, timeout: float) -> None:  # noqa: ASYNC109
        """Return once no request is in flight on ``replica_id`` (or after ``timeout``)."""
        if self.closed or not self.inflight.get(replica_id):
            return
        idle = self._idle.setdefault(replica_id, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await idle.wait()
        except TimeoutError:
            pass

    def close(self) -> None:
        """The Revision is gone: waiting requests end with HoldTimeout, drains return."""
        self.closed = True
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(HoldTimeout())
        for idle in self._idle.values():
            idle.set()
        self._idle.clear()
