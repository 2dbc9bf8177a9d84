"""The control loop: store -> reconcile -> data plane, then statuses back into the store.

One loop for every store behind the seam
(:class:`~broker.controlplane.resource_store.ResourceStore`: cemesh's SQL store, or the
Kubernetes API). After every write through the API, and whenever the store's revision moves
(:meth:`~broker.controlplane.resource_store.ResourceStore.next_revision`: the SQL store is polled
every ``resync_interval`` seconds, the Kubernetes API's watches answer at once), the controller
lists the resources, lets its :class:`~broker.controlplane.control_policy.ControlPolicy` plan
the pass (cemesh's store: everything; a cluster: the Broker class selection and cluster
resolution), computes statuses and the runtime :class:`~broker.core.spec.Snapshot` with the pure
:func:`broker.controlplane.reconcile.reconcile`, hands the snapshot to the data plane, and only
then (when the policy says this replica writes) removes on the bus what deleted objects left there
and writes the statuses (so a Trigger is reported Ready only once its subscription is live: K61).

Removing what a deleted object left on the bus (:meth:`Controller._remove_from_bus`, the one
place that says what goes). A deleted Trigger or Subscription leaves its consumer group on the
bus (a Kafka group, a JetStream consumer, a Pub/Sub subscription collecting every event for
days). The controller hears of deletions two ways: cemesh's own store forgets an object at once,
so the API tells the controller (:meth:`Controller.deleted`, also its own garbage collection of
owned objects), and the removal is tried once (a failure is logged: the resource is gone either
way); on a cluster, an object being deleted stays listed while it carries cemesh's finalizer, so
the policy lists it as *releasing* every pass until its removal succeeded and the policy let it
go. Either way the removal happens once a snapshot built without the object has been applied,
i.e. once the dispatcher stopped consuming its group. Only deletion retires a group: a Trigger
that is merely not Ready keeps its group, which goes on collecting events for when it is Ready
again.

Deleting topics, in the same place: a deleted Broker or channel implementation leaves its topic
on the bus (a Kafka topic, a JetStream stream, a Redis stream, a Pub/Sub topic, with what they
hold); :func:`broker.controlplane.eventing.topics.topics_to_delete` says which topics a deletion
frees (never one that an object still listed owns: a Broker applied again under the same name
keeps it). On cemesh's own store another replica may still serve the Broker until its next poll,
and re-create the topic (empty) meanwhile: its consumer finds the topic gone, its ingress
publishes. So such a topic is deleted once more after :data:`RECHECK_POLLS` resync intervals,
when every replica polling as often has applied a snapshot without it (replicas share
``CEMESH_RESYNC_INTERVAL``). On a cluster the replicas follow the same watch, and a Broker's
finalizer stays until its topic is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from broker.controlplane.admission import admit
from broker.controlplane.catalog import Catalog
from broker.controlplane.control_policy import ControlPolicy, Plan, StorePolicy
from broker.controlplane.eventing.topics import owned_topic, topics_to_delete
from broker.controlplane.incremental import Memo
from broker.controlplane.reconcile import Reconciled, reconcile
from broker.controlplane.resource_store import ResourceStore, StatusChange
from broker.controlplane.resources import SUBSCRIPTION, TRIGGER
from broker.core.collector import collector_paused
from broker.core.errors import CemeshError
from broker.core.ingress_authorization import AuthorizationMode
from broker.core.spec import (
    DeliveryPolicy,
    Snapshot,
    broker_topic,
    channel_topic,
    subscription_group,
    trigger_group,
)
from broker.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How long a sync waits for the API writes under way to finish, so that it answers them too.
COALESCE_WAIT = 1.0
MAX_PASSES = 6  # owner -> owned -> owned-by-owned -> ready: enough for Sequence and Parallel
# Statuses written per store transaction: one commit for many (the first sync after a start
# writes every object's status), yet a bounded hold of the store's write lock (~80 ms for 1,000
# on SQLite). 10,000 statuses: 1.02-1.07 s in batches of 200, 0.76 s in batches of 1,000 or
# 5,000 (in process, issue 14).
STATUS_BATCH = 1000
# Seconds between full reconciles (no outcome reused, broker.controlplane.incremental): the
# safety net under incremental reconcile, whose result is the same by construction.
FULL_RECONCILE_INTERVAL = 300.0
# Resync intervals after which a deleted topic is deleted once more (see the module docstring).
RECHECK_POLLS = 2
# (API group, kind) of the objects that own a consumer group on the bus (retired on deletion).
GROUP_KINDS = frozenset({(TRIGGER.group, TRIGGER.kind), (SUBSCRIPTION.group, SUBSCRIPTION.kind)})


def _buses_of(snapshot: Snapshot) -> set[str]:
    """The buses the Brokers and Channels of ``snapshot`` live on."""
    return {spec.bus for spec in snapshot.brokers.values()} | {
        spec.bus for spec in snapshot.channels.values()
    }


def consumer_group_of(obj: dict) -> tuple[str, str]:
    """(topic, consumer group) of a Trigger (its Broker's topic) or a Subscription (its
    Channel's topic): the group its deletion retires."""
    metadata, spec = obj["metadata"], obj.get("spec") or {}
    namespace, uid = metadata.get("namespace") or "default", metadata["uid"]
    if obj["kind"] == TRIGGER.kind:
        return broker_topic(namespace, str(spec.get("broker", ""))), trigger_group(uid)
    channel = str((spec.get("channel") or {}).get("name", ""))
    return channel_topic(namespace, channel), subscription_group(uid)


def _group(obj: dict) -> str:
    return str(obj["apiVersion"]).rpartition("/")[0]


def _key(obj: dict) -> tuple[str, str, str, str]:
    metadata = obj["metadata"]
    return (_group(obj), obj["kind"], metadata.get("namespace") or "default", metadata["name"])


def _controller(obj: dict) -> dict | None:
    for owner in obj["metadata"].get("ownerReferences") or ():
        if owner.get("controller"):
            return dict(owner)
    return None


def _controller_uid(obj: dict) -> str | None:
    owner = _controller(obj)
    return None if owner is None else owner.get("uid")


def _controller_kind(obj: dict) -> str | None:
    owner = _controller(obj)
    return None if owner is None else owner.get("kind")


class Controller:
    """Keeps the data plane and the resources' statuses in step with the store."""

    def __init__(
        self,
        store: ResourceStore,
        *,
        catalog: Catalog,
        base_url: str,
        default_delivery: DeliveryPolicy,
        default_channel: str,
        apply_snapshot: Callable[[Snapshot], Awaitable[None]],
        open_buses: Callable[[set[str]], Awaitable[dict[str, str]]],
        resync_interval: float,
        retire_groups: Callable[[dict], Awaitable[None]] | None = None,
        delete_topic: Callable[[str, str | None], Awaitable[None]] | None = None,
        ingress_oidc: bool = False,
        default_authorization_mode: AuthorizationMode = "allow-same-namespace",
        https_base_url: str | None = None,
        ca_certs: str | None = None,
        policy: ControlPolicy | None = None,
    ) -> None:
        self._store = store
        self._policy: ControlPolicy = policy or StorePolicy()
        self._catalog = catalog  # the kinds served: their reconcilers, admission, owners
        self._ingress_oidc = ingress_oidc
        self._default_authorization_mode: AuthorizationMode = default_authorization_mode
        self._base_url = base_url
        self._https_base_url = https_base_url  # https addresses too, when HTTPS is served
        self._ca_certs = ca_certs  # published in them as CACerts
        self._default_delivery = default_delivery
        self._default_channel = default_channel
        self._apply_snapshot = apply_snapshot
        self._open_buses = open_buses
        self._bus_errors: dict[str, str] = {}  # buses that failed to open, retried every poll
        self._retire_groups = retire_groups
        self._retiring: list[dict] = []  # deleted objects whose bus state is to go
        self._released: set[str] = set()  # uids of releasing objects whose bus state went
        self._unreleased = False  # the last pass failed to remove some bus state: retry
        self._delete_topic = delete_topic
        # Deleted objects whose topic went, with when to delete it once more (loop time).
        self._recheck: list[tuple[float, dict]] = []
        self._resync_interval = resync_interval
        self._lock = asyncio.Lock()
        self._tickets = 0  # sync() calls and writes (writing()) so far, numbered
        self._syncs_covered = 0  # tickets that the last finished sync answered
        self._writes: set[int] = set()  # tickets of the writes under way
        self._no_writes = asyncio.Event()
        self._no_writes.set()
        self.syncs_shared = 0  # calls answered by another caller's sync (for tests and metrics)
        self._seen_revision = -1
        self._memo: Memo | None = None  # what the next reconcile may reuse
        self._full_reconcile_due = 0.0  # time.monotonic() of the next full reconcile
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    @property
    def store(self) -> ResourceStore:
        return self._store

    @property
    def policy(self) -> ControlPolicy:
        return self._policy

    @contextlib.contextmanager
    def writing(self) -> Iterator[int]:
        """Around a write to the store that :meth:`sync` (given the ticket yielded) follows.

        A sync about to read the store first waits, up to :data:`COALESCE_WAIT`, for the writes
        under way to finish, so that one sync answers them all: a ``cemesh apply`` of 1,000
        objects sends them 64 at a time, and a sync per arrival was a sync per few objects,
        each reconciling everything (issue 14).
        """
        self._tickets += 1
        ticket = self._tickets
        self._writes.add(ticket)
        self._no_writes.clear()
        try:
            yield ticket
        finally:
            self._writes.discard(ticket)
            if not self._writes:
                self._no_writes.set()

    async def sync(self, ticket: int | None = None) -> None:
        """Bring the data plane and statuses up to date with the store, now.

        Concurrent callers share syncs: a call returns at once when a sync that began reading
        the store after this call began (after its write, for a ``ticket`` of
        :meth:`writing`) has finished meanwhile (it saw every write made before). N
        concurrent API writes then cost about two syncs, not N, each of which reconciles
        every object (issue 14).
        """
        if ticket is None:
            self._tickets += 1
            ticket = self._tickets
        async with self._lock:
            if self._syncs_covered >= ticket:
                self.syncs_shared += 1
                return
            if self._writes:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._no_writes.wait(), COALESCE_WAIT)
            # Every ticket up to the oldest write still under way began before the reads below
            # and, if it wrote, finished writing.
            covered = min(self._writes) - 1 if self._writes else self._tickets
            await self._sync_locked()
            self._syncs_covered = max(self._syncs_covered, covered)

    async def _sync_locked(self) -> None:
        """One sync; the caller holds ``self._lock``."""
        # Owned objects created in one pass are reconciled in the next: a Channel's backing
        # channel exists, then becomes Ready, then the Channel is Ready. A few passes settle.
        for _ in range(MAX_PASSES):
            revision = await self._store.revision()
            if not self._policy.ready():
                self._seen_revision = revision  # the first list moves the revision
                return
            # Deleted before this pass read the store: the snapshot applied below has no
            # consumer for them, so their groups may go once it is applied.
            retiring, self._retiring = self._retiring, []
            try:
                objects = await self._store.list()
                plan = self._policy.plan(objects)
                if plan is None:  # something referred to is being read: its arrival moves it
                    self._retiring[:0] = retiring
                    self._seen_revision = revision
                    return
                result = await self._reconcile_plan(plan)
                await self._apply_snapshot(result.snapshot)
            except BaseException:
                self._retiring[:0] = retiring  # for the next sync that gets this far
                raise
            if not self._policy.writing:  # another replica writes (statuses, bus removals)
                self._seen_revision = revision
                self.synced.set()
                return
            present = {obj["metadata"]["uid"] for obj in objects}
            await self._release(
                plan, [obj for obj in retiring if obj["metadata"]["uid"] not in present]
            )
            managed = await self._policy.hold(plan.managed)
            written = await self._write_statuses(managed, result.statuses)
            changed = await self._converge_children(objects, result.children)
            written += changed
            if not changed:
                break
        # Every write moves the revision by one. If only our own writes moved it since the
        # last pass began, it is all seen; if someone else wrote meanwhile (another replica,
        # a component updating a status), the next poll syncs again.
        after = await self._store.revision()
        self._seen_revision = after if after - revision == written else revision
        self.synced.set()

    async def _reconcile_plan(self, plan: Plan) -> Reconciled:
        """Reconcile the plan's objects on the buses that open (the rest: not Ready)."""
        result = self._reconcile(plan.objects, {})
        self._bus_errors = await self._open_buses(_buses_of(result.snapshot))
        if self._bus_errors:
            result = self._reconcile(plan.objects, self._bus_errors)
        return self._policy.finish(plan, result)

    def deleted(self, obj: dict) -> None:
        """``obj`` was deleted from the store: remove what it left on the bus after the next
        apply. Call it before the :meth:`sync` that follows the deletion."""
        self._retiring.append(obj)

    async def _release(self, plan: Plan, gone: list[dict]) -> None:
        """Remove the bus state of the objects deleted from the store (``gone``: tried once)
        and of the plan's releasing ones (each once, until the policy lets it go); then tell
        the policy which of those went."""
        present = plan.objects
        now = asyncio.get_running_loop().time()
        due = [obj for when, obj in self._recheck if when <= now]
        self._recheck = [(when, obj) for when, obj in self._recheck if when > now]
        for obj in due:  # a second deletion, in case a replica re-created it (docstring)
            await self._remove_logged(obj, present, groups=False)
        for obj in gone:
            if await self._remove_logged(obj, present) and owned_topic(obj) is not None:
                self._recheck.append((now + RECHECK_POLLS * self._resync_interval, obj))
        failed: set[str] = set()
        for obj in plan.releasing:
            uid = str(obj["metadata"].get("uid"))
            if uid in self._released:
                continue
            if await self._remove_logged(obj, present):
                self._released.add(uid)
            else:
                failed.add(uid)
        # Forget released uids once nothing releasing names them (uids are never reused).
        self._released &= {str(obj["metadata"].get("uid")) for obj in plan.releasing}
        self._unreleased = bool(failed)
        await self._policy.release(plan, failed)

    async def _remove_logged(self, obj: dict, present: list[dict], groups: bool = True) -> bool:
        """:meth:`_remove_from_bus`, a failure logged; whether it succeeded."""
        try:
            await self._remove_from_bus(obj, present, groups=groups)
        except Exception:  # the resource is gone (or going) either way; its state lingers
            has_group = (_group(obj), obj.get("kind")) in GROUP_KINDS
            log.exception(
                "consumer group not retired" if has_group else "topic not deleted",
                extra={"kind": obj.get("kind"), "object": obj["metadata"].get("name")},
            )
            return False
        return True

    async def _remove_from_bus(self, obj: dict, present: list[dict], groups: bool = True) -> None:
        """What cemesh removes on the bus when ``obj`` is deleted: a Trigger's or a
        Subscription's consumer group; a Broker's or a channel implementation's topic, unless
        an object of ``present`` owns it too. Raises when the bus refuses."""
        kind = (_group(obj), obj.get("kind"))
        if groups and self._retire_groups is not None and kind in GROUP_KINDS:
            await self._retire_groups(obj)
        if self._delete_topic is not None:
            for topic in topics_to_delete([obj], present):
                await self._delete_topic(topic.name, topic.bus)

    def _recheck_due(self) -> bool:
        now = asyncio.get_running_loop().time()
        return any(when <= now for when, _ in self._recheck)

    @property
    def bus_errors(self) -> dict[str, str]:
        """Buses that failed to open at the last sync, with why."""
        return dict(self._bus_errors)

    def _reconcile(self, objects: list[dict], unavailable: dict[str, str]) -> Reconciled:
        with collector_paused():  # a synchronous stretch: no other task runs meanwhile
            return self._reconcile_now(objects, unavailable)

    def _reconcile_now(self, objects: list[dict], unavailable: dict[str, str]) -> Reconciled:
        """Reconcile, reusing the outcomes of the last reconcile for what did not change
        (a full reconcile every :data:`FULL_RECONCILE_INTERVAL` seconds)."""
        now = time.monotonic()
        memo = self._memo if now < self._full_reconcile_due else None
        if memo is None:
            self._full_reconcile_due = now + FULL_RECONCILE_INTERVAL
        result = reconcile(
            objects,
            memo=memo,
            incremental=True,
            catalog=self._catalog,
            base_url=self._base_url,
            default_delivery=self._default_delivery,
            default_channel=self._default_channel,
            unavailable_buses=unavailable,
            ingress_oidc=self._ingress_oidc,
            default_authorization_mode=self._default_authorization_mode,
            https_base_url=self._https_base_url,
            ca_certs=self._ca_certs,
        )
        self._memo = result.memo
        return result

    async def _write_statuses(self, objects: list[dict], statuses: dict[str, dict]) -> int:
        """Write the statuses that changed, :data:`STATUS_BATCH` per transaction; how many
        were written. A failed batch is logged and left for the next sync."""
        changes = []
        for obj in objects:
            metadata = obj["metadata"]
            status = statuses.get(metadata["uid"])
            if status is None or status == obj.get("status"):
                continue
            changes.append(
                StatusChange(
                    _group(obj), obj["kind"], metadata["namespace"], metadata["name"], status,
                    generation=metadata.get("generation"),
                )
            )  # fmt: skip
        written = 0
        for start in range(0, len(changes), STATUS_BATCH):
            batch = changes[start : start + STATUS_BATCH]
            try:
                written += await self._store.update_statuses(batch)
            except CemeshError as exc:  # a passing store error: the next sync writes them
                log.warning("statuses not written", extra={"count": len(batch), "why": str(exc)})
        return written

    async def _converge_children(self, objects: list[dict], desired: list[dict]) -> int:
        """Create, update and delete owned objects to match ``desired``; how many changed.

        An object is ours to manage when its controller ownerReference names a kind in
        the catalog's owner kinds; when its owner is gone or no longer wants it, it is deleted
        (garbage collection, as Kubernetes does with ownerReferences).
        """
        by_key = {_key(obj): obj for obj in objects}
        wanted = {_key(child): child for child in desired}
        changed = 0
        for key, child in wanted.items():
            try:
                admitted = admit(child, catalog=self._catalog)
                current = by_key.get(key)
                if current is None:
                    await self._store.create(admitted)
                    changed += 1
                elif _controller_uid(current) == _controller_uid(admitted) and current.get(
                    "spec"
                ) != admitted.get("spec"):
                    await self._store.replace(admitted)
                    changed += 1
            except CemeshError as exc:
                log.warning("owned object not written", extra={"object": key, "why": str(exc)})
        for key, obj in by_key.items():
            if key in wanted or _controller_kind(obj) not in self._catalog.owner_kinds:
                continue  # wanted, or not ours to manage: leave it alone
            try:
                await self._store.delete(*key)
                changed += 1
            except CemeshError as exc:
                log.info("owned object not deleted", extra={"object": key, "why": str(exc)})
            else:
                self.deleted(obj)  # an owned Subscription (of a Sequence, say): its group goes
        return changed

    def start(self) -> None:
        """Follow the store's changes made elsewhere (other replicas, direct DB edits, a
        cluster's watches) until :meth:`stop`."""
        self._policy.start()
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="cemesh-controller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._policy.stop()

    async def _poll(self) -> None:
        retry = False  # the last sync failed: sync again after a pause, whatever moved
        while True:
            try:
                if retry:
                    retry = False
                    await self.sync()
                    continue
                revision = await self._store.next_revision(
                    self._seen_revision, self._resync_interval
                )
                # A bus that failed to open is tried again on every poll, and bus state of
                # deleted resources still to remove is removed after the next apply (topics twice).
                if (
                    self._bus_errors
                    or self._retiring
                    or self._unreleased
                    or self._recheck_due()
                    or revision != self._seen_revision
                ):
                    await self.sync()
            except Exception:  # keep the loop alive: a store outage must not stop the data plane
                log.exception("resync failed; will try again")
                retry = True
                await asyncio.sleep(self._resync_interval)
