"""The invoker's metrics: replicas desired and ready, requests in flight and waiting, and cold
starts (a request arriving at zero replicas) with how long the first replica took to listen.

:class:`InvokerMetrics` is fed by the invoker (a cold start begins in its wake-up, ends when a
replica of that Revision listens) and registered with the app's
:class:`~broker.core.metrics.Metrics` as a source, so the gauges are read from the live
Revisions at scrape time and nothing is kept twice. Labels are the Revision's namespace and
name: resources an operator applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from broker.core.metrics import COLD_START_BUCKETS_S, Histogram
from broker.features.serving.backend import Backend
from broker.features.serving.revision_state import RevisionState

LABELS = ["namespace_name", "revision_name"]


class InvokerMetrics:
    """Cold starts per Revision, and the families of every Revision's replicas and requests."""

    def __init__(self, revisions: Callable[[], Iterable[RevisionState]], backend: Backend) -> None:
        self._revisions = revisions
        self._backend = backend
        self.cold_starts: Counter[tuple[str, str]] = Counter()
        self.cold_start_seconds = Histogram(COLD_START_BUCKETS_S)
        self._started: dict[tuple[str, str], float] = {}

    def cold_start_began(self, state: RevisionState, now: float) -> None:
        key = (state.ref.namespace, state.spec.name)
        if key not in self._started:
            self._started[key] = now
            self.cold_starts[key] += 1

    def replica_listening(self, state: RevisionState, now: float) -> None:
        """A replica of ``state`` listens: the cold start under way, if any, is over."""
        began = self._started.pop((state.ref.namespace, state.spec.name), None)
        if began is not None:
            self.cold_start_seconds.observe(
                (state.ref.namespace, state.spec.name), max(0.0, now - began)
            )

    def forget(self, state: RevisionState) -> None:
        self._started.pop((state.ref.namespace, state.spec.name), None)

    def families(self) -> Iterator[Metric]:
        desired = GaugeMetricFamily(
            "cemesh_revision_desired_replicas",
            "Replicas the autoscaler wants for a Revision.",
            labels=LABELS,
        )
        ready = GaugeMetricFamily(
            "cemesh_revision_ready_replicas",
            "Replicas of a Revision listening now.",
            labels=LABELS,
        )
        in_flight = GaugeMetricFamily(
            "cemesh_revision_requests_in_flight",
            "Requests on a Revision's replicas now.",
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "cemesh_revision_requests_waiting",
            "Requests held by the activator for a free replica now.",
            labels=LABELS,
        )
        for state in list(self._revisions()):
            labels = [state.ref.namespace, state.spec.name]
            desired.add_metric(labels, state.desired)
            ready.add_metric(labels, len(self._backend.ready(state.ref)))
            in_flight.add_metric(labels, state.activator.active)
            waiting.add_metric(labels, state.activator.waiting)
        cold = CounterMetricFamily(
            "cemesh_revision_cold_starts",
            "Requests that found a Revision at zero replicas and woke it.",
            labels=LABELS,
        )
        for key, count in sorted(self.cold_starts.items()):
            cold.add_metric(list(key), count)
        yield from (desired, ready, in_flight, waiting, cold)
        yield self.cold_start_seconds.family(
            "cemesh_revision_cold_start_seconds",
            "Seconds from a request waking a Revision at zero until a replica listened.",
            LABELS,
        )
