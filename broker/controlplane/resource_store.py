"""The control plane's one seam to storage: :class:`ResourceStore`.

The controller, the management API and the runtime components read, watch and write resources
and their status through this interface, never through a storage engine. It has two
implementations: the SQL store (:class:`broker.controlplane.store.Store`, SQLite or PostgreSQL,
the default) and the Kubernetes API
(:class:`broker.controlplane.kube.resource_store.KubeResourceStore`); the shape is Kubernetes':

- objects are Kubernetes-shaped dicts, addressed by (API group, kind, namespace, name);
- every change moves a store-wide revision (:meth:`ResourceStore.revision`; in SQL
  ``metadata.resourceVersion`` is the revision of an object's last write; on Kubernetes it is
  this replica's count of watch events, resourceVersions being opaque and per collection);
  :meth:`ResourceStore.next_revision` waits, with a bound, for it to move: the SQL store polls
  (no one tells a replica that another wrote), the Kubernetes API's watches answer at once. A
  wait rather than a stream of changes, because "something moved: list again" is all the
  controller needs, and a polled store can offer no more;
- ``spec`` (and the other content) is written by :meth:`~ResourceStore.create` and
  :meth:`~ResourceStore.replace`, ``status`` only by :meth:`~ResourceStore.update_status` (the
  status subresource) and :meth:`~ResourceStore.update_statuses` (many in one transaction: the
  controller's first sync writes the status of every object);
- a status may name the generation it was computed for (:attr:`StatusChange.generation`): a
  store that can tell drops it when the spec changed meanwhile (Kubernetes');
- a stale ``metadata.resourceVersion`` or an existing name is :class:`~broker.core.errors.Conflict`,
  a missing object :class:`~broker.core.errors.NotFound`, an unreachable store
  :class:`~broker.core.errors.StoreError` (all from :mod:`broker.core.errors`);
- a lease (:meth:`~ResourceStore.claim_lease`) is taken by exactly one claimant across
  processes, like creating a ``coordination.k8s.io`` Lease; claims do not move the revision.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


def new_holder() -> str:
    """A lease claimant's name, unique across hosts, processes and runtimes in one process."""
    return f"{socket.gethostname()[:100]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The status to write for one object (see :meth:`ResourceStore.update_statuses`)."""

    api_group: str
    kind: str
    namespace: str
    name: str
    status: dict[str, Any]
    # The metadata.generation the status was computed for: a store that can tell (the
    # Kubernetes API) drops a status computed for another generation (the spec changed).
    generation: int | None = None


class ResourceStore(Protocol):
    """Resources by (API group, kind, namespace, name), with a revision and leases."""

    async def get(self, api_group: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object; NotFound if there is none."""
        ...

    async def list(
        self, api_group: str | None = None, kind: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored objects matching every given filter, sorted by namespace then name."""
        ...

    async def revision(self) -> int:
        """The store-wide revision: it moves on every create, replace, status change, delete."""
        ...

    async def next_revision(self, since: int, within: float) -> int:
        """The revision once it differs from ``since``, or after ``within`` seconds at most
        (then possibly still ``since``): the controller's wait for something to do."""
        ...

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object (uid, generation, resourceVersion assigned); Conflict if it exists."""
        ...

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace content and metadata, keeping the status; NotFound if absent, Conflict if
        ``metadata.resourceVersion`` is given and stale."""
        ...

    async def update_status(
        self, api_group: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Set an object's status (no generation change); NotFound if absent."""
        ...

    async def update_statuses(self, changes: Sequence[StatusChange]) -> int:
        """Set several objects' statuses in one write transaction; how many changed. Each
        changed object gets a resourceVersion of its own, as with :meth:`update_status`;
        unchanged ones and absent ones (deleted meanwhile) are skipped."""
        ...

    async def delete(self, api_group: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Remove an object and return it as it was; NotFound if absent."""
        ...

    async def claim_lease(
        self, name: str, holder: str, expires_at: datetime, *, prune_prefix: str = ""
    ) -> bool:
        """Take lease ``name`` for ``holder`` until ``expires_at``: True for exactly one claimant
        across processes while the lease exists. The winner also removes expired leases whose
        names start with ``prune_prefix`` (none when it is empty). StoreError when the store
        cannot answer."""
        ...
