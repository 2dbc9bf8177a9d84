"""Kubernetes Events for Ready transitions of cemesh's Brokers and Triggers.

What this module owns: when a status write changes an object's ``Ready`` condition (status or
reason), the core ``v1`` Event that tells ``kubectl describe`` and ``kubectl get events`` so,
as Knative's reconcilers do (``Normal`` when Ready turns True, ``Warning`` when it turns False
or Unknown, with the condition's reason and message). :func:`ready_transition` and
:func:`ready_event` are pure; the cluster policy
(:meth:`broker.controlplane.kube.policy.ClusterPolicy.status_written`) posts the Event after
the status write, and a refused Event is logged and dropped: Events are best effort, never a
reason to retry a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

COMPONENT = "cemesh-controller"


@dataclass(frozen=True, slots=True)
class Transition:
    """The Ready condition after a change: its status, reason and message."""

    status: str
    reason: str
    message: str


def _ready(status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    for condition in (status or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition
    return {}


def ready_transition(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> Transition | None:
    """The new Ready condition when ``after`` (a status) changes Ready's status or reason from
    ``before``; None when Ready did not change (or ``after`` has none)."""
    old, new = _ready(before), _ready(after)
    if not new:
        return None
    key = ("status", "reason")
    if all(old.get(k) == new.get(k) for k in key):
        return None
    return Transition(
        str(new.get("status") or "Unknown"),
        str(new.get("reason") or ""),
        str(new.get("message") or ""),
    )


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_event(
    obj: Mapping[str, Any], transition: Transition, *, instance: str, now: datetime
) -> dict[str, Any]:
    """The core v1 Event about ``obj`` (a Broker or Trigger as read) for ``transition``.

    Reasons are Knative's style, the kind and the outcome (``BrokerReady``,
    ``TriggerNotReady``); the message is the condition's reason and message.
    """
    metadata = obj.get("metadata") or {}
    kind = str(obj.get("kind") or "")
    ready = transition.status == "True"
    detail = ": ".join(p for p in (transition.reason, transition.message) if p)
    stamp = _timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{metadata.get('name')}.",
            "namespace": metadata.get("namespace"),
        },
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": kind,
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "type": "Normal" if ready else "Warning",
        "reason": f"{kind}{'Ready' if ready else 'NotReady'}",
        "message": (f"{kind} is Ready" if ready else f"{kind} is not Ready")
        + (f" ({detail})" if detail else ""),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
