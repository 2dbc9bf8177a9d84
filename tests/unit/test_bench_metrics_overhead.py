"""The metrics-cost bench (bench/metrics_overhead.py) loads both sides equally often, in an order
that cancels a linear drift of the machine, and reports the cost as on over off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.metrics_overhead import _abba, summary


@given(st.integers(min_value=1, max_value=50))
def test_abba_order_gives_each_side_the_same_turns_and_the_same_mean_position(rounds: int) -> None:
    order = _abba(rounds)
    on = [i for i, side in enumerate(order) if side == "on"]
    off = [i for i, side in enumerate(order) if side == "off"]
    assert len(on) == len(off) == rounds
    if rounds % 2 == 0:  # whole ABBA groups: a linear drift moves both sides alike
        assert sum(on) == sum(off)


def test_the_cost_is_the_extra_cpu_per_event_of_the_side_with_metrics() -> None:
    rounds = {
        "on": [{"rate": 900.0, "cpu_us": 105.0}, {"rate": 950.0, "cpu_us": 103.0}],
        "off": [{"rate": 1000.0, "cpu_us": 100.0}, {"rate": 1000.0, "cpu_us": 100.0}],
    }
    result = summary(rounds)
    assert round(result["cpu_cost"], 3) == 0.04
    assert round(result["rate_cost"], 3) == 0.075
