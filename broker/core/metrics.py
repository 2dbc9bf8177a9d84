"""Data-plane metrics (K204), exposed at ``/metrics`` in the Prometheus text format.

Names and labels follow Knative Eventing's data-plane metrics where Knative has one, under a
``cemesh_`` prefix: ``cemesh_broker_ingress_event_count`` and
``cemesh_broker_ingress_event_dispatch_latencies`` (Knative's broker ingress ``event_count`` and
``event_dispatch_latencies``: labels ``namespace_name``, ``broker_name``, ``event_type``,
``response_code``, ``response_code_class``), ``cemesh_broker_filter_event_count`` and
``cemesh_broker_filter_event_dispatch_latencies`` (the broker filter's, plus ``trigger_name``),
and the channel counterparts (``channel_name``, ``subscription_name``). Latencies are in
milliseconds, as in Knative. cemesh's own additions: delivery outcomes and retries per Trigger or
Subscription, reply-loop stops, and whatever the registered sources add (the dispatcher's
per-group bus backlog, the invoker's replicas, in-flight requests and cold starts).

Cost on the hot path: recording is a dict lookup and a few integer additions, no lock
(a prometheus_client ``Counter`` or ``Histogram`` takes a lock per update, measurable at tens of
thousands of events per second); a collector turns the plain numbers into Prometheus families
when ``/metrics`` is scraped, and the ``event_count`` families are derived from the latency
histograms' counts there, so an event is recorded once. The ingress and the dispatcher record
through a meter per Broker/Channel (:class:`IngressMeter`) or Trigger/Subscription
(:class:`DeliveryMeter`), which keeps the series of each event type it has seen at hand: no
label tuple is built per event (``bench/metrics_cost.py`` measures it).

Each cemesh app has its own registry, so several apps can live in one process (tests, or an
application that embeds cemesh).

Label cardinality is bounded: namespaces, Brokers, Triggers, Channels and Subscriptions are
resources an operator applied; response codes are HTTP statuses; the event type comes from
senders, so :class:`EventTypeLabels` admits the first ``max_event_types`` distinct types (each
at most 100 characters) and reports every later or longer one as ``other``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Milliseconds, Knative's dispatch latency buckets (exponential-ish from 1 ms to 10 s).
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# Seconds, for cold starts (a process or a pod starting).
COLD_START_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OTHER_EVENT_TYPE = "other"
MAX_EVENT_TYPE_LENGTH = 100
NO_RESPONSE = "none"  # response_code when there was no HTTP status (refused, reset, timed out)

# A source of extra families, called at scrape time (the dispatcher's backlog, the invoker's).
MetricSource = Callable[[], Iterable[Metric]]


class EventTypeLabels:
    """The ``event_type`` label of an event type: itself while fewer than ``limit`` distinct types
    were seen (and it is short), else ``other``. Bounds the series senders can create."""

    __slots__ = ("_admitted", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._admitted: set[str] = set()

    def __call__(self, event_type: str) -> str:
        if event_type in self._admitted:
            return event_type
        if len(self._admitted) >= self.limit or len(event_type) > MAX_EVENT_TYPE_LENGTH:
            return OTHER_EVENT_TYPE
        self._admitted.add(event_type)
        return event_type


class Histogram:
    """A labelled histogram kept as plain lists: per label tuple, a count per bucket (the last
    one +Inf) and the sum. :meth:`family` makes the cumulative Prometheus family."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: Iterable[float]) -> None:
        # Floats: a latency is a float, and CPython compares a float with an int more slowly
        # than with a float (bench/metrics_cost.py: 0.2 us less per recording).
        self.bounds = tuple(float(bound) for bound in bounds)
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float, count: int = 1) -> None:
        """Record ``value`` (``count`` times: the events of one batch share a latency)."""
        series = self.series_of(labels)
        series[bisect_left(self.bounds, value)] += count
        series[-1] += value * count

    def family(
        self,
        name: str,
        documentation: str,
        label_names: list[str],
        select: Callable[[tuple[str, ...]], tuple[str, ...] | None] = lambda labels: labels,
    ) -> HistogramMetricFamily:
        """The family of the series ``select`` maps to label values (None: leave it out)."""
        family = HistogramMetricFamily(name, documentation, labels=label_names)
        for labels, series in sorted(self.series.items()):
            values = select(labels)
            if values is None:
                continue
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, float("inf")), series[:-1], strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(list(values), buckets, series[-1])
        return family

    def series_of(self, labels: tuple[str, ...]) -> list[float]:
        """The series of ``labels`` (made empty when new): a meter keeps it to add to directly."""
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.bounds) + 2)
        return series

    def counts(self) -> Iterator[tuple[tuple[str, ...], float]]:
        """(labels, number of observations) per series."""
        for labels, series in sorted(self.series.items()):
            yield labels, sum(series[:-1])


class IngressMeter:
    """What one Broker's or Channel's ingress records of the events it accepted (202).

    Keeps the latency series of each admitted event type; a type reported as ``other`` is looked
    up each time instead, so senders cannot grow the cache beyond ``max_event_types``."""

    __slots__ = ("_bounds", "_histogram", "_route", "_series", "_type_label")

    def __init__(self, metrics: Metrics, route: tuple[str, str, str]) -> None:
        self._route = route
        self._histogram = metrics.ingress_latency
        self._bounds = metrics.ingress_latency.bounds
        self._type_label = metrics.event_type
        self._series: dict[str, list[float]] = {}

    def accepted(self, event_type: str, elapsed_ms: float, count: int = 1) -> None:
        """``count`` events of ``event_type`` answered 202 after ``elapsed_ms``."""
        series = self._series.get(event_type)
        if series is None:
            series = self._series_for(event_type)
        series[bisect_left(self._bounds, elapsed_ms)] += count
        series[-1] += elapsed_ms * count

    def _series_for(self, event_type: str) -> list[float]:
        label = self._type_label(event_type)
        series = self._histogram.series_of((*self._route, label, "202"))
        if label == event_type:
            self._series[event_type] = series
        return series


class DeliveryMeter:
    """What the dispatcher records of one Trigger's or Subscription's settled deliveries: the
    outcome and the latency by event type and the subscriber's last status (cached as in
    :class:`IngressMeter`)."""

    __slots__ = ("_bounds", "_histogram", "_series", "_type_label", "labels", "outcomes")
    _series: dict[int | None, dict[str, list[float]]]  # status -> event type -> series

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str, str]) -> None:
        self.labels = labels
        self.outcomes: dict[str, int] = {}  # settled events by outcome
        self._histogram = metrics.dispatch_latency
        self._bounds = metrics.dispatch_latency.bounds
        self._series = {}
        self._type_label = metrics.event_type

    def settled(self, event_type: str, outcome: str, status: int | None, seconds: float) -> None:
        """One delivery of ``event_type`` ended ``outcome`` (subscriber's last ``status``)."""
        outcomes = self.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        by_type = self._series.get(status)
        series = None if by_type is None else by_type.get(event_type)
        if series is None:
            series = self._series_for(event_type, status)
        elapsed_ms = seconds * 1000.0
        series[bisect_left(self._bounds, elapsed_ms)] += 1
        series[-1] += elapsed_ms

    def outcome(self, outcome: str) -> None:
        """Count one event settled ``outcome`` (``filtered`` has no delivery, so no latency)."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _series_for(self, event_type: str, status: int | None) -> list[float]:
        label = self._type_label(event_type)
        code = NO_RESPONSE if status is None else str(status)
        series = self._histogram.series_of((*self.labels, label, code))
        if label == event_type:  # statuses are HTTP codes: a bounded set
            self._series.setdefault(status, {})[event_type] = series
        return series


def response_code_class(code: str) -> str:
    """Knative's ``response_code_class``: ``2xx`` for 202, ``none`` without a response."""
    return f"{code[0]}xx" if code[:1].isdigit() else NO_RESPONSE


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


class Metrics(Collector):
    """What cemesh counts; label values are bounded (module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_event_types: int = 100, *, detail: bool = True) -> None:
        # False: the per-resource counts and latencies are not recorded (to measure their cost).
        self.detail = detail
        self.event_type = EventTypeLabels(max_event_types)
        self.accepted = 0  # events answered 202 by the ingress
        self.ingress_events: Counter[str] = Counter()  # rejections, by HTTP status code
        # (kind "broker"|"channel", namespace, name, event type, response code) -> latency ms
        self.ingress_latency = Histogram(LATENCY_BUCKETS_MS)
        # ("trigger"|"subscription", namespace, broker/channel, name, event type, code) -> ms
        self.dispatch_latency = Histogram(LATENCY_BUCKETS_MS)
        self.deliveries: Counter[str] = Counter()  # by outcome
        # ("trigger"|"subscription", namespace, broker/channel, name) -> retries (attempts - 1)
        self.retries: Counter[tuple[str, str, str, str]] = Counter()
        self.loops_stopped = 0
        self.incomplete_requests = 0  # ingress requests whose client left mid-body: unused
        self._sources: list[MetricSource] = []
        # One meter per resource, kept as long as the counts are (resources an operator applied).
        self._ingress_meters: dict[tuple[str, str, str], IngressMeter] = {}
        self._delivery_meters: dict[tuple[str, str, str, str], DeliveryMeter] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def ingress_meter(self, route: tuple[str, str, str]) -> IngressMeter:
        """The meter of a Broker's or Channel's ingress (``route``: kind, namespace, name)."""
        meter = self._ingress_meters.get(route)
        if meter is None:
            meter = self._ingress_meters[route] = IngressMeter(self, route)
        return meter

    def delivery_meter(self, labels: tuple[str, str, str, str]) -> DeliveryMeter:
        """The meter of a Trigger or Subscription (``labels``: kind, namespace, parent, name)."""
        meter = self._delivery_meters.get(labels)
        if meter is None:
            meter = self._delivery_meters[labels] = DeliveryMeter(self, labels)
        return meter

    def add_source(self, source: MetricSource) -> None:
        """Call ``source`` at every scrape and expose the families it yields."""
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        yield from self._ingress_families()
        yield from self._dispatch_families()
        yield from self._legacy_families()
        for source in self._sources:
            yield from source()

    def _ingress_families(self) -> Iterator[Metric]:
        for kind in ("broker", "channel"):
            names = ["namespace_name", f"{kind}_name", "event_type"]
            codes = ["response_code", "response_code_class"]

            def select(labels: tuple[str, ...], kind: str = kind) -> tuple[str, ...] | None:
                if labels[0] != kind:
                    return None
                return (*labels[1:], response_code_class(labels[4]))

            yield _counts(
                self.ingress_latency,
                f"cemesh_{kind}_ingress_event_count",
                f"Events received by a {kind.capitalize()}'s ingress, by response.",
                names + codes,
                select,
            )
            yield self.ingress_latency.family(
                f"cemesh_{kind}_ingress_event_dispatch_latencies",
                f"Milliseconds from a request at a {kind.capitalize()}'s ingress to its answer "
                "(the event on the bus for 202).",
                names + codes,
                select,
            )

    def _dispatch_families(self) -> Iterator[Metric]:
        parts = {
            "trigger": ("broker_filter", "broker_name", "trigger_name"),
            "subscription": ("channel_dispatcher", "channel_name", "subscription_name"),
        }
        for kind, (prefix, parent, child) in parts.items():
            names = ["namespace_name", parent, child, "event_type"]
            codes = ["response_code", "response_code_class"]

            def select(labels: tuple[str, ...], kind: str = kind) -> tuple[str, ...] | None:
                if labels[0] != kind:
                    return None
                return (*labels[1:], response_code_class(labels[5]))

            yield _counts(
                self.dispatch_latency,
                f"cemesh_{prefix}_event_count",
                f"Events delivered to a {kind.capitalize()}'s subscriber, by the subscriber's "
                "last response (none: no HTTP response).",
                names + codes,
                select,
            )
            yield self.dispatch_latency.family(
                f"cemesh_{prefix}_event_dispatch_latencies",
                f"Milliseconds to deliver an event to a {kind.capitalize()}'s subscriber, "
                "retries and reply included.",
                names + codes,
                select,
            )
        outcomes = CounterMetricFamily(
            "cemesh_delivery_outcomes",
            "Settled events per Trigger or Subscription: delivered, filtered, dead_lettered, "
            "dropped (failed without a dead-letter sink).",
            labels=["resource_kind", "namespace_name", "parent_name", "resource_name", "outcome"],
        )
        for labels, meter in sorted(self._delivery_meters.items()):
            for outcome, count in sorted(meter.outcomes.items()):
                outcomes.add_metric([*labels, outcome], count)
        yield outcomes
        retries = CounterMetricFamily(
            "cemesh_delivery_retries",
            "Delivery attempts after the first, per Trigger or Subscription.",
            labels=["resource_kind", "namespace_name", "parent_name", "resource_name"],
        )
        for retry_labels, count in sorted(self.retries.items()):
            retries.add_metric(list(retry_labels), count)
        yield retries

    def _legacy_families(self) -> Iterator[Metric]:
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


def _counts(
    histogram: Histogram,
    name: str,
    documentation: str,
    label_names: list[str],
    select: Callable[[tuple[str, ...]], tuple[str, ...] | None],
) -> CounterMetricFamily:
    """A counter family of ``histogram``'s observation counts (one record per event)."""
    family = CounterMetricFamily(name, documentation, labels=label_names)
    for labels, count in histogram.counts():
        values = select(labels)
        if values is not None:
            family.add_metric(list(values), count)
    return family
