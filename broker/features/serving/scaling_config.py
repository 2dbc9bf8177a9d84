"""Knative's ``config-autoscaler`` ConfigMap and the Go value syntax it shares with annotations.

Owns :class:`AutoscalerDefaults` / :func:`defaults_from_config_map` (Knative's defaults and
validation, ``pkg/autoscaler/config/config.go``), Knative's validation bounds, and the parsers of
Go's ``strconv`` / ``time.ParseDuration`` texts (``60s``, ``true``, ``0.7``) that both the
ConfigMap and the ``autoscaling.knative.dev/*`` annotations
(:mod:`broker.features.serving.scaling_policy`) use. Pure: bad values raise
:class:`~broker.core.errors.InvalidResource` naming the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from broker.core.durations import MAX_DURATION_SECONDS, MAX_DURATION_YEARS
from broker.core.errors import InvalidResource

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
INT32_MAX = 2**31 - 1


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
INT_RE = re.compile(r"[+-]?\d+")
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


def parse_float(text: str, field: str) -> float:
    try:
        value = float(text.strip())
    except (ValueError, AttributeError) as exc:
        raise InvalidResource(field, f"invalid value {text!r}: must be a number") from exc
    if not math.isfinite(value):
        raise InvalidResource(field, f"invalid value {text!r}: must be a finite number")
    return value


def parse_int(text: str, field: str, *, minimum: int = 0) -> int:
    raw = text.strip() if isinstance(text, str) else ""
    if not INT_RE.fullmatch(raw):
        raise InvalidResource(field, f"invalid value {text!r}: must be an integer")
    value = int(raw)
    if value < minimum or value > INT32_MAX:
        raise InvalidResource(field, f"expected {minimum} <= {value} <= {INT32_MAX}")
    return value


def parse_bool(text: str, field: str) -> bool:
    raw = text.strip() if isinstance(text, str) else ""
    if raw in _GO_TRUE:
        return True
    if raw in _GO_FALSE:
        return False
    raise InvalidResource(field, f"invalid value {text!r}: must be true or false")


def fmt_seconds(seconds: float) -> str:
    """60.0 -> '60s', 3600.0 -> '1h', 1.5 -> '1.5s' (for messages)."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{seconds:g}s"


def whole_seconds(seconds: float) -> bool:
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
        parse_float,
    ),
    "container-concurrency-target-default": ("container_concurrency_target_default", parse_float),
    "requests-per-second-target-default": ("requests_per_second_target_default", parse_float),
    "target-burst-capacity": ("target_burst_capacity", parse_float),
    "stable-window": ("stable_window", parse_go_duration),
    "panic-window-percentage": ("panic_window_percentage", parse_float),
    "panic-threshold-percentage": ("panic_threshold_percentage", parse_float),
    "max-scale-up-rate": ("max_scale_up_rate", parse_float),
    "max-scale-down-rate": ("max_scale_down_rate", parse_float),
    "enable-scale-to-zero": ("enable_scale_to_zero", parse_bool),
    "scale-to-zero-grace-period": ("scale_to_zero_grace_period", parse_go_duration),
    "scale-to-zero-pod-retention-period": (
        "scale_to_zero_pod_retention_period",
        parse_go_duration,
    ),
    "scale-down-delay": ("scale_down_delay", parse_go_duration),
    "initial-scale": ("initial_scale", lambda t, f: parse_int(t, f, minimum=-INT32_MAX)),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", parse_bool),
    "min-scale": ("min_scale", lambda t, f: parse_int(t, f, minimum=-INT32_MAX)),
    "max-scale": ("max_scale", lambda t, f: parse_int(t, f, minimum=-INT32_MAX)),
    "max-scale-limit": ("max_scale_limit", lambda t, f: parse_int(t, f, minimum=-INT32_MAX)),
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
            f"must be at least {fmt_seconds(WINDOW_MIN)}, "
            f"was {fmt_seconds(d.scale_to_zero_grace_period)}",
        )
    if d.scale_down_delay < 0 or d.scale_down_delay > WINDOW_MAX:
        raise bad("scale-down-delay", f"must be between 0s and 1h, was {d.scale_down_delay:g}s")
    if not whole_seconds(d.scale_down_delay):
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
            f"{fmt_seconds(d.stable_window)}, must be in [6s; 1h] range",
        )
    if not whole_seconds(d.stable_window):
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
