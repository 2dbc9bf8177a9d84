"""Knative's KPA autoscaler decisions as pure functions: policy in, desired replicas out.

Owns, for cemesh's function invoker:

- :class:`AutoscalerDefaults` / :func:`defaults_from_config_map`: Knative's ``config-autoscaler``
  ConfigMap with Knative's defaults and validation (``pkg/autoscaler/config/config.go``);
- :class:`ScalingPolicy` / :func:`policy_from_annotations`: one Revision's resolved policy from its
  ``autoscaling.knative.dev/*`` annotations (``pkg/apis/autoscaling/annotation_validation.go``,
  ``pkg/reconciler/autoscaling/resources/target.go`` ``ResolveMetricTarget``,
  ``pkg/reconciler/autoscaling/kpa/resources/decider.go`` ``MakeDecider``);
- :func:`decide`: one autoscaler tick, i.e. Knative's ``pkg/autoscaler/scaling/autoscaler.go``
  ``Scale`` (stable/panic desired counts, rate limits, panic mode, scale-down delay, excess burst
  capacity) followed by ``pkg/reconciler/autoscaling/kpa/scaler.go`` ``scale`` /
  ``handleScaleToZero`` (min/max/initial bounds, scale to zero after the grace period);
- :func:`initial_replicas`, :func:`restarted_state`.

:class:`~broker.serving.metrics_window.MetricWindow` (re-exported here) turns per-tick samples
into the stable and panic averages :func:`decide` takes.

Nothing here reads a clock or does I/O: every time is an explicit ``now`` in seconds, and the
scaler's memory is the immutable :class:`ScalerState` passed in and returned, so tests drive a
fake clock and the invoker owns the loop. Bad values raise
:class:`~broker.errors.InvalidResource` naming the annotation or ConfigMap key.

Deliberate differences from Knative (cemesh has no Kubernetes Service/SKS in the path):
the activator is taken to be always in the request path, so the "probe the activator" step of
``handleScaleToZero`` is not modelled; ``hpa.autoscaling.knative.dev`` and custom classes are
rejected instead of handed to another autoscaler; only linear metric aggregation is supported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from broker.durations import MAX_DURATION_SECONDS, MAX_DURATION_YEARS
from broker.errors import InvalidResource
from broker.serving.metrics_window import MetricWindow

__all__ = [
    "ANNOTATION_PREFIX",
    "KPA_CLASS",
    "AutoscalerDefaults",
    "Decision",
    "MetricWindow",
    "ScalerState",
    "ScalingPolicy",
    "decide",
    "defaults_from_config_map",
    "initial_replicas",
    "parse_go_duration",
    "policy_from_annotations",
    "restarted_state",
]

Metric = Literal["concurrency", "rps"]

ANNOTATION_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
HPA_CLASS = "hpa.autoscaling.knative.dev"

# Knative's validation bounds (pkg/apis/autoscaling/register.go).
WINDOW_MIN = 6.0  # seconds
WINDOW_MAX = 3600.0
PANIC_WINDOW_PERCENTAGE_MIN = 1.0
PANIC_WINDOW_PERCENTAGE_MAX = 100.0
PANIC_THRESHOLD_PERCENTAGE_MIN = 110.0
PANIC_THRESHOLD_PERCENTAGE_MAX = 1000.0
TARGET_MIN = 0.01
# Knative's Config.TargetUtilization: the utilization for metrics other than concurrency, not
# settable in config-autoscaler (only per revision with target-utilization-percentage).
RPS_TARGET_UTILIZATION = 0.7
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Value parsing shared by the ConfigMap and the annotations (Go's strconv / time.ParseDuration)
# ---------------------------------------------------------------------------------------------

_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Longest units first inside the alternation so "ms" is not read as "m" + "s".
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_INT_RE = re.compile(r"[+-]?\d+")
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_duration(text: str, field: str) -> float:
    """Seconds in a Go duration (``60s``, ``1m30s``, ``1.5h``, ``500ms``, ``0``).

    Knative's annotations and ConfigMap use Go's ``time.ParseDuration`` (not ISO-8601), so the
    same texts are accepted here. InvalidResource(field, ...) otherwise.
    """
    raw = text.strip() if isinstance(text, str) else ""
    body = raw[1:] if raw[:1] in ("+", "-") else raw
    sign = -1.0 if raw.startswith("-") else 1.0
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    while body and pos < len(body):
        match = _GO_DURATION_PART.match(body, pos)
        if match is None:
            break
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise InvalidResource(
            field, f"invalid value {text!r}: must be a duration such as 60s, 2m or 1h30m"
        )
    if not total <= MAX_DURATION_SECONDS:  # also inf and nan: the ISO-8601 parser's bound
        raise InvalidResource(
            field, f"{text[:40]!r} is longer than the limit of {MAX_DURATION_YEARS} years"
        )
    return sign * total


def _parse_float(text: str, field: str) -> float:
    try:
        value = float(text.strip())
    except (ValueError, AttributeError) as exc:
        raise InvalidResource(field, f"invalid value {text!r}: must be a number") from exc
    if not math.isfinite(value):
        raise InvalidResource(field, f"invalid value {text!r}: must be a finite number")
    return value


def _parse_int(text: str, field: str, *, minimum: int = 0) -> int:
    raw = text.strip() if isinstance(text, str) else ""
    if not _INT_RE.fullmatch(raw):
        raise InvalidResource(field, f"invalid value {text!r}: must be an integer")
    value = int(raw)
    if value < minimum or value > _INT32_MAX:
        raise InvalidResource(field, f"expected {minimum} <= {value} <= {_INT32_MAX}")
    return value


def _parse_bool(text: str, field: str) -> bool:
    raw = text.strip() if isinstance(text, str) else ""
    if raw in _GO_TRUE:
        return True
    if raw in _GO_FALSE:
        return False
    raise InvalidResource(field, f"invalid value {text!r}: must be true or false")


def _fmt_seconds(seconds: float) -> str:
    """60.0 -> '60s', 3600.0 -> '1h', 1.5 -> '1.5s' (for messages)."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{seconds:g}s"


def _whole_seconds(seconds: float) -> bool:
    return abs(seconds - round(seconds)) < 1e-9


# ---------------------------------------------------------------------------------------------
# config-autoscaler
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AutoscalerDefaults:
    """Knative's ``config-autoscaler`` ConfigMap, with Knative's defaults (times in seconds).

    ``container_concurrency_target_percentage`` is a percentage (70 = 70 %); ``max_scale`` and
    ``max_scale_limit`` 0 mean unbounded. ``activation_scale`` has no ConfigMap key in Knative
    (only the annotation); it is kept here as the cluster-wide default.
    """

    container_concurrency_target_percentage: float = 70
    container_concurrency_target_default: float = 100
    requests_per_second_target_default: float = 200
    target_burst_capacity: float = 211
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_period: float = 30.0
    scale_to_zero_pod_retention_period: float = 0.0
    scale_down_delay: float = 0.0
    initial_scale: int = 1
    allow_zero_initial_scale: bool = False
    min_scale: int = 0
    max_scale: int = 0
    max_scale_limit: int = 0
    activation_scale: int = 1


# ConfigMap key -> (AutoscalerDefaults field, parser). Keys Knative reads that cemesh has no use
# for (activator-capacity) are accepted and ignored, as Knative ignores unknown keys.
_CONFIG_KEYS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "container-concurrency-target-percentage": (
        "container_concurrency_target_percentage",
        _parse_float,
    ),
    "container-concurrency-target-default": ("container_concurrency_target_default", _parse_float),
    "requests-per-second-target-default": ("requests_per_second_target_default", _parse_float),
    "target-burst-capacity": ("target_burst_capacity", _parse_float),
    "stable-window": ("stable_window", parse_go_duration),
    "panic-window-percentage": ("panic_window_percentage", _parse_float),
    "panic-threshold-percentage": ("panic_threshold_percentage", _parse_float),
    "max-scale-up-rate": ("max_scale_up_rate", _parse_float),
    "max-scale-down-rate": ("max_scale_down_rate", _parse_float),
    "enable-scale-to-zero": ("enable_scale_to_zero", _parse_bool),
    "scale-to-zero-grace-period": ("scale_to_zero_grace_period", parse_go_duration),
    "scale-to-zero-pod-retention-period": (
        "scale_to_zero_pod_retention_period",
        parse_go_duration,
    ),
    "scale-down-delay": ("scale_down_delay", parse_go_duration),
    "initial-scale": ("initial_scale", lambda t, f: _parse_int(t, f, minimum=-_INT32_MAX)),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", _parse_bool),
    "min-scale": ("min_scale", lambda t, f: _parse_int(t, f, minimum=-_INT32_MAX)),
    "max-scale": ("max_scale", lambda t, f: _parse_int(t, f, minimum=-_INT32_MAX)),
    "max-scale-limit": ("max_scale_limit", lambda t, f: _parse_int(t, f, minimum=-_INT32_MAX)),
}


def defaults_from_config_map(data: Mapping[str, str], *, field: str = "data") -> AutoscalerDefaults:
    """Parse a ``config-autoscaler`` ConfigMap's ``data`` (Knative ``NewConfigFromMap``).

    Values are strings as in the ConfigMap (``"stable-window": "60s"``). Missing keys keep
    Knative's defaults; unknown keys are ignored. ``container-concurrency-target-percentage``
    accepts the legacy fraction form (``0.7``) as Knative does. A bad value raises
    InvalidResource with field ``f"{field}[{key}]"`` and Knative's rule in the message.
    """
    values: dict[str, object] = {}
    for key, (attr, parse) in _CONFIG_KEYS.items():
        if key in data:
            values[attr] = parse(data[key], f"{field}[{key}]")
    cls = data.get("pod-autoscaler-class")
    if cls is not None and cls.strip() != KPA_CLASS:
        raise InvalidResource(
            f"{field}[pod-autoscaler-class]",
            f"{cls!r} is not supported: cemesh implements only {KPA_CLASS}",
        )
    pct = values.get("container_concurrency_target_percentage")
    if isinstance(pct, float) and 0 < pct <= 1.0:
        # Knative: "for legacy reasons we allow values in the (0, 1] interval".
        values["container_concurrency_target_percentage"] = pct * 100.0
    defaults = AutoscalerDefaults(**values)  # type: ignore[arg-type]
    _validate_defaults(defaults, field)
    return defaults


def _validate_defaults(d: AutoscalerDefaults, field: str) -> None:
    """Knative's ``validate`` in pkg/autoscaler/config/config.go, key by key."""

    def bad(key: str, message: str) -> InvalidResource:
        return InvalidResource(f"{field}[{key}]", message)

    if d.scale_to_zero_grace_period < WINDOW_MIN:
        raise bad(
            "scale-to-zero-grace-period",
            f"must be at least {_fmt_seconds(WINDOW_MIN)}, "
            f"was {_fmt_seconds(d.scale_to_zero_grace_period)}",
        )
    if d.scale_down_delay < 0 or d.scale_down_delay > WINDOW_MAX:
        raise bad("scale-down-delay", f"must be between 0s and 1h, was {d.scale_down_delay:g}s")
    if not _whole_seconds(d.scale_down_delay):
        raise bad("scale-down-delay", "must be specified with at most second precision")
    if d.scale_to_zero_pod_retention_period < 0:
        raise bad("scale-to-zero-pod-retention-period", "cannot be negative")
    if d.target_burst_capacity < 0 and d.target_burst_capacity != -1:
        raise bad(
            "target-burst-capacity",
            f"must be either non-negative or -1 (for unlimited), was {d.target_burst_capacity:g}",
        )
    pct = d.container_concurrency_target_percentage
    if pct <= 0 or pct > 100:
        raise bad(
            "container-concurrency-target-percentage",
            f"{pct:g} is outside of valid range of (0, 100]",
        )
    if pct / 100.0 * d.container_concurrency_target_default < TARGET_MIN:
        raise bad(
            "container-concurrency-target-default",
            "container-concurrency-target-percentage and container-concurrency-target-default "
            f"yield a target concurrency below {TARGET_MIN}",
        )
    if d.requests_per_second_target_default < TARGET_MIN:
        raise bad("requests-per-second-target-default", f"must be at least {TARGET_MIN}")
    if d.max_scale_up_rate <= 1.0:
        raise bad("max-scale-up-rate", f"{d.max_scale_up_rate:g}, must be greater than 1.0")
    if d.max_scale_down_rate <= 1.0:
        raise bad("max-scale-down-rate", f"{d.max_scale_down_rate:g}, must be greater than 1.0")
    if not WINDOW_MIN <= d.stable_window <= WINDOW_MAX:
        raise bad(
            "stable-window",
            f"{_fmt_seconds(d.stable_window)}, must be in [6s; 1h] range",
        )
    if not _whole_seconds(d.stable_window):
        raise bad("stable-window", "must be specified with at most second precision")
    if not PANIC_WINDOW_PERCENTAGE_MIN <= d.panic_window_percentage <= PANIC_WINDOW_PERCENTAGE_MAX:
        raise bad(
            "panic-window-percentage",
            f"{d.panic_window_percentage:g}, must be in [1, 100] interval",
        )
    if not (
        PANIC_THRESHOLD_PERCENTAGE_MIN
        <= d.panic_threshold_percentage
        <= PANIC_THRESHOLD_PERCENTAGE_MAX
    ):
        raise bad(
            "panic-threshold-percentage",
            f"{d.panic_threshold_percentage:g}, must be in [110, 1000] interval",
        )
    if d.initial_scale < 0 or (d.initial_scale == 0 and not d.allow_zero_initial_scale):
        raise bad(
            "initial-scale",
            f"{d.initial_scale}, must be at least 0 "
            "(or at least 1 when allow-zero-initial-scale is false)",
        )
    if d.max_scale_limit < 0:
        raise bad("max-scale-limit", f"{d.max_scale_limit}, must be at least 0")
    if d.max_scale < (1 if d.max_scale_limit > 0 else 0) or (
        d.max_scale_limit > 0 and d.max_scale > d.max_scale_limit
    ):
        raise bad(
            "max-scale",
            f"{d.max_scale}, must be in [{1 if d.max_scale_limit > 0 else 0}, "
            f"max-scale-limit({d.max_scale_limit})] range",
        )
    if d.min_scale < 0 or (d.max_scale > 0 and d.min_scale > d.max_scale):
        raise bad("min-scale", f"{d.min_scale}, must be between 0 and max-scale ({d.max_scale})")


# ---------------------------------------------------------------------------------------------
# One revision's policy
# ---------------------------------------------------------------------------------------------


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


def _annotation(annotations: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """(key, value) of the first present key; Knative's kmap.KeyPriority (new name, legacy)."""
    for name in names:
        key = ANNOTATION_PREFIX + name
        if key in annotations:
            return key, annotations[key]
    return None


def policy_from_annotations(
    annotations: Mapping[str, str],
    *,
    container_concurrency: int,
    defaults: AutoscalerDefaults,
    field: str = "spec.template.metadata.annotations",
) -> ScalingPolicy:
    """Resolve a Revision's ``autoscaling.knative.dev/*`` annotations against ``defaults``.

    Annotation names and their legacy camelCase aliases are Knative's: ``class``, ``metric``,
    ``target``, ``target-utilization-percentage``, ``target-burst-capacity``, ``window``,
    ``panic-window-percentage``, ``panic-threshold-percentage``, ``min-scale``, ``max-scale``,
    ``initial-scale``, ``activation-scale``, ``scale-down-delay``,
    ``scale-to-zero-pod-retention-period``, ``metric-aggregation-algorithm``. Other annotations
    are ignored. Validation follows Knative's ``annotation_validation.go``; a bad value raises
    InvalidResource with field ``f"{field}[autoscaling.knative.dev/<name>]"``.

    The target resolves as Knative's ``ResolveMetricTarget``: for ``concurrency`` the ``target``
    annotation (floored to containerConcurrency when that is set), else containerConcurrency,
    else ``container-concurrency-target-default``; for ``rps`` the annotation else
    ``requests-per-second-target-default``.
    """
    if container_concurrency < 0:
        raise InvalidResource(
            "spec.template.spec.containerConcurrency",
            f"{container_concurrency} must be 0 (unlimited) or more",
        )

    def fld(key: str) -> str:
        return f"{field}[{key}]"

    found = _annotation(annotations, "class")
    if found is not None and found[1] != KPA_CLASS:
        key, value = found
        what = "the Kubernetes HPA class" if value == HPA_CLASS else f"class {value!r}"
        raise InvalidResource(
            fld(key), f"{what} is not supported: cemesh implements only {KPA_CLASS}"
        )

    metric: Metric = "concurrency"
    found = _annotation(annotations, "metric")
    if found is not None:
        key, value = found
        if value not in ("concurrency", "rps"):
            raise InvalidResource(
                fld(key), f"invalid value {value!r}: the KPA scales on 'concurrency' or 'rps'"
            )
        metric = "concurrency" if value == "concurrency" else "rps"

    found = _annotation(annotations, "metric-aggregation-algorithm")
    if found is not None and found[1] != "linear":
        raise InvalidResource(
            fld(found[0]), f"{found[1]!r} is not supported: cemesh averages linearly ('linear')"
        )

    # Target and utilization (ResolveMetricTarget).
    if metric == "rps":
        target = defaults.requests_per_second_target_default
        utilization = RPS_TARGET_UTILIZATION
    else:
        target = float(container_concurrency or defaults.container_concurrency_target_default)
        utilization = defaults.container_concurrency_target_percentage / 100.0
    found = _annotation(annotations, "target")
    if found is not None:
        key, value = found
        try:
            annotated = float(value)
        except ValueError:
            annotated = math.nan
        if not math.isfinite(annotated) or annotated < TARGET_MIN:
            raise InvalidResource(fld(key), f"target {value} should be at least {TARGET_MIN}")
        target = annotated
        if metric == "concurrency" and container_concurrency:
            # Never aim higher than the replica can take (Knative floors to containerConcurrency).
            target = min(annotated, float(container_concurrency))
    found = _annotation(annotations, "target-utilization-percentage", "targetUtilizationPercentage")
    if found is not None:
        key, value = found
        pct = _parse_float(value, fld(key))
        if not 1 <= pct <= 100:
            raise InvalidResource(fld(key), f"expected 1 <= {value} <= 100")
        utilization = pct / 100.0

    tbc = defaults.target_burst_capacity
    found = _annotation(annotations, "target-burst-capacity", "targetBurstCapacity")
    if found is not None:
        key, value = found
        tbc = _parse_float(value, fld(key))
        if tbc < 0 and tbc != -1:
            raise InvalidResource(
                fld(key), f"invalid value {value!r}: must be 0 or more, or -1 (unlimited)"
            )

    # Windows.
    stable_window = defaults.stable_window
    found = _annotation(annotations, "window")
    if found is not None:
        key, value = found
        stable_window = parse_go_duration(value, fld(key))
        if not WINDOW_MIN <= stable_window <= WINDOW_MAX:
            raise InvalidResource(fld(key), f"expected 6s <= {value} <= 1h")
        if not _whole_seconds(stable_window):
            raise InvalidResource(fld(key), "must be specified with at most second precision")
    panic_pct = defaults.panic_window_percentage
    found = _annotation(annotations, "panic-window-percentage", "panicWindowPercentage")
    if found is not None:
        key, value = found
        panic_pct = _parse_float(value, fld(key))
        if not PANIC_WINDOW_PERCENTAGE_MIN <= panic_pct <= PANIC_WINDOW_PERCENTAGE_MAX:
            raise InvalidResource(fld(key), f"expected 1 <= {value} <= 100")
    threshold_pct = defaults.panic_threshold_percentage
    found = _annotation(annotations, "panic-threshold-percentage", "panicThresholdPercentage")
    if found is not None:
        key, value = found
        threshold_pct = _parse_float(value, fld(key))
        if not PANIC_THRESHOLD_PERCENTAGE_MIN <= threshold_pct <= PANIC_THRESHOLD_PERCENTAGE_MAX:
            raise InvalidResource(fld(key), f"expected 110 <= {value} <= 1000")

    scale_down_delay = defaults.scale_down_delay
    found = _annotation(annotations, "scale-down-delay", "scaleDownDelay")
    if found is not None:
        key, value = found
        scale_down_delay = parse_go_duration(value, fld(key))
        if not 0 <= scale_down_delay <= WINDOW_MAX:
            raise InvalidResource(fld(key), f"expected 0s <= {value} <= 1h")
        if not _whole_seconds(scale_down_delay):
            raise InvalidResource(fld(key), "must be specified with at most second precision")
    retention = defaults.scale_to_zero_pod_retention_period
    found = _annotation(annotations, "scale-to-zero-pod-retention-period")
    if found is not None:
        key, value = found
        retention = parse_go_duration(value, fld(key))
        if not 0 <= retention <= WINDOW_MAX:
            raise InvalidResource(fld(key), f"expected 0s <= {value} <= 1h")

    # Scale bounds (PodAutoscaler.ScaleBounds, validateMinMaxScale, GetInitialScale).
    min_scale = defaults.min_scale
    found = _annotation(annotations, "min-scale", "minScale")
    min_key = found[0] if found else ANNOTATION_PREFIX + "min-scale"
    if found is not None:
        min_scale = _parse_int(found[1], fld(found[0]))
    max_scale = defaults.max_scale
    found = _annotation(annotations, "max-scale", "maxScale")
    if found is not None:
        key, value = found
        max_scale = _parse_int(value, fld(key))
        if defaults.max_scale_limit > 0 and max_scale == 0:
            raise InvalidResource(
                fld(key),
                f"max-scale=0 (unlimited), must be less than {defaults.max_scale_limit}",
            )
        if defaults.max_scale_limit > 0 and max_scale > defaults.max_scale_limit:
            raise InvalidResource(
                fld(key), f"expected 1 <= {max_scale} <= {defaults.max_scale_limit}"
            )
    if max_scale != 0 and max_scale < min_scale:
        raise InvalidResource(
            fld(min_key), f"max-scale={max_scale} is less than min-scale={min_scale}"
        )

    initial_scale = defaults.initial_scale
    found = _annotation(annotations, "initial-scale", "initialScale")
    if found is not None:
        key, value = found
        if not _INT_RE.fullmatch(value.strip()) or int(value) < 0:
            raise InvalidResource(fld(key), f"invalid value {value!r}: must be an integer >= 0")
        initial_scale = int(value)
        if initial_scale == 0 and not defaults.allow_zero_initial_scale:
            raise InvalidResource(
                fld(key),
                "invalid value '0': initial-scale 0 needs allow-zero-initial-scale: true "
                "in config-autoscaler",
            )

    activation_scale = defaults.activation_scale
    found = _annotation(annotations, "activation-scale")
    if found is not None:
        key, value = found
        activation_scale = _parse_int(value, fld(key), minimum=1)

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
        initial_scale=initial_scale,
        activation_scale=activation_scale,
        max_scale_up_rate=defaults.max_scale_up_rate,
        max_scale_down_rate=defaults.max_scale_down_rate,
        scale_to_zero_grace_period=defaults.scale_to_zero_grace_period,
        scale_to_zero_pod_retention_period=retention,
        enable_scale_to_zero=defaults.enable_scale_to_zero,
        container_concurrency=container_concurrency,
        target_burst_capacity=tbc,
        scale_down_delay=scale_down_delay,
    )


def initial_replicas(policy: ScalingPolicy) -> int:
    """Replicas to start for a new Revision: initial-scale, raised to min-scale, capped at max.

    Knative creates the Deployment with initial-scale replicas and the PodAutoscaler raises it to
    min-scale on its first reconcile; cemesh starts the final number at once.
    """
    replicas = max(policy.initial_scale, policy.min_scale)
    if policy.max_scale:
        replicas = min(replicas, policy.max_scale)
    return replicas


# ---------------------------------------------------------------------------------------------
# One tick
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the scaler remembers between ticks for one Revision (start with ``ScalerState()``).

    - ``panic_since``: last time the panic condition held (Knative ``panicTime``); None = stable
      mode.
    - ``max_panic_replicas``: the highest count decided in this panic (never scaled below).
    - ``last_active``: last tick that observed traffic (stable or panic average above 0).
    - ``active_since``: when the Revision went from zero to serving (Knative's PA ``Active``
      condition); None while at zero.
    - ``inactive_since``: when it was marked inactive (idle with no min-scale, after being active
      for a stable window); scale to zero happens once the grace / retention period passed.
    - ``initialized``: the Revision reached its initial scale once (Knative
      ``IsScaleTargetInitialized``); until then initial-scale is a lower bound.
    - ``recent_desired``: (time, desired) of the last scale-down-delay window.
    """

    panic_since: float | None = None
    max_panic_replicas: int = 0
    last_active: float | None = None
    active_since: float | None = None
    inactive_since: float | None = None
    initialized: bool = False
    recent_desired: tuple[tuple[float, int], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one tick: how many replicas to run, and why.

    ``excess_burst_capacity`` is Knative's EBC: replicas*target - target-burst-capacity -
    panic average, floored; negative means the activator should stay in the request path
    (-1 when target-burst-capacity is -1, 0 when it is 0).
    """

    desired: int
    reason: str
    panic: bool
    state: ScalerState
    excess_burst_capacity: float


def restarted_state(*, ready_replicas: int, now: float) -> ScalerState:
    """State for a scaler (re)created over ``ready_replicas`` already running.

    Knative's ``newAutoscaler`` starts such a scaler in panic mode when more than one replica
    runs, so the lost metric history cannot cause a momentary scale-down.
    """
    return ScalerState(
        panic_since=now if ready_replicas > 1 else None,
        max_panic_replicas=max(0, ready_replicas),
        active_since=now if ready_replicas > 0 else None,
        initialized=ready_replicas > 0,
    )


def decide(
    policy: ScalingPolicy,
    state: ScalerState,
    *,
    ready_replicas: int,
    stable: float,
    panic: float,
    now: float,
) -> Decision:
    """One autoscaler tick: the desired replica count for ``policy`` given the observed averages.

    ``stable`` / ``panic`` are the stable- and panic-window averages of the policy's metric
    (:meth:`MetricWindow.averages`); ``ready_replicas`` the replicas currently serving.

    Knative ``autoscaler.go`` ``Scale``: desired = ceil(observed / target_value), kept within
    [floor(ready / max-scale-down-rate), ceil(ready * max-scale-up-rate)] (ready counted as at
    least 1); raised to activation-scale when scaling from nothing; panic when
    ceil(panic / target_value) / ready >= panic threshold, and while panicking the count never
    goes down; panic ends a stable window after the condition last held; a scale-down delay
    keeps the highest count of its window. Then ``scaler.go``: min-scale (and initial-scale
    until first reached) and max-scale bounds; a count of 0 only when scale to zero is enabled,
    after the Revision was active for a stable window and then idle for
    max(grace period, pod retention period); until then 1 replica is kept.
    """
    if ready_replicas < 0 or stable < 0 or panic < 0:
        raise ValueError("ready_replicas, stable and panic must be zero or more")
    unit = "concurrency" if policy.metric == "concurrency" else "req/s"
    target_value = policy.target_value
    ready = max(1.0, float(ready_replicas))

    # Rate limits. ceil() lets a conservative up-rate still grow by one replica.
    max_up = math.ceil(policy.max_scale_up_rate * ready)
    max_down = math.floor(ready / policy.max_scale_down_rate)
    stable_pods_raw = math.ceil(stable / target_value)
    panic_pods_raw = math.ceil(panic / target_value)
    stable_pods = min(max(stable_pods_raw, max_down), max_up)
    panic_pods = min(max(panic_pods_raw, max_down), max_up)
    if policy.activation_scale > 1:
        if stable_pods_raw > 0 and policy.activation_scale > stable_pods:
            stable_pods = policy.activation_scale
        if panic_pods_raw > 0 and policy.activation_scale > panic_pods:
            panic_pods = policy.activation_scale

    # Panic mode.
    panic_since, max_panic = state.panic_since, state.max_panic_replicas
    if panic_pods_raw / ready >= policy.panic_threshold:
        panic_since = now  # start, or extend while still over the threshold
    elif panic_since is not None and panic_since + policy.stable_window < now:
        panic_since, max_panic = None, 0  # the surge has made its way into the stable metric
    if panic_since is not None:
        wanted = max(stable_pods, panic_pods)
        max_panic = max(max_panic, wanted)
        desired = max_panic
        reason = f"panic: {panic:.1f} {unit} / target {target_value:g} -> {wanted}"
        if wanted < max_panic:
            reason += f", holding {max_panic} (no scale-down in panic)"
    else:
        desired = stable_pods
        reason = f"stable {stable:.1f} {unit} / target {target_value:g} -> {desired}"

    # Scale-down delay: the highest count decided within the delay window wins.
    recent: tuple[tuple[float, int], ...] = ()
    if policy.scale_down_delay > 0:
        horizon = now - policy.scale_down_delay
        recent = (*((t, d) for t, d in state.recent_desired if t > horizon), (now, desired))
        delayed = max(d for _, d in recent)
        if delayed > desired:
            reason += f"; scale-down delayed, staying at {delayed}"
            desired = delayed

    # Excess burst capacity (on the panic value: no knee-jerk changes to the request path).
    if policy.target_burst_capacity == 0:
        ebc = 0.0
    elif policy.target_burst_capacity > 0:
        ebc = float(
            math.floor(ready_replicas * policy.target - policy.target_burst_capacity - panic)
        )
    else:
        ebc = -1.0

    # scaler.go: bounds. Initial scale is a floor until it has been reached once.
    initialized = state.initialized or ready_replicas >= policy.initial_scale
    lower, lower_name = policy.min_scale, "min-scale"
    if not initialized and policy.initial_scale > lower:
        lower, lower_name = policy.initial_scale, "initial-scale"
    if desired < lower:
        reason += f"; raised to {lower_name} {lower}"
        desired = lower
    if policy.max_scale and desired > policy.max_scale:
        reason += f"; capped at max-scale {policy.max_scale}"
        desired = policy.max_scale

    # scaler.go handleScaleToZero.
    active_since, inactive_since = state.active_since, state.inactive_since
    if desired > 0:
        inactive_since = None
        if active_since is None:
            active_since = now
    elif not policy.enable_scale_to_zero:
        desired = 1
        reason += "; scale to zero disabled, keeping 1"
        if active_since is None:
            active_since = now
    elif ready_replicas == 0:
        active_since = None
        if inactive_since is None:
            inactive_since = now
        reason = "at zero, no traffic"
    else:
        if inactive_since is None:
            if active_since is None:
                active_since = now
            active_for = now - active_since
            if active_for >= policy.stable_window:
                inactive_since = now
            else:
                desired = 1
                reason = (
                    f"idle; keeping 1 until active for the stable window "
                    f"({active_for:g}s of {policy.stable_window:g}s)"
                )
        if inactive_since is not None:
            idle_for = now - inactive_since
            wait = max(policy.scale_to_zero_grace_period, policy.scale_to_zero_pod_retention_period)
            if idle_for >= wait:
                active_since = None
                reason = f"scale to zero after grace period ({idle_for:g}s idle, needs {wait:g}s)"
            else:
                desired = 1
                reason = f"idle; keeping 1 for the grace period ({idle_for:g}s of {wait:g}s)"

    new_state = replace(
        state,
        panic_since=panic_since,
        max_panic_replicas=max_panic,
        last_active=now if (stable > 0 or panic > 0) else state.last_active,
        active_since=active_since,
        inactive_since=inactive_since,
        initialized=initialized,
        recent_desired=recent,
    )
    return Decision(
        desired=desired,
        reason=reason,
        panic=panic_since is not None,
        state=new_state,
        excess_burst_capacity=ebc,
    )
