"""Metric label rules (broker/core/metrics.py): whatever event types senders make up, the
``event_type`` label takes at most ``limit`` values besides ``other``, a type once admitted stays
itself, histogram series count each observation once in the right bucket, and the meters the
ingress and the dispatcher record through give the same series as observing each event with its
labels, with caches no larger than the admitted event types."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core.metrics import (
    MAX_EVENT_TYPE_LENGTH,
    OTHER_EVENT_TYPE,
    EventTypeLabels,
    Histogram,
    Metrics,
    response_code_class,
)

ROUTE = ("broker", "ns", "default")
TRIGGER = ("trigger", "ns", "default", "t1")


@given(st.lists(st.text(max_size=150)), st.integers(min_value=0, max_value=10))
def test_event_type_labels_stay_within_the_limit(types: list[str], limit: int) -> None:
    labels = EventTypeLabels(limit)
    seen = {labels(t) for t in types}
    assert len(seen - {OTHER_EVENT_TYPE}) <= limit
    for t in types:
        label = labels(t)
        assert label == OTHER_EVENT_TYPE or (label == t and len(t) <= MAX_EVENT_TYPE_LENGTH)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1))
def test_histogram_buckets_are_cumulative_and_count_every_observation(values: list[float]) -> None:
    histogram = Histogram((1, 10, 100))
    for value in values:
        histogram.observe(("a",), value)
    family = histogram.family("h", "doc", ["l"])
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    assert buckets["+Inf"] == len(values)
    assert buckets["1"] == sum(v <= 1 for v in values)
    assert buckets["10"] == sum(v <= 10 for v in values)
    assert [buckets[k] for k in ("1", "10", "100", "+Inf")] == sorted(buckets.values())


def test_response_code_classes() -> None:
    assert [response_code_class(c) for c in ("202", "404", "503", "none")] == [
        "2xx",
        "4xx",
        "5xx",
        "none",
    ]


@given(st.floats(min_value=0, max_value=1e6), st.integers(min_value=1, max_value=500))
def test_a_batch_observed_once_with_its_count_equals_one_observation_per_event(
    value: float, count: int
) -> None:
    once, each = Histogram((1, 10, 100)), Histogram((1, 10, 100))
    once.observe(("a",), value, count)
    for _ in range(count):
        each.observe(("a",), value)
    assert once.series[("a",)][:-1] == each.series[("a",)][:-1]
    assert abs(once.series[("a",)][-1] - each.series[("a",)][-1]) <= 1e-6 * max(1.0, value * count)


_settled = st.tuples(
    st.sampled_from(["a", "b", "c", "d", "x" * 120]),
    st.sampled_from(["delivered", "dead_lettered", "dropped"]),
    st.sampled_from([202, 500, None]),
    st.floats(min_value=0, max_value=20),
)


@given(st.lists(_settled), st.integers(min_value=0, max_value=3))
def test_meters_record_what_observing_each_event_with_its_labels_records(
    deliveries: list[tuple[str, str, int | None, float]], limit: int
) -> None:
    metered, plain = Metrics(limit), Metrics(limit)
    ingress, delivery = metered.ingress_meter(ROUTE), metered.delivery_meter(TRIGGER)
    outcomes: dict[str, int] = {}
    for event_type, outcome, status, seconds in deliveries:
        ingress.accepted(event_type, seconds * 1000.0)
        delivery.settled(event_type, outcome, status, seconds)
        label, code = plain.event_type(event_type), "none" if status is None else str(status)
        plain.ingress_latency.observe((*ROUTE, label, "202"), seconds * 1000.0)
        plain.dispatch_latency.observe((*TRIGGER, label, code), seconds * 1000.0)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert metered.ingress_latency.series == plain.ingress_latency.series
    assert metered.dispatch_latency.series == plain.dispatch_latency.series
    assert delivery.outcomes == outcomes
    # Types reported as "other" are never cached: senders cannot grow a meter's memory.
    assert len(ingress._series) <= limit
    assert all(len(by_type) <= limit for by_type in delivery._series.values())


def test_a_meter_is_one_per_resource_and_its_outcomes_are_exposed_with_its_labels() -> None:
    metrics = Metrics()
    assert metrics.delivery_meter(TRIGGER) is metrics.delivery_meter(TRIGGER)
    assert metrics.ingress_meter(ROUTE) is metrics.ingress_meter(ROUTE)
    metrics.delivery_meter(TRIGGER).outcome("filtered")
    metrics.delivery_meter(TRIGGER).settled("a", "delivered", 202, 0.003)
    text = metrics.render().decode()
    assert (
        'cemesh_delivery_outcomes_total{namespace_name="ns",outcome="filtered",parent_name='
        '"default",resource_kind="trigger",resource_name="t1"} 1.0' in text
    )
    assert (
        'cemesh_broker_filter_event_count_total{broker_name="default",event_type="a",'
        'namespace_name="ns",response_code="202",response_code_class="2xx",trigger_name="t1"} 1.0'
    ) in text
