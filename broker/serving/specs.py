"""The invoker's runtime specs (built by reconcile, run by :mod:`broker.serving.invoker`).

``snapshot.components["invoker"]`` maps :func:`revision_key` to a :class:`RevisionSpec` for every
Ready Revision (each scales on its own, with or without traffic) and :func:`route_key` to a
:class:`RouteSpec` for every Service whose traffic resolves to Ready Revisions.

The invoker writes what only it knows (replicas, the autoscaler's reason, a replica that cannot
start) back into each Revision's status under :data:`RUNTIME_STATUS_KEYS`; reconcile keeps those
keys as they are and reports them on the Service (``status.autoscaler``) and in conditions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.serving.autoscaler import ScalingPolicy
from broker.serving.traffic import TrafficTarget

COMPONENT = "invoker"

# Revision status fields the invoker owns. ``actualReplicas``/``desiredReplicas`` are Knative's
# names; ``autoscaler`` ({reason, panic}) and ``runtimeError`` ({reason, message}) are cemesh's.
RUNTIME_STATUS_KEYS = ("actualReplicas", "desiredReplicas", "autoscaler", "runtimeError")

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


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A Service whose traffic resolves: its URL and resolved traffic rows."""

    namespace: str
    name: str
    url: str
    targets: tuple[TrafficTarget, ...]
