"""Trace sampling of the span export (``broker/server/otlp.py``): a new trace is recorded at
the configured rate, a sender's sampled flag is followed, and an unrecorded trace still carries
a valid W3C context marked not sampled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import tracing
from broker.core.events import new_event
from broker.server.otlp import OtlpSpans, sampled, unrecorded_context

ROUTE = ("broker", "default", "default")
UNREACHABLE = "http://127.0.0.1:9/v1/traces"  # nothing is recorded, so nothing is sent


@pytest.fixture
def never() -> Iterator[OtlpSpans]:
    spans = OtlpSpans(UNREACHABLE, sample_rate=0.0)
    yield spans
    spans.provider.shutdown()


@given(st.integers(min_value=1, max_value=(1 << 128) - 1))
def test_an_unrecorded_context_is_valid_w3c_marked_not_sampled(trace_id: int) -> None:
    parent, state = unrecorded_context(trace_id)
    assert tracing.valid_traceparent(parent) and state is None
    assert tracing.trace_id(parent) == f"{trace_id:032x}" and not sampled(parent)


@pytest.mark.parametrize(
    ("flags", "expected"), [("00", False), ("01", True), ("02", False), ("03", True)]
)
def test_sampled_reads_bit_0_of_the_flags(flags: str, expected: bool) -> None:
    assert sampled(f"00-{'a' * 32}-{'b' * 16}-{flags}") is expected


def test_rate_zero_gives_a_new_trace_an_unrecorded_context_and_records_nothing(
    never: OtlpSpans,
) -> None:
    event = new_event(type="t", source="/s")
    end = never.ingress(ROUTE, event)
    end()
    context = tracing.context_of(event)
    assert context is not None and not sampled(context[0])
    # Its delivery attempts follow the trace's decision, with the same context.
    (parent, _), end_attempt = never.attempt(event, "http://127.0.0.1:9/", 1)
    end_attempt(202)
    assert parent == context[0]


def test_a_sender_sampled_trace_is_recorded_even_at_rate_zero(never: OtlpSpans) -> None:
    sender = f"00-{'4' * 32}-{'5' * 16}-01"
    event = new_event(type="t", source="/s", extensions={"traceparent": sender})
    never.ingress(ROUTE, event)()
    parent = tracing.context_of(event)
    assert parent is not None and parent[0] != sender  # cemesh's span is the parent now
    assert tracing.trace_id(parent[0]) == "4" * 32 and sampled(parent[0])


def test_a_sender_unsampled_trace_passes_through_unchanged_at_rate_one() -> None:
    spans = OtlpSpans(UNREACHABLE, sample_rate=1.0)
    try:
        sender = f"00-{'4' * 32}-{'5' * 16}-00"
        event = new_event(type="t", source="/s", extensions={"traceparent": sender})
        spans.ingress(ROUTE, event)()
        assert event.attributes["traceparent"] == sender
    finally:
        spans.provider.shutdown()


def test_rate_one_records_every_new_trace() -> None:
    spans = OtlpSpans(UNREACHABLE, sample_rate=1.0)
    try:
        assert all(spans._new_trace()[0] for _ in range(1000))
    finally:
        spans.provider.shutdown()


def test_a_rate_records_about_that_share_of_new_traces() -> None:
    spans = OtlpSpans(UNREACHABLE, sample_rate=0.25)
    try:
        recorded = sum(spans._new_trace()[0] for _ in range(20_000))
        assert 4_000 < recorded < 6_000  # 5,000 expected; the bounds are > 10 sigma wide
    finally:
        spans.provider.shutdown()
