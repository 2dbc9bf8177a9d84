"""The Kubernetes API as the control plane's storage seam: :class:`KubeResourceStore`.

What this module owns: the second implementation of
:class:`broker.controlplane.resource_store.ResourceStore` (the SQL store is the first), so that
the one :class:`broker.controlplane.controller.Controller` drives cemesh on a cluster too:

- **reads** (:meth:`~KubeResourceStore.list`, :meth:`~KubeResourceStore.get`) are served from
  watch caches (:class:`~broker.controlplane.kube.watch.CollectionWatch`, one per served
  namespace, or one of all): the *listed* kinds (Brokers and Triggers) are watched from
  :meth:`~KubeResourceStore.start`, and a list without a kind returns them; other kinds are
  watched from their first read (:meth:`~KubeResourceStore.lookup`: the Addressables and
  ConfigMaps a Broker or Trigger names). A kind not watched is read from the API server;
  a list waits for a kind's first LIST, and fails (StoreError) while it cannot be listed;
- **the revision** is this replica's count of what it saw change: every watch event, every
  first LIST of a kind, a kind turning unreadable or readable again, and :meth:`touch` (the
  Lease elector's "leadership changed"). Kubernetes' resourceVersions are opaque and per
  collection, so they cannot be one store-wide number; a local counter can, and it is all the
  controller asks of it (it moved: sync again).
- **the change notification** (:meth:`~KubeResourceStore.next_revision`) returns as soon as the
  revision moves: Kubernetes pushes changes through its watches, so the controller reacts at
  once instead of at its next poll. The SQL store implements the same method by polling (its
  revision is a row other replicas move), which is why the seam carries a wait with a bound
  rather than a stream of changes: the one loop in the controller serves both;
- **writes**: :meth:`~KubeResourceStore.create`, :meth:`~KubeResourceStore.replace` and
  :meth:`~KubeResourceStore.delete` on the API server (a delete of an object with finalizers
  only marks it); statuses through the status subresource (merge patch guarded by the
  resourceVersion, 409s retried while the generation is unchanged; a status computed for an
  older generation is dropped: :meth:`broker.controlplane.kube.store.KubeStore.update_status`);
  every status written is told to :attr:`~KubeResourceStore.status_written` (the cluster policy
  records an Event when Ready changed). Writes are not
  applied to the caches: the watches bring them back, and moving the revision there is what
  tells the controller it has something new to read;
- **leases** (:meth:`~KubeResourceStore.claim_lease`, a PingSource tick claimed once): a
  ``coordination.k8s.io`` Lease created under a name derived from the claim's, so the API
  server's create-or-409 picks exactly one claimant.

Kubernetes-only operations the controller's cluster policy needs (lookups of watched kinds,
finalizers, Events) are the :class:`broker.controlplane.kube.policy.ClusterObjects` extension,
also implemented here. Errors come translated from :mod:`broker.controlplane.kube.store`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from broker.controlplane.kube.store import (
    BROKERS,
    CONFIG_MAPS,
    LEASES,
    SERVICES,
    TRIGGERS,
    KubeKind,
    KubeStore,
    kube_kind,
)
from broker.controlplane.kube.watch import Backoff, CollectionWatch
from broker.controlplane.resource_store import StatusChange
from broker.core.errors import CemeshError, Conflict, NotFound, StoreError
from broker.core.tasks import cancel_all_and_wait

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CLAIM_LABEL = "cemesh.dev/claim"
CLAIM_NAME = "cemesh.dev/claim-name"
CLAIM_EXPIRES = "cemesh.dev/claim-expires"
# Kinds addressed by (API group, kind) alone (the seam has no version): the ones cemesh reads.
KNOWN_KINDS = (BROKERS, TRIGGERS, CONFIG_MAPS, SERVICES, LEASES)


def claim_object_name(name: str) -> str:
    """A Lease name (a DNS subdomain) for a claim name such as ``tick/<uid>/<time>``."""
    return "cemesh-claim-" + hashlib.sha256(name.encode()).hexdigest()[:40]


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


class KubeResourceStore:
    """Resources on one API server, behind the storage seam (module docstring).

    ``api`` is the raw API (its connection owned by the caller); ``listed`` the kinds a list
    without a kind returns; ``lease_namespace`` where claims' Leases go.
    """

    def __init__(
        self,
        api: KubeStore,
        *,
        listed: Sequence[KubeKind] = (BROKERS, TRIGGERS),
        lease_namespace: str = "cemesh",
        backoff: Backoff | None = None,
        progress_bound: float = 150.0,
    ) -> None:
        self.api = api
        self.listed = tuple(listed)
        self.lease_namespace = lease_namespace
        # Told of every status written: the object before the write, and the status.
        self.status_written: Callable[[Obj, dict[str, Any]], Awaitable[None]] | None = None
        self._backoff = backoff
        self._progress_bound = progress_bound
        self._watches: dict[KubeKind, list[CollectionWatch]] = {}
        self._unreadable: dict[KubeKind, str] = {}  # kinds whose LIST/WATCH fails now, why
        self._tasks: list[asyncio.Task[None]] = []
        self._revision = 0
        self._moved = asyncio.Event()  # set (and replaced) when the revision moves

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Watch the listed kinds (needs a running event loop)."""
        for kind in self.listed:
            self.watches(kind)

    async def stop(self) -> None:
        """Stop every watch."""
        await cancel_all_and_wait(self._tasks)
        self._tasks.clear()
        self._watches.clear()

    # -- the revision --------------------------------------------------------------------

    async def revision(self) -> int:
        return self._revision

    def touch(self) -> None:
        """Move the revision: something the controller acts on changed outside the watches."""
        self._revision += 1
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def next_revision(self, since: int, within: float) -> int:
        """The revision once it differs from ``since``, or after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._revision == since:
                    await self._moved.wait()
        return self._revision

    # -- watches -------------------------------------------------------------------------

    def watches(self, kind: KubeKind) -> builtins.list[CollectionWatch]:
        """The watches of ``kind`` (started at the first call)."""
        found = self._watches.get(kind)
        if found is not None:
            return found

        async def on_change(_change: str, _obj: Obj) -> None:
            self.touch()

        def on_problem(problem: tuple[str, str] | None) -> None:
            if problem is None:
                if self._unreadable.pop(kind, None) is not None:
                    self.touch()
            elif kind not in self._unreadable:
                self._unreadable[kind] = problem[1]
                self.touch()  # what refers to this kind says why it cannot resolve

        found = self._watches[kind] = self.api.watch(
            kind,
            on_change,
            on_problem=on_problem,
            backoff=self._backoff,
            progress_bound=self._progress_bound,
        )
        for watch in found:
            self._spawn(watch.run(), f"cemesh-kube-watch {watch.path}")
            self._spawn(self._announce_listed(watch), f"cemesh-kube-listed {watch.path}")
        return found

    async def _announce_listed(self, watch: CollectionWatch) -> None:
        """The first LIST is a change too, even of an empty collection (a read may wait)."""
        await watch.synced.wait()
        self.touch()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine, name=name))

    def listed_once(self, kind: KubeKind) -> bool:
        """Whether ``kind`` was listed (so lookups answer), or cannot be: then lookups fail."""
        watches = self.watches(kind)
        return all(w.synced.is_set() for w in watches) or kind in self._unreadable

    def unreadable(self, kind: KubeKind) -> str | None:
        """Why ``kind`` cannot be listed (not served, forbidden) before its first LIST; None
        when it was listed or may still be."""
        if all(w.synced.is_set() for w in self.watches(kind)):
            return None
        return self._unreadable.get(kind)

    def lookup(self, kind: KubeKind, namespace: str, name: str) -> Obj | None:
        """The watched object (its kind watched from now on); None when it does not exist or
        its kind is not listed yet (see :meth:`listed_once`)."""
        for watch in self.watches(kind):
            found = watch.objects.get((namespace, name))
            if found is not None:
                return found
        return None

    async def _cached(self, kind: KubeKind) -> builtins.list[CollectionWatch]:
        """The watches of ``kind`` once listed; StoreError while it cannot be."""
        watches = self.watches(kind)

        def settled() -> bool:
            return all(w.synced.is_set() for w in watches) or kind in self._unreadable

        while not settled():
            await self._moved.wait()
        why = self.unreadable(kind)
        if why is not None:
            raise StoreError(f"cannot list {kind.kind} ({kind.api_version}): {why}")
        return watches

    # -- reads ---------------------------------------------------------------------------

    def _kind(self, api_group: str, kind: str) -> KubeKind:
        for known in (*self._watches, *KNOWN_KINDS):
            if known.group == api_group and known.kind == kind:
                return known
        raise NotFound(f"{kind} ({api_group or 'core'}) is not a kind this store knows")

    def _kind_of(self, obj: Obj) -> KubeKind:
        api_version, kind = str(obj.get("apiVersion") or ""), str(obj.get("kind") or "")
        group = api_version.rpartition("/")[0]
        try:
            return self._kind(group, kind)
        except NotFound:
            return kube_kind(api_version, kind)

    async def get(self, api_group: str, kind: str, namespace: str, name: str) -> Obj:
        found = self._kind(api_group, kind)
        if found in self._watches:
            for watch in await self._cached(found):
                obj = watch.objects.get((namespace, name))
                if obj is not None:
                    return obj
            raise NotFound(f"{kind} {namespace}/{name} not found")
        return await self.api.get(found, namespace, name)

    async def list(
        self, api_group: str | None = None, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[Obj]:
        if kind is None:
            kinds = [k for k in self.listed if api_group is None or k.group == api_group]
        else:
            kinds = [self._kind(api_group or "", kind)]
        found: builtins.list[Obj] = []
        for each in kinds:
            if each not in self._watches and each not in self.listed:
                found.extend(await self.api.list(each, namespace=namespace))
                continue
            for watch in await self._cached(each):
                found.extend(watch.objects.values())
        if namespace is not None:
            found = [obj for obj in found if _meta(obj).get("namespace") == namespace]
        found.sort(key=lambda o: (str(_meta(o).get("namespace")), str(_meta(o).get("name"))))
        return found

    # -- writes --------------------------------------------------------------------------

    async def create(self, obj: Obj) -> Obj:
        """POST; the API server assigns uid, generation and resourceVersion."""
        return await self.api.create(self._kind_of(obj), obj)

    async def replace(self, obj: Obj) -> Obj:
        """PUT (the status, a subresource, is kept); without a resourceVersion, over the
        current object (Kubernetes requires one on custom resources)."""
        kind, metadata = self._kind_of(obj), _meta(obj)
        if not metadata.get("resourceVersion"):  # an unconditional replace: the current one
            current = await self.api.get(kind, metadata["namespace"], metadata["name"])
            version = _meta(current)["resourceVersion"]
            obj = {**obj, "metadata": {**metadata, "resourceVersion": version}}
        return await self.api.replace(kind, obj)

    async def delete(self, api_group: str, kind: str, namespace: str, name: str) -> Obj:
        """DELETE (an object with finalizers is only marked); the object as it was."""
        found = self._kind(api_group, kind)
        before = await self.api.get(found, namespace, name)
        await self.api.delete(found, namespace, name)
        return before

    async def update_status(
        self, api_group: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> Obj:
        found = self._kind(api_group, kind)
        current = await self.get(api_group, kind, namespace, name)
        if current.get("status") == status:
            return current
        written = await self.api.update_status(found, current, status)
        if written is None:  # the spec changed meanwhile: the watch brings it to reconcile
            return current
        await self._tell_written(current, status)
        return written

    async def update_statuses(self, changes: Sequence[StatusChange]) -> int:
        """Each status through the status subresource (the API has no multi-object write);
        how many were written. Skipped: absent objects, unchanged statuses, and statuses
        computed for another ``generation`` than the object's now. A failed write is logged
        and skipped (the next sync computes it again): one object cannot hold the others."""
        written = 0
        for change in changes:
            what = f"{change.kind} {change.namespace}/{change.name}"
            try:
                kind = self._kind(change.api_group, change.kind)
                current = await self.get(change.api_group, change.kind, change.namespace,
                                         change.name)  # fmt: skip
                generation = _meta(current).get("generation")
                if current.get("status") == change.status or (
                    change.generation is not None and generation != change.generation
                ):
                    continue
                if await self.api.update_status(kind, current, change.status) is None:
                    continue
            except NotFound:
                continue
            except CemeshError as exc:  # the API failed or kept conflicting: the next sync
                log.info("status not written", extra={"object": what, "why": exc.message})
                continue
            written += 1
            await self._tell_written(current, change.status)
        return written

    async def _tell_written(self, before: Obj, status: dict[str, Any]) -> None:
        if self.status_written is not None:
            await self.status_written(before, status)

    # -- the cluster's extension: finalizers, Events ---------------------------------------

    async def record_event(self, event: Obj) -> None:
        """Create a core v1 Event; best effort: a refusal is logged and dropped."""
        try:
            await self.api.create_event(event)
        except CemeshError as exc:  # e.g. Events not served or not allowed: statuses still tell
            log.info(
                "event not recorded", extra={"reason": event.get("reason"), "why": exc.message}
            )

    async def add_finalizer(self, obj: Obj, finalizer: str) -> Obj:
        meta = _meta(obj)
        return await self.api.add_finalizer(
            self._kind_of(obj), meta["namespace"], meta["name"], finalizer
        )

    async def remove_finalizer(self, obj: Obj, finalizer: str) -> None:
        meta = _meta(obj)
        await self.api.remove_finalizer(
            self._kind_of(obj), meta["namespace"], meta["name"], finalizer
        )

    # -- leases --------------------------------------------------------------------------

    async def claim_lease(
        self, name: str, holder: str, expires_at: datetime, *, prune_prefix: str = ""
    ) -> bool:
        """Create the claim's Lease: the API server lets exactly one create succeed (409 for
        the others). Claims live in ``lease_namespace``, labelled, their claim name and expiry
        in annotations; the winner deletes expired ones under ``prune_prefix``."""
        now = datetime.now(UTC)
        lease = {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": {
                "name": claim_object_name(name),
                "namespace": self.lease_namespace,
                "labels": {CLAIM_LABEL: "true"},
                "annotations": {CLAIM_NAME: name, CLAIM_EXPIRES: expires_at.isoformat()},
            },
            "spec": {
                "holderIdentity": holder,
                "acquireTime": _micro_time(now),
                "leaseDurationSeconds": max(1, int((expires_at - now).total_seconds())),
            },
        }
        try:
            await self.api.create(LEASES, lease)
        except Conflict:
            return False
        if prune_prefix:
            await self._prune_claims(prune_prefix, now)
        return True

    async def _prune_claims(self, prefix: str, now: datetime) -> None:
        claims = await self.api.list(
            LEASES, namespace=self.lease_namespace, label_selector=f"{CLAIM_LABEL}=true"
        )
        for claim in claims:
            annotations = _meta(claim).get("annotations") or {}
            try:
                expires = datetime.fromisoformat(str(annotations.get(CLAIM_EXPIRES)))
            except ValueError:
                continue
            if str(annotations.get(CLAIM_NAME, "")).startswith(prefix) and expires < now:
                with contextlib.suppress(NotFound):  # another winner pruned it first
                    await self.api.delete(LEASES, self.lease_namespace, _meta(claim)["name"])
