"""Prometheus metrics of the data plane (K204), exposed at ``/metrics``.

Each cemesh app has its own registry so that several apps can live in one process (tests, or an
application that embeds cemesh) without clashing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """The counters cemesh keeps; label values are bounded (namespaces, names, outcomes)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingress_events = Counter(
            "cemesh_ingress_events",
            "Events accepted (2xx) or rejected (4xx/5xx) by the ingress.",
            ["code"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "cemesh_deliveries",
            "Settled deliveries by outcome: delivered, dead_lettered, dropped, filtered.",
            ["outcome"],
            registry=self.registry,
        )
        self.loops_stopped = Counter(
            "cemesh_reply_loops_stopped",
            "Reply events dropped because their knativebrokerttl ran out (loop guard, K45).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
