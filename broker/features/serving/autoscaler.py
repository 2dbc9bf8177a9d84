"""Knative's KPA autoscaler decisions as pure functions: policy in, desired replicas out.

Owns :func:`decide`, one autoscaler tick for cemesh's function invoker: Knative's
``pkg/autoscaler/scaling/autoscaler.go`` ``Scale`` (stable/panic desired counts, rate limits,
panic mode, scale-down delay, excess burst capacity) followed by
``pkg/reconciler/autoscaling/kpa/scaler.go`` ``scale`` / ``handleScaleToZero`` (min/max/initial
bounds, scale to zero after the grace period); and the scaler's memory between ticks
(:class:`ScalerState`, :func:`restarted_state`); and :func:`activation_replicas`, how many
replicas a Revision at zero starts for the requests it holds.

Its inputs come from its neighbours, re-exported here for the invoker and tests:
:mod:`broker.features.serving.scaling_config` (``config-autoscaler``: :class:`AutoscalerDefaults`),
:mod:`broker.features.serving.scaling_policy` (one Revision's :class:`ScalingPolicy` from its
annotations) and :mod:`broker.features.serving.metrics_window` (:class:`MetricWindow`, the stable
and panic averages :func:`decide` takes).

Nothing here reads a clock or does I/O: every time is an explicit ``now`` in seconds, and the
scaler's memory is the immutable :class:`ScalerState` passed in and returned, so tests drive a
fake clock and the invoker owns the loop.

Deliberate differences from Knative (cemesh has no Kubernetes Service/SKS in the path):
the activator is taken to be always in the request path, so the "probe the activator" step of
``handleScaleToZero`` is not modelled; ``hpa.autoscaling.knative.dev`` and custom classes are
rejected instead of handed to another autoscaler; only linear metric aggregation is supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from broker.features.serving.metrics_window import MetricWindow
from broker.features.serving.scaling_config import (
    ANNOTATION_PREFIX,
    KPA_CLASS,
    AutoscalerDefaults,
    defaults_from_config_map,
    parse_go_duration,
)
from broker.features.serving.scaling_policy import (
    ScalingPolicy,
    initial_replicas,
    policy_from_annotations,
)

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
    tick = _Tick(policy, state, ready_replicas, now)
    tick.scale(stable, panic)
    tick.delay_scale_down()
    tick.bound()
    tick.scale_to_zero()
    new_state = replace(
        state,
        panic_since=tick.panic_since,
        max_panic_replicas=tick.max_panic,
        last_active=now if (stable > 0 or panic > 0) else state.last_active,
        active_since=tick.active_since,
        inactive_since=tick.inactive_since,
        initialized=tick.initialized,
        recent_desired=tick.recent,
    )
    return Decision(
        desired=tick.desired,
        reason=tick.reason,
        panic=tick.panic_since is not None,
        state=new_state,
        excess_burst_capacity=excess_burst_capacity(policy, ready_replicas, panic),
    )


def activation_replicas(policy: ScalingPolicy, *, waiting: int, decided: int) -> int:
    """Replicas to start for ``waiting`` requests held while a Revision has none ready.

    Enough to serve every waiting request at once, ceil(waiting / containerConcurrency) (one
    replica when containerConcurrency is 0, unlimited), so a burst at zero does not queue
    behind one replica until the next tick; never below the autoscaler's own ``decided`` count,
    ``activation-scale`` or 1, never above ``max-scale``. (Knative's activator instead waits for
    the next metrics scrape; cemesh holds the requests itself and knows their number now.)
    """
    if waiting < 0 or decided < 0:
        raise ValueError("waiting and decided must be zero or more")
    limit = policy.container_concurrency
    needed = math.ceil(waiting / limit) if limit else 1
    desired = max(needed, decided, policy.activation_scale, 1)
    return min(desired, policy.max_scale) if policy.max_scale else desired


def excess_burst_capacity(policy: ScalingPolicy, ready_replicas: int, panic: float) -> float:
    """Knative's EBC, on the panic value (no knee-jerk changes to the request path)."""
    if policy.target_burst_capacity == 0:
        return 0.0
    if policy.target_burst_capacity > 0:
        return float(
            math.floor(ready_replicas * policy.target - policy.target_burst_capacity - panic)
        )
    return -1.0


class _Tick:
    """One :func:`decide` in progress: the count so far, why, and the state it moves.

    Each method is one step of Knative's tick, in order; each may change the count and say why.
    """

    def __init__(
        self, policy: ScalingPolicy, state: ScalerState, ready_replicas: int, now: float
    ) -> None:
        self.policy, self.state, self.now = policy, state, now
        self.ready_replicas = ready_replicas
        self.ready = max(1.0, float(ready_replicas))
        self.desired = 0
        self.reason = ""
        self.panic_since, self.max_panic = state.panic_since, state.max_panic_replicas
        self.recent: tuple[tuple[float, int], ...] = ()
        self.initialized = state.initialized
        self.active_since, self.inactive_since = state.active_since, state.inactive_since

    def scale(self, stable: float, panic: float) -> None:
        """``autoscaler.go``: rate-limited stable and panic counts, and panic mode."""
        policy, ready = self.policy, self.ready
        unit = "concurrency" if policy.metric == "concurrency" else "req/s"
        target_value = policy.target_value
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

        if panic_pods_raw / ready >= policy.panic_threshold:
            self.panic_since = self.now  # start, or extend while still over the threshold
        elif self.panic_since is not None and self.panic_since + policy.stable_window < self.now:
            # The surge has made its way into the stable metric.
            self.panic_since, self.max_panic = None, 0
        if self.panic_since is not None:
            wanted = max(stable_pods, panic_pods)
            self.max_panic = max(self.max_panic, wanted)
            self.desired = self.max_panic
            self.reason = f"panic: {panic:.1f} {unit} / target {target_value:g} -> {wanted}"
            if wanted < self.max_panic:
                self.reason += f", holding {self.max_panic} (no scale-down in panic)"
        else:
            self.desired = stable_pods
            self.reason = f"stable {stable:.1f} {unit} / target {target_value:g} -> {stable_pods}"

    def delay_scale_down(self) -> None:
        """Scale-down delay: the highest count decided within the delay window wins."""
        if self.policy.scale_down_delay <= 0:
            return
        horizon = self.now - self.policy.scale_down_delay
        self.recent = (
            *((t, d) for t, d in self.state.recent_desired if t > horizon),
            (self.now, self.desired),
        )
        delayed = max(d for _, d in self.recent)
        if delayed > self.desired:
            self.reason += f"; scale-down delayed, staying at {delayed}"
            self.desired = delayed

    def bound(self) -> None:
        """``scaler.go``: bounds. Initial scale is a floor until it has been reached once."""
        policy = self.policy
        self.initialized = self.initialized or self.ready_replicas >= policy.initial_scale
        lower, lower_name = policy.min_scale, "min-scale"
        if not self.initialized and policy.initial_scale > lower:
            lower, lower_name = policy.initial_scale, "initial-scale"
        if self.desired < lower:
            self.reason += f"; raised to {lower_name} {lower}"
            self.desired = lower
        if policy.max_scale and self.desired > policy.max_scale:
            self.reason += f"; capped at max-scale {policy.max_scale}"
            self.desired = policy.max_scale

    def scale_to_zero(self) -> None:
        """``scaler.go`` ``handleScaleToZero``: zero only after being active, then idle long."""
        policy, now = self.policy, self.now
        if self.desired > 0:
            self.inactive_since = None
            if self.active_since is None:
                self.active_since = now
        elif not policy.enable_scale_to_zero:
            self.desired = 1
            self.reason += "; scale to zero disabled, keeping 1"
            if self.active_since is None:
                self.active_since = now
        elif self.ready_replicas == 0:
            self.active_since = None
            if self.inactive_since is None:
                self.inactive_since = now
            self.reason = "at zero, no traffic"
        else:
            self._wind_down()

    def _wind_down(self) -> None:
        """Idle with replicas running: keep 1 through the stable window and the grace period."""
        policy, now = self.policy, self.now
        if self.inactive_since is None:
            if self.active_since is None:
                self.active_since = now
            active_for = now - self.active_since
            if active_for >= policy.stable_window:
                self.inactive_since = now
            else:
                self.desired = 1
                self.reason = (
                    f"idle; keeping 1 until active for the stable window "
                    f"({active_for:g}s of {policy.stable_window:g}s)"
                )
        if self.inactive_since is not None:
            idle_for = now - self.inactive_since
            wait = max(policy.scale_to_zero_grace_period, policy.scale_to_zero_pod_retention_period)
            if idle_for >= wait:
                self.active_since = None
                self.reason = (
                    f"scale to zero after grace period ({idle_for:g}s idle, needs {wait:g}s)"
                )
            else:
                self.desired = 1
                self.reason = f"idle; keeping 1 for the grace period ({idle_for:g}s of {wait:g}s)"
