"""What differs between the stores the one controller drives: :class:`ControlPolicy`.

:class:`broker.controlplane.controller.Controller` runs one loop over any
:class:`~broker.controlplane.resource_store.ResourceStore`: wait for the revision to move, list,
reconcile (pure), open buses, apply the snapshot, remove on the bus what deleted objects left
there, write statuses, converge owned objects. A policy decides the parts a store's world
defines differently:

- :meth:`~ControlPolicy.plan`: which listed objects reconcile sees, whose statuses are written,
  and which objects still listed are to be *released* (their bus state removed once the applied
  snapshot no longer serves them). On cemesh's own store that is everything, everything and
  nothing (deleted objects are gone at once; the API tells the controller); on a cluster it is
  the Broker class selection, destinations resolved in the cluster, and objects being deleted
  that carry cemesh's finalizer (:mod:`broker.controlplane.kube.policy`);
- :meth:`~ControlPolicy.finish`: the reconciled statuses and snapshot as the store's readers
  expect them (Knative's extra Broker conditions on a cluster). Pure;
- :attr:`~ControlPolicy.writing`: whether this replica writes now (a cluster elects one with a
  Lease; cemesh's store lets every replica write, its transactions keep them consistent);
- :meth:`~ControlPolicy.hold` and :meth:`~ControlPolicy.release`: the I/O around status writes
  and retirements that only a cluster has (finalizers);
- :meth:`~ControlPolicy.start` / :meth:`~ControlPolicy.stop`: what runs beside the loop.

:class:`StorePolicy` is cemesh's own store's: the identity everywhere.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.controlplane.reconcile import Reconciled

Obj = dict[str, Any]


@dataclass
class Plan:
    """What one pass reconciles and writes."""

    objects: list[Obj]  # handed to reconcile
    managed: list[Obj]  # the objects whose statuses this pass writes (when writing)
    # Objects still listed whose bus state goes once the snapshot is applied (Triggers first,
    # then Brokers: a Broker's state goes after its Triggers'), retried every pass until the
    # policy releases them.
    releasing: list[Obj] = field(default_factory=list)
    context: Any = None  # the policy's own, from plan to finish and release


class ControlPolicy(Protocol):
    """The store-specific parts of one control pass (module docstring)."""

    @property
    def writing(self) -> bool:
        """Whether this replica writes statuses and retires groups now."""
        ...

    def ready(self) -> bool:
        """Whether the store can be listed for a pass yet (a cluster's first LIST came)."""
        ...

    def plan(self, objects: list[Obj]) -> Plan | None:
        """What to reconcile and write of the listed ``objects``; None: not yet (something
        they refer to is still being read; its arrival moves the revision)."""
        ...

    def finish(self, plan: Plan, reconciled: Reconciled) -> Reconciled:
        """The statuses and snapshot to apply and write. Pure."""
        ...

    async def hold(self, objects: list[Obj]) -> list[Obj]:
        """Before their statuses are written: the objects as they are after (those that
        could not be held are left out, and written next pass)."""
        ...

    async def release(self, plan: Plan, failed: Collection[str]) -> None:
        """After the bus state of ``plan.releasing`` went, except the uids in ``failed``."""
        ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class StorePolicy:
    """cemesh's own store: every object reconciled and written, nothing held or released
    (a deleted object is gone from the store at once), every replica writing."""

    writing = True

    def ready(self) -> bool:
        return True

    def plan(self, objects: list[Obj]) -> Plan:
        return Plan(objects, objects)

    def finish(self, plan: Plan, reconciled: Reconciled) -> Reconciled:
        return reconciled

    async def hold(self, objects: list[Obj]) -> list[Obj]:
        return objects

    async def release(self, plan: Plan, failed: Collection[str]) -> None:
        return None

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
