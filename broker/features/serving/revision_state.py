"""What the function invoker keeps per running Revision, and the runtime status it writes.

Owns :class:`RevisionState` (the activator, metric window and scaler memory of one Revision,
and what went wrong with it) and :func:`write_statuses`: the replicas, the autoscaler's reason,
``replicaReadyOnce`` and ``runtimeError`` written into each Revision's status when they change
(or on a resync), leaving the fields the controller owns alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from broker.core.errors import CemeshError, NotFound
from broker.features.serving.activator import Activator
from broker.features.serving.autoscaler import MetricWindow, ScalerState
from broker.features.serving.backend import Backend
from broker.features.serving.kinds import REVISION, SERVING
from broker.features.serving.specs import RUNTIME_STATUS_KEYS, RevisionSpec

log = logging.getLogger(__name__)


class StatusStore(Protocol):
    """What writing runtime statuses needs of the store (the control plane's storage)."""

    async def get(self, api_group: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object; NotFound if there is none."""
        ...

    async def update_status(
        self, api_group: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Set an object's status."""
        ...


class RevisionState:
    """What the invoker keeps for one running Revision."""

    def __init__(self, spec: RevisionSpec, activator: Activator) -> None:
        self.spec = spec
        self.ref = activator.ref
        self.activator = activator
        self.window = MetricWindow()
        self.scaler = ScalerState()
        self.desired = 0
        self.ensured = False
        self.reason = "starting"
        self.panic = False
        self.error: tuple[str, str] | None = None  # (reason, message) from the backend
        self.waking = False
        self.written: tuple[Any, ...] | None = None
        self.ready_once = spec.proven  # a replica listened at least once
        self.failure: tuple[str, str] | None = None  # (reason, message): cannot serve
        self.exits = 0  # replica exits since a replica last listened
        self.waiting_since: float | None = None  # replicas wanted, none listening since then

    @property
    def problem(self) -> tuple[str, str] | None:
        """Why the Revision cannot serve: the backend's error first, then a replica failure."""
        return self.error or self.failure


def runtime_status(state: RevisionState, backend: Backend) -> dict[str, Any]:
    """The status fields the invoker owns, for one Revision now."""
    status: dict[str, Any] = {
        "actualReplicas": len(backend.ready(state.ref)),
        "desiredReplicas": state.desired,
        "autoscaler": {"reason": state.reason, "panic": state.panic},
    }
    problem = state.problem
    if problem is not None:
        status["runtimeError"] = {"reason": problem[0], "message": problem[1]}
    if state.ready_once:
        status["replicaReadyOnce"] = True
    return status


async def write_statuses(
    store: StatusStore, backend: Backend, states: Iterable[RevisionState], *, resync: bool
) -> None:
    """Write each Revision's runtime status where it changed (all of them on ``resync``)."""
    for state in states:
        runtime = runtime_status(state, backend)
        essential = (
            runtime["actualReplicas"],
            runtime["desiredReplicas"],
            state.panic,
            state.problem,
            state.ready_once,
        )
        if essential == state.written and not resync:
            continue
        try:
            obj = await store.get(SERVING, REVISION.kind, state.ref.namespace, state.spec.name)
            stored = obj.get("status") or {}
            current = (
                stored.get("actualReplicas"),
                stored.get("desiredReplicas"),
                (stored.get("autoscaler") or {}).get("panic", False),
                stored.get("runtimeError"),
                stored.get("replicaReadyOnce", False),
            )
            error = runtime.get("runtimeError")
            wanted = (essential[0], essential[1], state.panic, error, state.ready_once)
            if current != wanted:
                status = {k: v for k, v in stored.items() if k not in RUNTIME_STATUS_KEYS}
                status.update(runtime)
                await store.update_status(
                    SERVING, REVISION.kind, state.ref.namespace, state.spec.name, status
                )
            state.written = essential
        except NotFound:
            continue
        except CemeshError as exc:
            log.info("revision status not written", extra={"why": exc.message})
