"""The control loop: store -> reconcile -> data plane, then statuses back into the store.

After every write through the API (and every ``resync_interval`` seconds, when the store's
revision moved because another replica wrote) the controller reads all resources, computes their
statuses and the runtime :class:`~broker.core.spec.Snapshot` with the pure
:func:`broker.controlplane.reconcile.reconcile`, hands the snapshot to the data plane, and only then
writes the statuses (so a Trigger is reported Ready only once its subscription is live: K61).

Retiring consumer groups. A deleted Trigger or Subscription leaves its consumer group on the bus
(a Kafka group, a JetStream consumer, a Pub/Sub subscription collecting every event for days).
The controller is told of deletions (:meth:`Controller.deleted`, by the API; its own garbage
collection of owned objects) and calls ``retire_groups`` for each object once a snapshot built
without it has been applied, i.e. once the dispatcher stopped consuming its group. Only deletion
retires a group: a Trigger that is merely not Ready keeps its group, which goes on collecting
events for when it is Ready again. A failure is logged, never raised: the resource is gone
either way.

Deleting topics. Likewise, a deleted Broker or channel implementation leaves its topic on the bus
(a Kafka topic, a JetStream stream, a Redis stream, a Pub/Sub topic, with what they hold). Once
a snapshot without it has been applied, ``delete_topic`` is called for each topic that
:func:`broker.controlplane.eventing.topics.topics_to_delete` says the deletion frees (never one
that an object still in the store owns: a Broker applied again under the same name keeps it).
Another replica may still serve the Broker until its next poll, and re-create the topic (empty)
meanwhile: its consumer finds the topic gone, its ingress publishes. So each topic is deleted
once more after :data:`RECHECK_POLLS` resync intervals, when every replica polling as often has
applied a snapshot without it (replicas share ``CEMESH_RESYNC_INTERVAL``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker.controlplane.admission import admit
from broker.controlplane.catalog import Catalog
from broker.controlplane.eventing.topics import OwnedTopic, owned_topic, topics_to_delete
from broker.controlplane.reconcile import Reconciled, reconcile
from broker.controlplane.resource_store import ResourceStore, StatusChange
from broker.controlplane.resources import SUBSCRIPTION, TRIGGER
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

MAX_PASSES = 6  # owner -> owned -> owned-by-owned -> ready: enough for Sequence and Parallel
# Statuses written per store transaction: one commit for many (the first sync after a start
# writes every object's status), yet a bounded hold of the store's write lock.
STATUS_BATCH = 200
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
    ) -> None:
        self._store = store
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
        self._delete_topic = delete_topic
        # Deleted Triggers/Subscriptions whose group is to go, Brokers/Channels whose topic is.
        self._retiring: list[dict] = []
        # Objects whose topic was deleted, with when to delete it once more (loop time).
        self._recheck: list[tuple[float, dict]] = []
        self._resync_interval = resync_interval
        self._lock = asyncio.Lock()
        self._sync_requests = 0  # sync() calls so far
        self._syncs_covered = 0  # calls that the last finished sync answered
        self.syncs_shared = 0  # calls answered by another caller's sync (for tests and metrics)
        self._seen_revision = -1
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    async def sync(self) -> None:
        """Bring the data plane and statuses up to date with the store, now.

        Concurrent callers share syncs: a call returns at once when a sync that began reading
        the store after this call began has finished meanwhile (it saw every write made before
        the call). N concurrent API writes then cost about two syncs, not N, each of which
        reconciles every object (issue 14).
        """
        self._sync_requests += 1
        ticket = self._sync_requests
        async with self._lock:
            if self._syncs_covered >= ticket:
                self.syncs_shared += 1
                return
            covered = self._sync_requests  # every call so far began before the reads below
            await self._sync_locked()
            self._syncs_covered = covered

    async def _sync_locked(self) -> None:
        """One sync; the caller holds ``self._lock``."""
        # Owned objects created in one pass are reconciled in the next: a Channel's backing
        # channel exists, then becomes Ready, then the Channel is Ready. A few passes settle.
        for _ in range(MAX_PASSES):
            # Deleted before this pass read the store: the snapshot applied below has no
            # consumer for them, so their groups may go once it is applied.
            retiring, self._retiring = self._retiring, []
            try:
                revision = await self._store.revision()
                objects = await self._store.list()
                result = self._reconcile(objects, {})
                self._bus_errors = await self._open_buses(_buses_of(result.snapshot))
                if self._bus_errors:
                    result = self._reconcile(objects, self._bus_errors)
                await self._apply_snapshot(result.snapshot)
            except BaseException:
                self._retiring[:0] = retiring  # for the next sync that gets this far
                raise
            await self._retire(retiring, objects)
            written = await self._write_statuses(objects, result.statuses)
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

    def deleted(self, obj: dict) -> None:
        """``obj`` was deleted from the store: retire its consumer group (a Trigger's, a
        Subscription's) or delete its topic (a Broker's, a channel implementation's) after the
        next apply. Call it before the :meth:`sync` that follows the deletion; other kinds are
        ignored.
        """
        has_group = (_group(obj), obj.get("kind")) in GROUP_KINDS
        if (self._retire_groups is not None and has_group) or (
            self._delete_topic is not None and owned_topic(obj) is not None
        ):
            self._retiring.append(obj)

    async def _retire(self, retiring: list[dict], objects: list[dict]) -> None:
        """Retire the groups, then delete the topics, of ``retiring`` (gone from ``objects``)."""
        present = {obj["metadata"]["uid"] for obj in objects}
        gone = [obj for obj in retiring if obj["metadata"].get("uid") not in present]
        for obj in gone:  # (a uid still present is never expected: uids are not reused)
            if self._retire_groups is None or (_group(obj), obj.get("kind")) not in GROUP_KINDS:
                continue
            try:
                await self._retire_groups(obj)
            except Exception:  # the resource is gone either way; the group only lingers
                log.exception(
                    "consumer group of a deleted resource not deleted",
                    extra={"kind": obj.get("kind"), "name": obj["metadata"].get("name")},
                )
        if self._delete_topic is None:
            return
        now = asyncio.get_running_loop().time()
        due = [obj for when, obj in self._recheck if when <= now]
        self._recheck = [(when, obj) for when, obj in self._recheck if when > now]
        for topic in topics_to_delete(due, objects):
            await self._delete_topic_logged(topic)
        later = now + RECHECK_POLLS * self._resync_interval
        for obj in gone:
            for topic in topics_to_delete([obj], objects):
                if await self._delete_topic_logged(topic):
                    self._recheck.append((later, obj))

    async def _delete_topic_logged(self, topic: OwnedTopic) -> bool:
        """Delete ``topic``; whether that worked (a failure is logged)."""
        assert self._delete_topic is not None
        try:
            await self._delete_topic(topic.name, topic.bus)
        except Exception:  # the resource is gone either way; the topic only lingers
            log.exception("topic of a deleted resource not deleted", extra={"topic": topic.name})
            return False
        return True

    def _recheck_due(self) -> bool:
        now = asyncio.get_running_loop().time()
        return any(when <= now for when, _ in self._recheck)

    @property
    def bus_errors(self) -> dict[str, str]:
        """Buses that failed to open at the last sync, with why."""
        return dict(self._bus_errors)

    def _reconcile(self, objects: list[dict], unavailable: dict[str, str]) -> Reconciled:
        return reconcile(
            objects,
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
                    _group(obj), obj["kind"], metadata["namespace"], metadata["name"], status
                )
            )
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
        """Poll the store for changes made elsewhere (other replicas, direct DB edits)."""
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="cemesh-controller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            try:
                # A bus that failed to open is tried again on every poll, groups and topics
                # of deleted resources still to go are deleted after the next apply, and
                # deleted topics due for their second deletion get it.
                if (
                    self._bus_errors
                    or self._retiring
                    or self._recheck_due()
                    or await self._store.revision() != self._seen_revision
                ):
                    await self.sync()
            except Exception:  # keep the loop alive: a store outage must not stop the data plane
                log.exception("resync failed; will try again")
