"""KPA autoscaler decisions (broker/features/serving/autoscaler.py, metrics_window.py), on a fake
clock.

No requirement id covers autoscaling (docs/requirements.md), so these tests cite the Knative
Serving sources the behaviour is taken from: pkg/autoscaler/scaling/autoscaler.go (Scale),
pkg/reconciler/autoscaling/kpa/scaler.go (bounds, handleScaleToZero),
pkg/autoscaler/config/config.go (config-autoscaler), pkg/apis/autoscaling/annotation_validation.go
and pkg/reconciler/autoscaling/resources/target.go (annotations, ResolveMetricTarget).
Every time is an explicit ``now``; nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.errors import InvalidResource
from broker.features.serving.autoscaler import (
    AutoscalerDefaults,
    Decision,
    MetricWindow,
    ScalerState,
    ScalingPolicy,
    activation_replicas,
    decide,
    defaults_from_config_map,
    initial_replicas,
    parse_go_duration,
    policy_from_annotations,
    restarted_state,
)

A = "autoscaling.knative.dev/"
ANN_FIELD = "spec.template.metadata.annotations"


def make_policy(**overrides: object) -> ScalingPolicy:
    """Knative's default policy, with target_value 10 (target 10, utilization 100 %)."""
    base = policy_from_annotations({}, container_concurrency=0, defaults=AutoscalerDefaults())
    values: dict[str, object] = {"target": 10.0, "utilization": 1.0, **overrides}
    return dataclasses.replace(base, **values)  # type: ignore[arg-type]


def tick(
    policy: ScalingPolicy,
    state: ScalerState,
    *,
    ready: int,
    stable: float,
    panic: float | None = None,
    now: float = 1000.0,
) -> Decision:
    return decide(
        policy,
        state,
        ready_replicas=ready,
        stable=stable,
        panic=stable if panic is None else panic,
        now=now,
    )


# An established revision: active long ago, initial scale reached.
ACTIVE = ScalerState(active_since=0.0, initialized=True)


# --------------------------------------------------------------------------- config-autoscaler


def test_config_map_empty_gives_knative_defaults() -> None:
    d = defaults_from_config_map({})
    assert d == AutoscalerDefaults()
    assert d.container_concurrency_target_percentage == 70
    assert d.container_concurrency_target_default == 100
    assert d.requests_per_second_target_default == 200
    assert d.target_burst_capacity == 211
    assert d.stable_window == 60.0
    assert d.panic_window_percentage == 10.0
    assert d.panic_threshold_percentage == 200.0
    assert d.max_scale_up_rate == 1000.0
    assert d.max_scale_down_rate == 2.0
    assert d.enable_scale_to_zero is True
    assert d.scale_to_zero_grace_period == 30.0
    assert d.scale_to_zero_pod_retention_period == 0.0
    assert d.initial_scale == 1
    assert d.min_scale == 0
    assert d.max_scale == 0


def test_config_map_parses_knative_keys_and_go_durations() -> None:
    d = defaults_from_config_map(
        {
            "container-concurrency-target-percentage": "80",
            "container-concurrency-target-default": "50",
            "requests-per-second-target-default": "150",
            "target-burst-capacity": "-1",
            "stable-window": "2m",
            "panic-window-percentage": "20.0",
            "panic-threshold-percentage": "300",
            "max-scale-up-rate": "10",
            "max-scale-down-rate": "4",
            "enable-scale-to-zero": "false",
            "scale-to-zero-grace-period": "45s",
            "scale-to-zero-pod-retention-period": "1m30s",
            "scale-down-delay": "15s",
            "allow-zero-initial-scale": "true",
            "initial-scale": "0",
            "min-scale": "1",
            "max-scale": "5",
            "max-scale-limit": "10",
            "activator-capacity": "100",  # read by Knative, unused by cemesh: accepted
            "_example": "a long comment block",  # unknown keys are ignored, as in Knative
        }
    )
    assert d == AutoscalerDefaults(
        container_concurrency_target_percentage=80.0,
        container_concurrency_target_default=50.0,
        requests_per_second_target_default=150.0,
        target_burst_capacity=-1.0,
        stable_window=120.0,
        panic_window_percentage=20.0,
        panic_threshold_percentage=300.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=4.0,
        enable_scale_to_zero=False,
        scale_to_zero_grace_period=45.0,
        scale_to_zero_pod_retention_period=90.0,
        scale_down_delay=15.0,
        allow_zero_initial_scale=True,
        initial_scale=0,
        min_scale=1,
        max_scale=5,
        max_scale_limit=10,
    )


def test_config_map_accepts_legacy_fraction_for_target_percentage() -> None:
    d = defaults_from_config_map({"container-concurrency-target-percentage": "0.8"})
    assert d.container_concurrency_target_percentage == pytest.approx(80.0)


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"stable-window": "5s"}, "stable-window", "[6s; 1h]"),
        ({"stable-window": "2h"}, "stable-window", "[6s; 1h]"),
        ({"stable-window": "60"}, "stable-window", "duration such as 60s"),
        ({"stable-window": "60.5s"}, "stable-window", "second precision"),
        ({"scale-to-zero-grace-period": "5s"}, "scale-to-zero-grace-period", "at least 6s"),
        ({"scale-to-zero-pod-retention-period": "-1s"}, "scale-to-zero-pod-retention-period", ""),
        ({"scale-down-delay": "1.5s"}, "scale-down-delay", "second precision"),
        ({"enable-scale-to-zero": "yes"}, "enable-scale-to-zero", "true or false"),
        ({"max-scale-up-rate": "1"}, "max-scale-up-rate", "greater than 1.0"),
        ({"max-scale-down-rate": "0.5"}, "max-scale-down-rate", "greater than 1.0"),
        ({"max-scale-up-rate": "fast"}, "max-scale-up-rate", "must be a number"),
        ({"panic-window-percentage": "0.5"}, "panic-window-percentage", "[1, 100]"),
        ({"panic-threshold-percentage": "100"}, "panic-threshold-percentage", "[110, 1000]"),
        ({"target-burst-capacity": "-2"}, "target-burst-capacity", "-1 (for unlimited)"),
        (
            {"container-concurrency-target-percentage": "150"},
            "container-concurrency-target-percentage",
            "(0, 100]",
        ),
        ({"requests-per-second-target-default": "0"}, "requests-per-second-target-default", ""),
        ({"initial-scale": "0"}, "initial-scale", "allow-zero-initial-scale"),
        ({"initial-scale": "one"}, "initial-scale", "integer"),
        ({"max-scale": "-1"}, "max-scale", "range"),
        ({"max-scale": "5", "max-scale-limit": "3"}, "max-scale", "max-scale-limit(3)"),
        ({"max-scale-limit": "3"}, "max-scale", "must be in [1,"),
        ({"min-scale": "3", "max-scale": "2"}, "min-scale", "between 0 and max-scale"),
        ({"pod-autoscaler-class": "hpa.autoscaling.knative.dev"}, "pod-autoscaler-class", "kpa"),
    ],
)
def test_config_map_rejects_bad_values_naming_the_key(
    data: dict[str, str], key: str, fragment: str
) -> None:
    with pytest.raises(InvalidResource) as info:
        defaults_from_config_map(data)
    assert info.value.field == f"data[{key}]"
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("1h2m3s", 3723.0),
        ("0", 0.0),
        ("+6s", 6.0),
        ("-1s", -1.0),
        ("1500us", 0.0015),
    ],
)
def test_go_durations_parse_as_knative_reads_them(text: str, seconds: float) -> None:
    assert parse_go_duration(text, "f") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "60", "s", "1x", "PT60S", "1m 30s", "--1s"])
def test_go_durations_reject_other_texts(text: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_go_duration(text, "f")
    assert info.value.field == "f"


# --------------------------------------------------------------------------- annotations


def test_annotations_absent_resolve_to_knative_defaults() -> None:
    p = policy_from_annotations({}, container_concurrency=0, defaults=AutoscalerDefaults())
    assert p.metric == "concurrency"
    assert p.target == 100.0  # container-concurrency-target-default
    assert p.utilization == pytest.approx(0.7)
    assert p.target_value == pytest.approx(70.0)
    assert p.stable_window == 60.0
    assert p.panic_window == 6.0  # 10 % of 60 s
    assert p.panic_threshold == 2.0
    assert (p.min_scale, p.max_scale, p.initial_scale, p.activation_scale) == (0, 0, 1, 1)
    assert p.target_burst_capacity == 211
    assert p.enable_scale_to_zero is True
    assert p.scale_to_zero_grace_period == 30.0
    assert p.container_concurrency == 0


@pytest.mark.parametrize(
    ("annotations", "cc", "metric", "target", "utilization"),
    [
        # containerConcurrency is the target when no target annotation is given.
        ({}, 10, "concurrency", 10.0, 0.7),
        # A target annotation above containerConcurrency is floored to it.
        ({A + "target": "50"}, 10, "concurrency", 10.0, 0.7),
        ({A + "target": "5"}, 10, "concurrency", 5.0, 0.7),
        ({A + "target": "5"}, 0, "concurrency", 5.0, 0.7),
        ({A + "target-utilization-percentage": "50"}, 0, "concurrency", 100.0, 0.5),
        ({A + "targetUtilizationPercentage": "90"}, 0, "concurrency", 100.0, 0.9),  # legacy
        ({A + "metric": "rps"}, 10, "rps", 200.0, 0.7),
        ({A + "metric": "rps", A + "target": "30"}, 10, "rps", 30.0, 0.7),
        ({A + "class": "kpa.autoscaling.knative.dev"}, 0, "concurrency", 100.0, 0.7),
    ],
)
def test_annotations_resolve_target_like_ResolveMetricTarget(
    annotations: dict[str, str], cc: int, metric: str, target: float, utilization: float
) -> None:
    p = policy_from_annotations(
        annotations, container_concurrency=cc, defaults=AutoscalerDefaults()
    )
    assert p.metric == metric
    assert p.target == pytest.approx(target)
    assert p.utilization == pytest.approx(utilization)


def test_annotations_set_windows_bounds_and_delays() -> None:
    p = policy_from_annotations(
        {
            A + "window": "2m",
            A + "panic-window-percentage": "20",
            A + "panic-threshold-percentage": "150",
            A + "minScale": "2",  # legacy camelCase alias
            A + "max-scale": "8",
            A + "initial-scale": "3",
            A + "activation-scale": "4",
            A + "scale-down-delay": "30s",
            A + "scale-to-zero-pod-retention-period": "1m",
            A + "target-burst-capacity": "-1",
            A + "metric-aggregation-algorithm": "linear",
            "unrelated.example.com/x": "ignored",
        },
        container_concurrency=0,
        defaults=AutoscalerDefaults(),
    )
    assert p.stable_window == 120.0
    assert p.panic_window == 24.0
    assert p.panic_threshold == 1.5
    assert (p.min_scale, p.max_scale, p.initial_scale, p.activation_scale) == (2, 8, 3, 4)
    assert p.scale_down_delay == 30.0
    assert p.scale_to_zero_pod_retention_period == 60.0
    assert p.target_burst_capacity == -1


def test_annotation_initial_scale_zero_needs_allow_zero_initial_scale() -> None:
    allowed = AutoscalerDefaults(allow_zero_initial_scale=True)
    p = policy_from_annotations(
        {A + "initial-scale": "0"}, container_concurrency=0, defaults=allowed
    )
    assert p.initial_scale == 0


@pytest.mark.parametrize(
    ("annotations", "key", "fragment"),
    [
        ({A + "class": "hpa.autoscaling.knative.dev"}, "class", "HPA class is not supported"),
        ({A + "class": "custom.example.com"}, "class", "only kpa.autoscaling.knative.dev"),
        ({A + "metric": "cpu"}, "metric", "'concurrency' or 'rps'"),
        ({A + "target": "0"}, "target", "at least 0.01"),
        ({A + "target": "many"}, "target", "at least 0.01"),
        ({A + "target-utilization-percentage": "0"}, "target-utilization-percentage", "1 <="),
        ({A + "target-utilization-percentage": "101"}, "target-utilization-percentage", "100"),
        ({A + "target-burst-capacity": "-5"}, "target-burst-capacity", "-1 (unlimited)"),
        ({A + "window": "5s"}, "window", "expected 6s <= 5s <= 1h"),
        ({A + "window": "2h"}, "window", "<= 1h"),
        ({A + "window": "60.5s"}, "window", "second precision"),
        ({A + "window": "sixty"}, "window", "duration such as 60s"),
        ({A + "panic-window-percentage": "0.5"}, "panic-window-percentage", "1 <= 0.5 <= 100"),
        ({A + "panic-window-percentage": "101"}, "panic-window-percentage", "<= 100"),
        ({A + "panicThresholdPercentage": "105"}, "panicThresholdPercentage", "110 <= 105"),
        ({A + "panic-threshold-percentage": "1001"}, "panic-threshold-percentage", "<= 1000"),
        ({A + "min-scale": "-1"}, "min-scale", "expected 0 <= -1"),
        ({A + "min-scale": "x"}, "min-scale", "must be an integer"),
        ({A + "max-scale": "2.5"}, "max-scale", "must be an integer"),
        (
            {A + "min-scale": "3", A + "max-scale": "2"},
            "min-scale",
            "max-scale=2 is less than min-scale=3",
        ),
        ({A + "initial-scale": "0"}, "initial-scale", "allow-zero-initial-scale"),
        ({A + "initial-scale": "-1"}, "initial-scale", "integer >= 0"),
        ({A + "activation-scale": "0"}, "activation-scale", "expected 1 <= 0"),
        ({A + "scale-down-delay": "2h"}, "scale-down-delay", "0s <= 2h <= 1h"),
        ({A + "scale-down-delay": "1.5s"}, "scale-down-delay", "second precision"),
        (
            {A + "scale-to-zero-pod-retention-period": "-1s"},
            "scale-to-zero-pod-retention-period",
            "0s <= -1s <= 1h",
        ),
        (
            {A + "metric-aggregation-algorithm": "weightedExponential"},
            "metric-aggregation-algorithm",
            "'linear'",
        ),
    ],
)
def test_annotations_reject_bad_values_naming_the_annotation(
    annotations: dict[str, str], key: str, fragment: str
) -> None:
    with pytest.raises(InvalidResource) as info:
        policy_from_annotations(annotations, container_concurrency=0, defaults=AutoscalerDefaults())
    assert info.value.field == f"{ANN_FIELD}[{A}{key}]"
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    ("max_scale", "fragment"), [("0", "max-scale=0 (unlimited)"), ("11", "1 <= 11 <= 10")]
)
def test_annotation_max_scale_respects_max_scale_limit(max_scale: str, fragment: str) -> None:
    defaults = AutoscalerDefaults(max_scale=5, max_scale_limit=10)
    with pytest.raises(InvalidResource) as info:
        policy_from_annotations(
            {A + "max-scale": max_scale}, container_concurrency=0, defaults=defaults
        )
    assert info.value.field == f"{ANN_FIELD}[{A}max-scale]"
    assert fragment in info.value.reason


def test_annotation_errors_use_the_callers_field_path() -> None:
    with pytest.raises(InvalidResource) as info:
        policy_from_annotations(
            {A + "window": "1s"},
            container_concurrency=0,
            defaults=AutoscalerDefaults(),
            field="metadata.annotations",
        )
    assert info.value.field == f"metadata.annotations[{A}window]"


# --------------------------------------------------------------------------- metric window


def test_window_constant_load_averages_to_that_load() -> None:
    policy = make_policy()
    window = MetricWindow()
    for t in range(100):
        window.record(t + 0.5, concurrency=5.0, requests=3)
    assert window.averages(99.5, policy) == pytest.approx((5.0, 5.0))
    rps = dataclasses.replace(policy, metric="rps")
    assert window.averages(99.5, rps) == pytest.approx((3.0, 3.0))


def test_window_new_revision_is_not_diluted_by_the_empty_past() -> None:
    window = MetricWindow()
    for t in (0.1, 1.1, 2.1):
        window.record(t, concurrency=10.0, requests=1)
    assert window.averages(2.1, make_policy()) == pytest.approx((10.0, 10.0))


def test_window_step_load_shows_in_panic_window_before_stable_window() -> None:
    window = MetricWindow()
    for t in range(60):
        window.record(t, concurrency=0.0, requests=0)
    for t in range(60, 66):
        window.record(t, concurrency=30.0, requests=0)
    stable, panic = window.averages(65, make_policy())  # panic window 6 s, stable 60 s
    assert panic == pytest.approx(30.0)
    assert stable == pytest.approx(30.0 * 6 / 60)


def test_window_samples_in_one_second_average_concurrency_and_sum_requests() -> None:
    window = MetricWindow()
    window.record(10.1, concurrency=2.0, requests=4)
    window.record(10.9, concurrency=4.0, requests=6)
    assert window.average(10.9, 60, "concurrency") == pytest.approx(3.0)
    assert window.average(10.9, 60, "rps") == pytest.approx(10.0)


def test_window_is_zero_after_a_whole_window_without_samples() -> None:
    window = MetricWindow()
    window.record(0, concurrency=50.0, requests=50)
    assert window.average(59, 60, "concurrency") == pytest.approx(50.0)
    assert window.average(60, 60, "concurrency") == 0.0
    assert MetricWindow().averages(0, make_policy()) == (0.0, 0.0)


def test_window_drops_samples_older_than_the_window() -> None:
    window = MetricWindow()
    window.record(0, concurrency=100.0, requests=0)
    for t in range(1, 70):
        window.record(t, concurrency=1.0, requests=0)
    assert window.average(69, 60, "concurrency") == pytest.approx(1.0)


def test_window_rejects_negative_samples() -> None:
    with pytest.raises(ValueError):
        MetricWindow().record(0, concurrency=-1.0, requests=0)


# --------------------------------------------------------------------------- decide: stable mode


@pytest.mark.parametrize(
    ("overrides", "ready", "stable", "panic", "desired"),
    [
        # desired = ceil(observed / (target * utilization))
        ({}, 2, 25.0, 25.0, 3),
        ({"target": 100.0, "utilization": 0.7}, 2, 140.0, 140.0, 2),
        ({"target": 100.0, "utilization": 0.7}, 2, 141.0, 141.0, 3),
        # scale from zero: ready counts as 1
        ({}, 0, 5.0, 5.0, 1),
        # max scale-down rate 2: at most halve the ready replicas per tick
        ({}, 4, 0.5, 0.5, 2),
        ({}, 10, 0.0, 0.0, 5),
        ({"max_scale_down_rate": 4.0}, 10, 0.0, 0.0, 2),
        # max scale-up rate: at most ready * rate (rounded up)
        ({"max_scale_up_rate": 2.0}, 2, 100.0, 30.0, 4),
        ({"max_scale_up_rate": 1.1}, 2, 30.0, 20.0, 3),
    ],
)
def test_stable_desired_is_ceil_of_observed_over_target_within_rate_limits(
    overrides: dict[str, object], ready: int, stable: float, panic: float, desired: int
) -> None:
    d = tick(make_policy(**overrides), ACTIVE, ready=ready, stable=stable, panic=panic)
    assert d.desired == desired
    assert d.panic is False
    assert d.reason.startswith("stable")


def test_stable_reason_names_observed_target_and_result() -> None:
    d = tick(make_policy(), ACTIVE, ready=2, stable=12.3)
    assert d.reason == "stable 12.3 concurrency / target 10 -> 2"
    rps = tick(make_policy(metric="rps"), ACTIVE, ready=2, stable=12.3)
    assert rps.reason == "stable 12.3 req/s / target 10 -> 2"


# --------------------------------------------------------------------------- decide: panic mode


@pytest.mark.parametrize(
    ("ready", "panic_value", "threshold", "panicking"),
    [
        (2, 40.0, 2.0, True),  # ceil(40/10)=4; 4/2 = 2.0 >= 200 %
        (2, 30.0, 2.0, False),  # 3/2 = 1.5
        (2, 30.0, 1.5, True),  # panic-threshold-percentage 150
        (0, 20.0, 2.0, True),  # at zero ready counts as 1: 2/1
    ],
)
def test_panic_starts_when_panic_desired_over_ready_reaches_threshold(
    ready: int, panic_value: float, threshold: float, panicking: bool
) -> None:
    policy = make_policy(panic_threshold=threshold)
    d = tick(policy, ACTIVE, ready=ready, stable=1.0, panic=panic_value, now=500.0)
    assert d.panic is panicking
    assert (d.state.panic_since == 500.0) is panicking
    if panicking:
        assert d.reason.startswith("panic:")


def test_step_load_scales_up_within_the_panic_window() -> None:
    """A jump from 10 to 100 in flight (target 10) reaches 10 replicas within the 6 s panic
    window, long before the 60 s stable window would."""
    policy = make_policy()
    window = MetricWindow()
    state, ready = ACTIVE, 1
    for t in range(60):
        window.record(t, concurrency=10.0, requests=0)
        stable, panic = window.averages(t, policy)
        d = decide(policy, state, ready_replicas=ready, stable=stable, panic=panic, now=t)
        state, ready = d.state, d.desired
    assert ready == 1 and not d.panic
    reached = None
    for t in range(60, 66):
        window.record(t, concurrency=100.0, requests=0)
        stable, panic = window.averages(t, policy)
        d = decide(policy, state, ready_replicas=ready, stable=stable, panic=panic, now=t)
        assert d.panic
        state, ready = d.state, d.desired
        if ready >= 10 and reached is None:
            reached = t
    assert reached is not None and reached - 60 < policy.panic_window
    # The stable average alone would still ask for far fewer replicas.
    assert stable < 30.0


def test_panic_never_scales_down_and_holds_the_highest_count() -> None:
    policy = make_policy()
    state = ScalerState(
        panic_since=100.0, max_panic_replicas=10, active_since=0.0, initialized=True
    )
    d = tick(policy, state, ready=10, stable=5.0, panic=5.0, now=110.0)
    assert d.panic is True
    assert d.desired == 10
    assert "holding 10" in d.reason
    # Still over the threshold and higher: the count rises and the new high is remembered.
    d = tick(policy, d.state, ready=10, stable=50.0, panic=300.0, now=111.0)
    assert d.desired == 30 and d.state.max_panic_replicas == 30 and d.state.panic_since == 111.0


def test_panic_ends_a_stable_window_after_the_condition_last_held() -> None:
    policy = make_policy()  # stable window 60 s
    state = ScalerState(
        panic_since=100.0, max_panic_replicas=10, active_since=0.0, initialized=True
    )
    held = tick(policy, state, ready=10, stable=5.0, panic=5.0, now=160.0)
    assert (
        held.panic is True and held.desired == 10
    )  # Knative: panicTime+window must be Before(now)
    ended = tick(policy, state, ready=10, stable=5.0, panic=5.0, now=160.5)
    assert ended.panic is False
    assert ended.state.panic_since is None and ended.state.max_panic_replicas == 0
    assert ended.desired == 5  # back to stable mode, limited by the scale-down rate (10 / 2)


def test_restarted_scaler_starts_in_panic_to_keep_the_current_scale() -> None:
    state = restarted_state(ready_replicas=4, now=0.0)
    assert state.panic_since == 0.0 and state.max_panic_replicas == 4
    d = tick(make_policy(), state, ready=4, stable=0.0, now=1.0)
    assert d.desired == 4 and d.panic
    assert restarted_state(ready_replicas=1, now=0.0).panic_since is None


# --------------------------------------------------------------------------- decide: bounds


@pytest.mark.parametrize(
    ("overrides", "ready", "stable", "desired", "fragment"),
    [
        ({"min_scale": 2}, 2, 0.0, 2, "min-scale 2"),
        ({"min_scale": 3}, 1, 5.0, 3, "min-scale 3"),
        ({"max_scale": 3}, 3, 100.0, 3, "max-scale 3"),
        ({"max_scale": 0}, 3, 100.0, 10, "stable"),  # 0 = unbounded
    ],
)
def test_min_and_max_scale_clamp_the_desired_count(
    overrides: dict[str, object], ready: int, stable: float, desired: int, fragment: str
) -> None:
    d = tick(make_policy(**overrides), ACTIVE, ready=ready, stable=stable, panic=0.0)
    assert d.desired == desired
    assert fragment in d.reason


def test_max_scale_caps_panic_too() -> None:
    d = tick(make_policy(max_scale=4), ACTIVE, ready=2, stable=10.0, panic=200.0)
    assert d.panic and d.desired == 4


def test_initial_scale_is_a_floor_until_first_reached() -> None:
    policy = make_policy(initial_scale=3)
    d = tick(policy, ScalerState(), ready=0, stable=0.0, now=0.0)
    assert d.desired == 3 and "initial-scale 3" in d.reason
    assert not d.state.initialized
    d = tick(policy, d.state, ready=3, stable=0.0, now=1.0)
    assert d.state.initialized
    assert d.desired == 1  # no traffic: scale down at the max scale-down rate (3 / 2)


def test_activation_scale_applies_when_scaling_up_from_zero() -> None:
    policy = make_policy(activation_scale=3)
    assert tick(policy, ACTIVE, ready=0, stable=1.0).desired == 3
    assert tick(policy, ACTIVE, ready=0, stable=50.0, panic=50.0).desired == 5
    # With no traffic activation-scale does not keep replicas up.
    assert tick(policy, ACTIVE, ready=1, stable=0.0).desired == 1  # held only by the idle rule


def test_scale_down_delay_keeps_the_highest_recent_count() -> None:
    policy = make_policy(scale_down_delay=10.0)
    state = ACTIVE
    d = tick(policy, state, ready=5, stable=50.0, panic=50.0, now=100.0)
    assert d.desired == 5
    d = tick(policy, d.state, ready=5, stable=10.0, panic=10.0, now=105.0)
    assert d.desired == 5 and "scale-down delayed" in d.reason
    d = tick(policy, d.state, ready=5, stable=10.0, panic=10.0, now=110.5)
    # The 5 left the 10 s window; ceil(10/10)=1, limited by the scale-down rate to 5/2 -> 2.
    assert d.desired == 2 and "delayed" not in d.reason


# --------------------------------------------------------------------------- decide: to zero


def test_quiet_revision_goes_to_zero_only_after_the_grace_period() -> None:
    policy = make_policy()  # grace 30 s
    d = tick(policy, ACTIVE, ready=1, stable=0.0, now=100.0)
    assert d.desired == 1 and "grace period (0s of 30s)" in d.reason
    assert d.state.inactive_since == 100.0
    d = tick(policy, d.state, ready=1, stable=0.0, now=129.0)
    assert d.desired == 1
    d = tick(policy, d.state, ready=1, stable=0.0, now=130.0)
    assert d.desired == 0 and d.reason.startswith("scale to zero after grace period")
    # The replica may take a tick to stop: the decision stays zero.
    d = tick(policy, d.state, ready=1, stable=0.0, now=131.0)
    assert d.desired == 0
    d = tick(policy, d.state, ready=0, stable=0.0, now=132.0)
    assert d.desired == 0 and d.reason == "at zero, no traffic"
    assert d.state.active_since is None


def test_pod_retention_period_longer_than_grace_delays_zero() -> None:
    policy = make_policy(scale_to_zero_pod_retention_period=90.0)
    d = tick(policy, ACTIVE, ready=1, stable=0.0, now=100.0)
    d = tick(policy, d.state, ready=1, stable=0.0, now=130.0)
    assert d.desired == 1
    d = tick(policy, d.state, ready=1, stable=0.0, now=190.0)
    assert d.desired == 0


def test_traffic_during_grace_cancels_scale_to_zero() -> None:
    policy = make_policy()
    d = tick(policy, ACTIVE, ready=1, stable=0.0, now=100.0)
    d = tick(policy, d.state, ready=1, stable=0.2, now=120.0)
    assert d.desired == 1 and d.state.inactive_since is None and d.state.last_active == 120.0
    d = tick(policy, d.state, ready=1, stable=0.0, now=140.0)
    assert d.desired == 1  # the grace period starts again at 140
    assert tick(policy, d.state, ready=1, stable=0.0, now=169.0).desired == 1
    assert tick(policy, d.state, ready=1, stable=0.0, now=170.0).desired == 0


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"enable_scale_to_zero": False}, "scale to zero disabled"),
        ({"min_scale": 1}, "min-scale 1"),
    ],
)
def test_no_scale_to_zero_when_disabled_or_min_scale_set(
    overrides: dict[str, object], fragment: str
) -> None:
    policy = make_policy(**overrides)
    state = ACTIVE
    for now in (100.0, 200.0, 1000.0):
        d = tick(policy, state, ready=1, stable=0.0, now=now)
        state = d.state
        assert d.desired == 1
        assert fragment in d.reason


def test_revision_is_kept_for_a_stable_window_after_activation() -> None:
    """Knative marks a PA inactive only after it was active for the stable window."""
    policy = make_policy()
    d = tick(policy, ScalerState(), ready=0, stable=0.0, now=0.0)  # new revision: initial 1
    assert d.desired == 1 and d.state.active_since == 0.0
    d = tick(policy, d.state, ready=1, stable=0.0, now=30.0)
    assert d.desired == 1 and "stable window (30s of 60s)" in d.reason
    assert d.state.inactive_since is None
    d = tick(policy, d.state, ready=1, stable=0.0, now=60.0)
    assert d.desired == 1 and d.state.inactive_since == 60.0
    assert tick(policy, d.state, ready=1, stable=0.0, now=90.0).desired == 0


def test_allow_zero_initial_scale_starts_and_stays_at_zero() -> None:
    policy = make_policy(initial_scale=0)
    assert initial_replicas(policy) == 0
    d = tick(policy, ScalerState(), ready=0, stable=0.0, now=0.0)
    assert d.desired == 0


def test_quiet_period_end_to_end_with_metric_window() -> None:
    """Last request at t=9: the stable average reaches 0 a stable window later, then the grace
    period runs, then zero (Knative: stable window + grace after the last request)."""
    policy = make_policy()
    window = MetricWindow()
    state, ready = ScalerState(), 1
    zero_at = None
    for t in range(200):
        window.record(t, concurrency=3.0 if t < 10 else 0.0, requests=3 if t < 10 else 0)
        stable, panic = window.averages(t, policy)
        d = decide(policy, state, ready_replicas=ready, stable=stable, panic=panic, now=t)
        state, ready = d.state, d.desired
        if ready == 0:
            zero_at = t
            break
    # The 60 s window ending at t=69 no longer holds t=9: inactive at 69, zero 30 s later.
    assert zero_at == 9 + 60 + 30


# --------------------------------------------------------------------------- burst capacity


@pytest.mark.parametrize(
    ("tbc", "ready", "panic", "ebc"),
    [
        (211.0, 30, 50.0, 39.0),  # floor(30*10 - 211 - 50)
        (211.0, 0, 0.0, -211.0),  # at zero: the activator must stay in the path
        (20.0, 3, 5.5, 4.0),  # floor(30 - 20 - 5.5)
        (0.0, 30, 50.0, 0.0),  # 0: no burst capacity wanted
        (-1.0, 30, 50.0, -1.0),  # -1: unlimited, activator always in the path
    ],
)
def test_excess_burst_capacity_as_knative_computes_it(
    tbc: float, ready: int, panic: float, ebc: float
) -> None:
    policy = make_policy(target_burst_capacity=tbc, utilization=0.7)
    d = tick(policy, ACTIVE, ready=ready, stable=panic, panic=panic)
    assert d.excess_burst_capacity == ebc


# --------------------------------------------------------------------------- initial replicas


@pytest.mark.parametrize(
    ("overrides", "replicas"),
    [
        ({}, 1),
        ({"initial_scale": 3}, 3),
        ({"min_scale": 4}, 4),
        ({"initial_scale": 5, "max_scale": 2}, 2),
        ({"initial_scale": 0}, 0),
    ],
)
def test_initial_replicas(overrides: dict[str, object], replicas: int) -> None:
    assert initial_replicas(make_policy(**overrides)) == replicas


def test_decide_rejects_negative_inputs() -> None:
    with pytest.raises(ValueError):
        tick(make_policy(), ACTIVE, ready=-1, stable=0.0)


# --------------------------------------------------------------------------- activation at zero


@pytest.mark.parametrize(
    ("concurrency", "waiting", "expected"),
    [
        (4, 20, 5),  # a burst of 20 at containerConcurrency 4 needs 5 replicas at once
        (4, 21, 6),  # rounded up: no request left queueing behind a full replica
        (1, 3, 3),
        (4, 1, 1),
        (0, 500, 1),  # containerConcurrency 0 (unlimited): one replica takes them all
        (4, 0, 1),  # woken with nobody waiting any more: still at least one
    ],
)
def test_a_burst_at_zero_starts_ceil_waiting_over_container_concurrency_replicas(
    concurrency: int, waiting: int, expected: int
) -> None:
    policy = make_policy(container_concurrency=concurrency)
    assert activation_replicas(policy, waiting=waiting, decided=0) == expected


def test_activation_keeps_the_autoscaler_decision_and_activation_scale_when_higher() -> None:
    policy = make_policy(container_concurrency=10, activation_scale=3)
    assert activation_replicas(policy, waiting=5, decided=0) == 3
    assert activation_replicas(policy, waiting=5, decided=7) == 7


def test_activation_never_exceeds_max_scale() -> None:
    policy = make_policy(container_concurrency=1, max_scale=4)
    assert activation_replicas(policy, waiting=100, decided=0) == 4


def test_activation_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="zero or more"):
        activation_replicas(make_policy(), waiting=-1, decided=0)


@given(
    concurrency=st.integers(0, 1000),
    waiting=st.integers(0, 10_000),
    decided=st.integers(0, 100),
    max_scale=st.integers(0, 50),
)
def test_activation_serves_every_waiting_request_within_max_scale(
    concurrency: int, waiting: int, decided: int, max_scale: int
) -> None:
    """Enough slots for all waiting requests (unless max-scale caps it), never zero."""
    policy = make_policy(container_concurrency=concurrency, max_scale=max_scale)
    replicas = activation_replicas(policy, waiting=waiting, decided=decided)
    assert replicas >= 1
    if max_scale:
        assert replicas <= max(max_scale, 1)
    needed = math.ceil(waiting / concurrency) if concurrency else 1
    assert replicas >= min(max(needed, decided), max_scale or needed + decided)
