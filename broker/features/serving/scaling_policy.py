"""One Revision's autoscaling policy, resolved from its ``autoscaling.knative.dev/*`` annotations.

Owns :class:`ScalingPolicy` and :func:`policy_from_annotations` (Knative's
``pkg/apis/autoscaling/annotation_validation.go``, ``pkg/reconciler/autoscaling/resources/
target.go`` ``ResolveMetricTarget`` and ``kpa/resources/decider.go`` ``MakeDecider``), and
:func:`initial_replicas`. Annotation parsing is a table, :data:`ANNOTATIONS`: one row per
annotation with its names (new, then legacy camelCase) and its parser, which applies Knative's
bounds; the resolution of the parsed values against the ``config-autoscaler`` defaults
(:mod:`broker.features.serving.scaling_config`) follows it. Pure: bad values raise
:class:`~broker.core.errors.InvalidResource` naming the annotation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.core.errors import InvalidResource
from broker.features.serving.scaling_config import (
    ANNOTATION_PREFIX,
    HPA_CLASS,
    INT_RE,
    KPA_CLASS,
    PANIC_THRESHOLD_PERCENTAGE_MAX,
    PANIC_THRESHOLD_PERCENTAGE_MIN,
    PANIC_WINDOW_PERCENTAGE_MAX,
    PANIC_WINDOW_PERCENTAGE_MIN,
    RPS_TARGET_UTILIZATION,
    TARGET_MIN,
    WINDOW_MAX,
    WINDOW_MIN,
    AutoscalerDefaults,
    Metric,
    fmt_seconds,
    parse_float,
    parse_go_duration,
    parse_int,
    whole_seconds,
)


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """One Revision's resolved autoscaling policy (Knative's DeciderSpec + PA scale bounds).

    ``target`` is the per-replica metric value before utilization (Knative's "total":
    containerConcurrency, the ``target`` annotation, or the default); the autoscaler aims at
    ``target_value = max(0.01, target * utilization)``. Times are seconds; ``panic_threshold`` is
    a ratio (2.0 = 200 %); ``max_scale`` 0 = unbounded; ``container_concurrency`` 0 = unlimited;
    ``target_burst_capacity`` -1 = unlimited (activator always in the path), 0 = none.
    """

    metric: Metric
    target: float
    utilization: float
    stable_window: float
    panic_window: float
    panic_threshold: float
    min_scale: int
    max_scale: int
    initial_scale: int
    activation_scale: int
    max_scale_up_rate: float
    max_scale_down_rate: float
    scale_to_zero_grace_period: float
    scale_to_zero_pod_retention_period: float
    enable_scale_to_zero: bool
    container_concurrency: int
    target_burst_capacity: float = 211
    scale_down_delay: float = 0.0

    @property
    def target_value(self) -> float:
        """The metric value per replica the autoscaler aims at (Knative ``TargetValue``)."""
        return max(TARGET_MIN, self.target * self.utilization)


# ---------------------------------------------------------------------------------------------
# The annotation table
# ---------------------------------------------------------------------------------------------

# (text, field, defaults) -> the parsed value; raises InvalidResource(field, ...) when it is bad.
Parser = Callable[[str, str, AutoscalerDefaults], Any]
# Annotation name -> (the key found, its parsed value).
Parsed = dict[str, tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class Annotation:
    """One ``autoscaling.knative.dev/*`` annotation: its names and how its value is read."""

    names: tuple[str, ...]  # without the prefix; the first present wins (kmap.KeyPriority)
    parse: Parser
    # Run after this row, present or not: a rule across annotations read so far.
    then: Callable[[Parsed, AutoscalerDefaults, str], None] | None = None

    @property
    def name(self) -> str:
        return self.names[0]


def _number_in(low: float, high: float) -> Parser:
    """A number in [low, high] (Knative's percentage bounds)."""

    def parse(text: str, field: str, _defaults: AutoscalerDefaults) -> float:
        value = parse_float(text, field)
        if not low <= value <= high:
            raise InvalidResource(field, f"expected {low:g} <= {text} <= {high:g}")
        return value

    return parse


def _duration_in(low: float, high: float, *, whole: bool) -> Parser:
    """A Go duration in [low, high] seconds; with ``whole``, of at most second precision."""

    def parse(text: str, field: str, _defaults: AutoscalerDefaults) -> float:
        value = parse_go_duration(text, field)
        if not low <= value <= high:
            raise InvalidResource(
                field, f"expected {fmt_seconds(low)} <= {text} <= {fmt_seconds(high)}"
            )
        if whole and not whole_seconds(value):
            raise InvalidResource(field, "must be specified with at most second precision")
        return value

    return parse


def _count(minimum: int) -> Parser:
    def parse(text: str, field: str, _defaults: AutoscalerDefaults) -> int:
        return parse_int(text, field, minimum=minimum)

    return parse


def _class(text: str, field: str, _defaults: AutoscalerDefaults) -> str:
    if text != KPA_CLASS:
        what = "the Kubernetes HPA class" if text == HPA_CLASS else f"class {text!r}"
        raise InvalidResource(field, f"{what} is not supported: cemesh implements only {KPA_CLASS}")
    return text


def _metric(text: str, field: str, _defaults: AutoscalerDefaults) -> Metric:
    if text not in ("concurrency", "rps"):
        raise InvalidResource(
            field, f"invalid value {text!r}: the KPA scales on 'concurrency' or 'rps'"
        )
    return "concurrency" if text == "concurrency" else "rps"


def _aggregation(text: str, field: str, _defaults: AutoscalerDefaults) -> str:
    if text != "linear":
        raise InvalidResource(
            field, f"{text!r} is not supported: cemesh averages linearly ('linear')"
        )
    return text


def _target(text: str, field: str, _defaults: AutoscalerDefaults) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < TARGET_MIN:
        raise InvalidResource(field, f"target {text} should be at least {TARGET_MIN}")
    return value


def _burst_capacity(text: str, field: str, _defaults: AutoscalerDefaults) -> float:
    value = parse_float(text, field)
    if value < 0 and value != -1:
        raise InvalidResource(
            field, f"invalid value {text!r}: must be 0 or more, or -1 (unlimited)"
        )
    return value


def _max_scale(text: str, field: str, defaults: AutoscalerDefaults) -> int:
    value = parse_int(text, field)
    limit = defaults.max_scale_limit
    if limit > 0 and value == 0:
        raise InvalidResource(field, f"max-scale=0 (unlimited), must be less than {limit}")
    if limit > 0 and value > limit:
        raise InvalidResource(field, f"expected 1 <= {value} <= {limit}")
    return value


def _max_not_below_min(parsed: Parsed, defaults: AutoscalerDefaults, field: str) -> None:
    """validateMinMaxScale: a bounded max-scale is at least min-scale (annotated or default)."""
    min_scale = parsed["min-scale"][1] if "min-scale" in parsed else defaults.min_scale
    max_scale = parsed["max-scale"][1] if "max-scale" in parsed else defaults.max_scale
    if max_scale != 0 and max_scale < min_scale:
        min_key = parsed.get("min-scale", (ANNOTATION_PREFIX + "min-scale", None))[0]
        raise InvalidResource(
            f"{field}[{min_key}]", f"max-scale={max_scale} is less than min-scale={min_scale}"
        )


def _initial_scale(text: str, field: str, defaults: AutoscalerDefaults) -> int:
    if not INT_RE.fullmatch(text.strip()) or int(text) < 0:
        raise InvalidResource(field, f"invalid value {text!r}: must be an integer >= 0")
    value = int(text)
    if value == 0 and not defaults.allow_zero_initial_scale:
        raise InvalidResource(
            field,
            "invalid value '0': initial-scale 0 needs allow-zero-initial-scale: true "
            "in config-autoscaler",
        )
    return value


# Every annotation cemesh reads, in the order Knative validates them (the first bad one is
# reported). Others are ignored.
ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(("class",), _class),
    Annotation(("metric",), _metric),
    Annotation(("metric-aggregation-algorithm",), _aggregation),
    Annotation(("target",), _target),
    Annotation(
        ("target-utilization-percentage", "targetUtilizationPercentage"), _number_in(1, 100)
    ),
    Annotation(("target-burst-capacity", "targetBurstCapacity"), _burst_capacity),
    Annotation(("window",), _duration_in(WINDOW_MIN, WINDOW_MAX, whole=True)),
    Annotation(
        ("panic-window-percentage", "panicWindowPercentage"),
        _number_in(PANIC_WINDOW_PERCENTAGE_MIN, PANIC_WINDOW_PERCENTAGE_MAX),
    ),
    Annotation(
        ("panic-threshold-percentage", "panicThresholdPercentage"),
        _number_in(PANIC_THRESHOLD_PERCENTAGE_MIN, PANIC_THRESHOLD_PERCENTAGE_MAX),
    ),
    Annotation(("scale-down-delay", "scaleDownDelay"), _duration_in(0, WINDOW_MAX, whole=True)),
    Annotation(("scale-to-zero-pod-retention-period",), _duration_in(0, WINDOW_MAX, whole=False)),
    Annotation(("min-scale", "minScale"), _count(0)),
    Annotation(("max-scale", "maxScale"), _max_scale, then=_max_not_below_min),
    Annotation(("initial-scale", "initialScale"), _initial_scale),
    Annotation(("activation-scale",), _count(1)),
)


def parse_annotations(
    annotations: Mapping[str, str], defaults: AutoscalerDefaults, field: str
) -> Parsed:
    """Each present annotation of :data:`ANNOTATIONS` by name: (the key found, parsed value).

    Rows are read in order, each row's ``then`` rule right after it, so the first problem
    reported is the one Knative reports.
    """
    parsed: Parsed = {}
    for annotation in ANNOTATIONS:
        for name in annotation.names:
            key = ANNOTATION_PREFIX + name
            if key in annotations:
                value = annotation.parse(annotations[key], f"{field}[{key}]", defaults)
                parsed[annotation.name] = (key, value)
                break
        if annotation.then is not None:
            annotation.then(parsed, defaults, field)
    return parsed


# ---------------------------------------------------------------------------------------------
# Resolution against the defaults
# ---------------------------------------------------------------------------------------------


def policy_from_annotations(
    annotations: Mapping[str, str],
    *,
    container_concurrency: int,
    defaults: AutoscalerDefaults,
    field: str = "spec.template.metadata.annotations",
) -> ScalingPolicy:
    """Resolve a Revision's ``autoscaling.knative.dev/*`` annotations against ``defaults``.

    Annotation names and their legacy camelCase aliases are Knative's (:data:`ANNOTATIONS`);
    other annotations are ignored. Validation follows Knative's ``annotation_validation.go``; a
    bad value raises InvalidResource with field ``f"{field}[autoscaling.knative.dev/<name>]"``.
    The target resolves as :func:`_resolve_target` says.
    """
    if container_concurrency < 0:
        raise InvalidResource(
            "spec.template.spec.containerConcurrency",
            f"{container_concurrency} must be 0 (unlimited) or more",
        )
    parsed = parse_annotations(annotations, defaults, field)

    def get(name: str, default: Any) -> Any:
        found = parsed.get(name)
        return default if found is None else found[1]

    metric: Metric = get("metric", "concurrency")
    target, utilization = _resolve_target(
        metric, get("target", None), container_concurrency, defaults
    )
    percentage = get("target-utilization-percentage", None)
    if percentage is not None:
        utilization = percentage / 100.0
    min_scale: int = get("min-scale", defaults.min_scale)
    max_scale: int = get("max-scale", defaults.max_scale)
    stable_window: float = get("window", defaults.stable_window)
    panic_pct: float = get("panic-window-percentage", defaults.panic_window_percentage)
    threshold_pct: float = get("panic-threshold-percentage", defaults.panic_threshold_percentage)
    retention = defaults.scale_to_zero_pod_retention_period
    return ScalingPolicy(
        metric=metric,
        target=target,
        utilization=utilization,
        stable_window=stable_window,
        # Knative MakeMetric: the panic window is a share of the stable window, at least one
        # bucket (1 s).
        panic_window=max(1.0, round(stable_window * panic_pct / 100.0)),
        panic_threshold=threshold_pct / 100.0,
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=get("initial-scale", defaults.initial_scale),
        activation_scale=get("activation-scale", defaults.activation_scale),
        max_scale_up_rate=defaults.max_scale_up_rate,
        max_scale_down_rate=defaults.max_scale_down_rate,
        scale_to_zero_grace_period=defaults.scale_to_zero_grace_period,
        scale_to_zero_pod_retention_period=get("scale-to-zero-pod-retention-period", retention),
        enable_scale_to_zero=defaults.enable_scale_to_zero,
        container_concurrency=container_concurrency,
        target_burst_capacity=get("target-burst-capacity", defaults.target_burst_capacity),
        scale_down_delay=get("scale-down-delay", defaults.scale_down_delay),
    )


def _resolve_target(
    metric: Metric,
    annotated: float | None,
    container_concurrency: int,
    defaults: AutoscalerDefaults,
) -> tuple[float, float]:
    """(target, utilization) as Knative's ``ResolveMetricTarget``.

    For ``concurrency``: the ``target`` annotation (floored to containerConcurrency when that is
    set), else containerConcurrency, else ``container-concurrency-target-default``, at the
    configured utilization; for ``rps``: the annotation else
    ``requests-per-second-target-default``, at Knative's fixed rps utilization.
    """
    if metric == "rps":
        target = defaults.requests_per_second_target_default
        utilization = RPS_TARGET_UTILIZATION
    else:
        target = float(container_concurrency or defaults.container_concurrency_target_default)
        utilization = defaults.container_concurrency_target_percentage / 100.0
    if annotated is not None:
        target = annotated
        if metric == "concurrency" and container_concurrency:
            # Never aim higher than the replica can take (Knative floors to containerConcurrency).
            target = min(annotated, float(container_concurrency))
    return target, utilization


def initial_replicas(policy: ScalingPolicy) -> int:
    """Replicas to start for a new Revision: initial-scale, raised to min-scale, capped at max.

    Knative creates the Deployment with initial-scale replicas and the PodAutoscaler raises it to
    min-scale on its first reconcile; cemesh starts the final number at once.
    """
    replicas = max(policy.initial_scale, policy.min_scale)
    if policy.max_scale:
        replicas = min(replicas, policy.max_scale)
    return replicas
