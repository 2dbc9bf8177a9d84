"""The invoker's runtime specs (built by reconcile, run by :mod:`broker.features.serving.invoker`).

``snapshot.components["invoker"]`` maps :func:`revision_key` to a :class:`RevisionSpec` for every
Revision whose autoscaling policy resolves (each scales on its own, with or without traffic) and
:func:`route_key` to a :class:`RouteSpec` for every Service: what its route serves, possibly
nothing (then the invoker answers 503 with the reason, not 404: the Service exists).

The invoker writes what only it knows (replicas, the autoscaler's reason, whether a replica ever
listened, why replicas cannot start or keep exiting) back into each Revision's status under
:data:`RUNTIME_STATUS_KEYS`; reconcile keeps those keys as they are and turns them into the
Revision's conditions, and reports them on the Service (``status.autoscaler``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.features.serving.autoscaler import ScalingPolicy
from broker.features.serving.traffic import TrafficTarget

COMPONENT = "invoker"

# Revision status fields the invoker owns. ``actualReplicas``/``desiredReplicas`` are Knative's
# names; ``autoscaler`` ({reason, panic}), ``runtimeError`` ({reason, message}) and
# ``replicaReadyOnce`` (a replica listened at least once: the Revision can serve) are cemesh's.
RUNTIME_STATUS_KEYS = (
    "actualReplicas",
    "desiredReplicas",
    "autoscaler",
    "runtimeError",
    "replicaReadyOnce",
)

# runtimeError reasons (Knative's names where Knative has one).
EXIT_CODE = "ExitCode"  # a replica exited before any replica of the Revision listened
CRASH_LOOP = "CrashLoopBackOff"  # replicas keep exiting without listening in between
PROGRESS_DEADLINE = "ProgressDeadlineExceeded"  # no replica listened within the deadline

# Key of RevisionSpec.template: the environment a SinkBinding adds to the replicas (K_SINK, ...).
BINDING_ENV = "bindingEnv"
# Template key: who applied the Revision's Service (its cemesh.dev/applied-by), for the log line
# of every replica start.
APPLIED_BY = "appliedBy"


def revision_key(namespace: str, name: str) -> str:
    return f"revision:{namespace}/{name}"


def route_key(namespace: str, name: str) -> str:
    return f"service:{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class RevisionSpec:
    """A Ready Revision: what its replicas run and how they scale."""

    namespace: str
    service: str
    name: str
    uid: str
    # The Revision's spec (containers, containerConcurrency, timeoutSeconds) plus its
    # "annotations": what the backend builds replicas from.
    template: Mapping[str, Any]
    container_concurrency: int  # 0: unlimited
    timeout: float  # timeoutSeconds: how long one request may take
    policy: ScalingPolicy
    # serving.knative.dev/progress-deadline: seconds a replica may take to listen.
    progress_deadline: float = 60.0
    # A replica listened once before (stored status): after a restart of cemesh the Revision is
    # Ready without starting one, unless it carries traffic or has a min-scale.
    proven: bool = False
    routed: bool = False  # some Service's route sends traffic (or a tag) to it


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A Service's route: its URL and the traffic rows it serves (none: answer 503 ``why``)."""

    namespace: str
    name: str
    url: str
    targets: tuple[TrafficTarget, ...]
    why: str = ""  # why the route serves nothing or only its last good rows
