"""Metric label rules (broker/core/metrics.py): whatever event types senders make up, the
``event_type`` label takes at most ``limit`` values besides ``other``, a type once admitted stays
itself, and histogram series count each observation once in the right bucket."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core.metrics import (
    MAX_EVENT_TYPE_LENGTH,
    OTHER_EVENT_TYPE,
    EventTypeLabels,
    Histogram,
    response_code_class,
)


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
