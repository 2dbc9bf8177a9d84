"""Data-plane metrics (K204), exposed at ``/metrics`` in the Prometheus text format.

The hot path only adds to plain integers (a prometheus_client ``Counter`` takes a lock on every
``inc``, measurable at tens of thousands of events per second); a collector turns them into
Prometheus counters when ``/metrics`` is scraped. Each cemesh app has its own registry, so
several apps can live in one process (tests, or an application that embeds cemesh).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class Metrics(Collector):
    """The counters cemesh keeps; label values are bounded (status codes, outcomes)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.accepted = 0  # events answered 202 by the ingress (the hot path: a plain int)
        self.ingress_events: Counter[str] = Counter()  # rejections, by HTTP status code
        self.deliveries: Counter[str] = Counter()  # by outcome
        self.loops_stopped = 0
        self.incomplete_requests = 0  # ingress requests whose client left mid-body: unused
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        ingress = CounterMetricFamily(
            "cemesh_ingress_events",
            "Events accepted (2xx) or rejected (4xx/5xx) by the ingress.",
            labels=["code"],
        )
        codes = self.ingress_events + Counter({"202": self.accepted})
        for code, count in sorted(codes.items()):
            ingress.add_metric([code], count)
        yield ingress
        deliveries = CounterMetricFamily(
            "cemesh_deliveries",
            "Settled deliveries by outcome: delivered, dead_lettered, dropped, filtered.",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.deliveries.items()):
            deliveries.add_metric([outcome], count)
        yield deliveries
        yield CounterMetricFamily(
            "cemesh_reply_loops_stopped",
            "Reply events dropped because their knativebrokerttl ran out (loop guard, K45).",
            value=self.loops_stopped,
        )
        yield CounterMetricFamily(
            "cemesh_ingress_incomplete_requests",
            "Ingress requests whose client disconnected or timed out before the body was "
            "complete; nothing of them was published.",
            value=self.incomplete_requests,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
