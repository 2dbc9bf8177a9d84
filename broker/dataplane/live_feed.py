"""The live feed: events as a Broker or Channel accepts them, for whoever watches (``cemesh tail``).

The ingress offers every accepted event to :class:`LiveFeed` (so do replies re-entering a
Broker). With nobody watching, that is one empty-dict test per request: no copy, no queue. Each
watcher has its own bounded queue; when its reader falls behind, further events are dropped
for that watcher only and counted (:attr:`Watcher.dropped`, and the feed's total for
``/metrics``), so a slow or stuck reader can never slow the data plane or hold memory.

The management API's endpoint (:mod:`broker.controlplane.api.tail`) opens a watcher per request
and streams its queue; this module knows nothing of HTTP or authorization.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from broker.core.events import CloudEvent
from broker.dataplane.routes import Route

DEFAULT_QUEUE_SIZE = 1000


class Watcher:
    """One reader of one route's events: a bounded queue and what did not fit in it."""

    __slots__ = ("_feed", "dropped", "queue", "route")

    def __init__(self, feed: LiveFeed, route: Route, queue_size: int) -> None:
        self._feed = feed
        self.route = route
        self.queue: asyncio.Queue[CloudEvent] = asyncio.Queue(queue_size)
        self.dropped = 0

    def offer(self, events: Iterable[CloudEvent]) -> None:
        for event in events:
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
                self._feed.dropped += 1


class LiveFeed:
    """Watchers by route; the ingress calls :meth:`offer` for what it accepted."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        # Route -> its watchers. Empty when nobody watches: the ingress tests just this.
        self.watched: dict[Route, list[Watcher]] = {}
        self.dropped = 0  # events no watcher's queue had room for, since start

    def offer(self, route: Route, events: Iterable[CloudEvent]) -> None:
        """Hand ``events`` accepted on ``route`` to its watchers (never waits)."""
        watchers = self.watched.get(route)
        if watchers:
            for watcher in watchers:
                watcher.offer(events)

    @contextlib.contextmanager
    def watch(self, route: Route) -> Iterator[Watcher]:
        """A watcher of ``route`` for the duration of the ``with`` block."""
        watcher = Watcher(self, route, self.queue_size)
        self.watched.setdefault(route, []).append(watcher)
        try:
            yield watcher
        finally:
            watchers = self.watched.get(route, [])
            if watcher in watchers:
                watchers.remove(watcher)
            if not watchers:
                self.watched.pop(route, None)

    def families(self) -> Iterator[Metric]:
        """``cemesh_live_feed_watchers`` and ``cemesh_live_feed_dropped_total``."""
        yield GaugeMetricFamily(
            "cemesh_live_feed_watchers",
            "Live event streams (cemesh tail) open now.",
            value=sum(len(w) for w in self.watched.values()),
        )
        yield CounterMetricFamily(
            "cemesh_live_feed_dropped",
            "Events a live stream's reader was too slow for (dropped for that reader only).",
            value=self.dropped,
        )
