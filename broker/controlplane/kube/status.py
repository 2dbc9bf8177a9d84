"""cemesh's reconciled statuses in the shape Knative's brokers write them. Pure.

:func:`broker.controlplane.reconcile.reconcile` already names Trigger conditions as Knative does
(``BrokerReady``, ``SubscriberResolved``, ``DependencyReady``, ``DeadLetterSinkResolved``,
``SubscriptionReady``) and gives Brokers ``Addressable`` and ``DeadLetterSinkResolved``. What a
Knative Broker also shows, and this module adds:

- ``IngressReady`` and ``FilterReady``: cemesh's ingress and dispatcher run in every replica,
  so they are True exactly when the Broker is served (it is in the snapshot); otherwise they
  carry the reason the Broker is not Ready.

Destinations are resolved in the cluster before reconcile
(:mod:`broker.controlplane.kube.resolution`); one that did not resolve is handed to reconcile as a
placeholder and then marked here (:func:`mark_unresolved`): its condition False with the resolver's
reason, ``Ready`` False, the URI field emptied, and the Trigger taken out of the snapshot so nothing
is delivered to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.core.events import now_rfc3339

BROKER_SERVING_CONDITIONS = ("IngressReady", "FilterReady")


def _condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def _set(
    status: dict[str, Any],
    type_: str,
    value: str,
    reason: str,
    message: str,
    now: str,
    previous: Mapping[str, Any] | None = None,
) -> None:
    """Set one condition, keeping its lastTransitionTime when its status did not change
    (from ``previous``, the stored status, else from ``status`` itself)."""
    conditions = [dict(c) for c in status.get("conditions") or []]
    current = next((c for c in conditions if c.get("type") == type_), None)
    before = _condition(previous, type_) if previous is not None else current
    since = (
        before["lastTransitionTime"]
        if before and before.get("status") == value and before.get("lastTransitionTime")
        else now
    )
    entry = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if current is None:
        conditions.append(entry)
    else:
        conditions[conditions.index(current)] = entry
    status["conditions"] = conditions


def knative_broker_status(
    status: Mapping[str, Any], *, served: bool, previous: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A Broker status from reconcile, with Knative's IngressReady and FilterReady added.

    ``previous``: the status stored now, whose transition times are kept when unchanged.
    """
    now = now_rfc3339()
    result = dict(status)
    ready = _condition(status, "Ready") or {}
    for type_ in BROKER_SERVING_CONDITIONS:
        if served:
            value, reason, message = "True", "", ""
        else:
            value = "Unknown" if ready.get("status") != "False" else "False"
            reason = str(ready.get("reason") or "BrokerNotReady")
            message = str(ready.get("message") or "")
        _set(result, type_, value, reason, message, now, previous or {})
    return result


def mark_unresolved(
    status: Mapping[str, Any], condition: str, uri_field: str, reason: str, message: str
) -> dict[str, Any]:
    """``status`` with ``condition`` False (reason, message), ``uri_field`` emptied, and Ready
    and ``SubscriptionReady`` following (Trigger semantics: Ready is the first False)."""
    now = now_rfc3339()
    result = dict(status)
    if uri_field:
        result[uri_field] = ""
    _set(result, condition, "False", reason, message, now)
    if _condition(result, "SubscriptionReady") is not None:
        _set(result, "SubscriptionReady", "Unknown", "NotSubscribed",
             f"waiting for {condition}", now)  # fmt: skip
    _set(result, "Ready", "False", reason, message, now)
    return result


def ready_of(status: Mapping[str, Any] | None) -> bool:
    """Whether a status's Ready condition is True."""
    ready = _condition(status or {}, "Ready")
    return ready is not None and ready.get("status") == "True"
