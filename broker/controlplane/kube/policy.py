"""The cluster's policy for the one controller: cemesh-class Brokers and their Triggers.

With ``CEMESH_CONTROL_PLANE=kubernetes`` the :class:`~broker.controlplane.controller.Controller`
runs on :class:`~broker.controlplane.kube.resource_store.KubeResourceStore` (the Kubernetes API
behind the storage seam) with :class:`ClusterPolicy` as its
:class:`~broker.controlplane.control_policy.ControlPolicy`. One pass:

1. The store lists the Brokers and Triggers from its watches; every watch event moves its
   revision, which wakes the controller. The kinds destinations reference (any Addressable,
   core Services) and the ConfigMaps Brokers' ``spec.config`` name are watched from their first
   lookup (:class:`ClusterObjects`, the Kubernetes-only extension the store implements).
2. :func:`select` (pure) decides what is cemesh's: Brokers whose class annotation is
   ``broker_class`` and the Triggers of those Brokers. Brokers of other classes and their
   Triggers are never written to. What carries cemesh's finalizer but is no longer cemesh's
   (deleted, or its Broker switched class) is *released*.
3. Destinations are resolved in the cluster (:func:`resolve_objects`, with
   :mod:`broker.controlplane.kube.resolution`) and handed to the pure
   :func:`broker.controlplane.reconcile.reconcile` as URIs; it computes statuses and the
   data-plane snapshot. :func:`finish` (pure) then marks unresolved destinations and adds
   Knative's extra Broker conditions (:mod:`broker.controlplane.kube.status`), and the
   controller applies the snapshot (every replica serves the data plane).
4. The leader (:mod:`broker.controlplane.kube.lease`; every replica when there is no elector)
   writes: the controller removes the bus state of what is released and of Triggers orphaned
   by a Broker being deleted (the applied snapshot no longer consumes their groups),
   :meth:`ClusterPolicy.hold` adds the finalizer to what is cemesh's, the store writes the
   statuses that changed (:meth:`ClusterPolicy.status_written` records an Event for each that
   changed Ready, :mod:`broker.controlplane.kube.events`), and
   :meth:`ClusterPolicy.release` removes the finalizer from what was released. A Broker being
   deleted takes its Triggers' groups with it before its finalizer goes; the Triggers stay,
   BrokerReady False (``BrokerDoesNotExist``), and keep the finalizer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from broker.controlplane.catalog import Catalog
from broker.controlplane.control_policy import Plan
from broker.controlplane.controller import Controller
from broker.controlplane.kube.client import KubeConnection
from broker.controlplane.kube.events import ready_event, ready_transition
from broker.controlplane.kube.lease import LeaderElector
from broker.controlplane.kube.resolution import (
    CLUSTER_DOMAIN,
    Lookup,
    referenced_kinds,
    resolve_destination,
)
from broker.controlplane.kube.resource_store import KubeResourceStore
from broker.controlplane.kube.status import knative_broker_status, mark_unresolved
from broker.controlplane.kube.store import BROKERS, TRIGGERS, KubeKind, KubeStore, kube_kind
from broker.controlplane.reconcile import Reconciled
from broker.controlplane.resource_store import new_holder
from broker.controlplane.resources import BROKER_CLASS_ANNOTATION, trigger_broker
from broker.controlplane.world import Unresolvable
from broker.core.errors import CemeshError
from broker.core.spec import DeliveryPolicy, Snapshot
from broker.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

FINALIZER = "cemesh.dev/bus-cleanup"
DEFAULT_BROKER_CLASS = "cemesh"
# A destination that did not resolve is handed to reconcile as this URI; the object is then
# marked not Ready and kept out of the snapshot (mark_unresolved), so nothing is sent to it.
UNRESOLVED_URI = "http://unresolved.invalid/"

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> Key:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _deleting(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def _finalized(obj: Mapping[str, Any]) -> bool:
    return FINALIZER in (_meta(obj).get("finalizers") or [])


def broker_class_of(obj: Mapping[str, Any]) -> str:
    return str((_meta(obj).get("annotations") or {}).get(BROKER_CLASS_ANNOTATION) or "")


@dataclass
class Selection:
    """What one pass manages: cemesh's live objects, and those to release."""

    brokers: list[Obj] = field(default_factory=list)
    triggers: list[Obj] = field(default_factory=list)
    released_brokers: list[Obj] = field(default_factory=list)
    released_triggers: list[Obj] = field(default_factory=list)
    # Live Triggers of cemesh's Brokers being deleted: their groups go with the Broker.
    orphaned_triggers: list[Obj] = field(default_factory=list)


def broker_key_of(trigger: Mapping[str, Any]) -> Key:
    """(namespace, name) of the Broker a Trigger names."""
    return (_key(trigger)[0], trigger_broker(trigger.get("spec") or {}))


def select(brokers: Iterable[Obj], triggers: Iterable[Obj], broker_class: str) -> Selection:
    """Split Brokers and Triggers into cemesh's (live) and cemesh's to release. Pure.

    A Trigger is cemesh's while its Broker is of cemesh's class (also while that Broker is
    being deleted: the Trigger outlives it, BrokerReady False, and is *orphaned*: its group is
    retired with the Broker); while its Broker does not exist, only if it already carries the
    finalizer (it stays BrokerReady False, and its deletion still retires its group). It is
    released when it is being deleted, or when its Broker exists with another class.
    Everything else is not looked at.
    """
    selection = Selection()
    classes: dict[Key, str] = {}
    for broker in brokers:
        classes[_key(broker)] = broker_class_of(broker)
        ours = broker_class_of(broker) == broker_class
        if ours and not _deleting(broker):
            selection.brokers.append(broker)
        elif _finalized(broker):
            selection.released_brokers.append(broker)
    live_brokers = {_key(b) for b in selection.brokers}
    for trigger in triggers:
        broker_key = broker_key_of(trigger)
        known = classes.get(broker_key)
        ours = known == broker_class or (known is None and _finalized(trigger))
        if ours and not _deleting(trigger):
            selection.triggers.append(trigger)
            if known is not None and broker_key not in live_brokers:
                selection.orphaned_triggers.append(trigger)  # its Broker is being deleted
        elif _finalized(trigger):
            selection.released_triggers.append(trigger)
    return selection


@dataclass(frozen=True)
class Failure:
    """A destination of one object that did not resolve."""

    condition: str  # SubscriberResolved | DeadLetterSinkResolved
    uri_field: str  # subscriberUri | deadLetterSinkUri
    reason: str
    message: str


def resolve_objects(
    brokers: list[Obj], triggers: list[Obj], lookup: Lookup, cluster_domain: str = CLUSTER_DOMAIN
) -> tuple[list[Obj], dict[str, list[Failure]]]:
    """Copies of ``brokers`` and ``triggers`` with every destination replaced by its URI, and
    the failures by uid (their destination replaced by :data:`UNRESOLVED_URI`). Pure."""
    failures: dict[str, list[Failure]] = {}

    def resolved(obj: Obj, destination: Any, condition: str, uri_field: str, what: str) -> Any:
        if not isinstance(destination, Mapping):
            return destination
        namespace = _key(obj)[0]
        try:
            address = resolve_destination(destination, namespace, lookup,
                                          cluster_domain=cluster_domain)  # fmt: skip
        except Unresolvable as exc:
            failure = Failure(condition, uri_field, exc.reason, f"{what}: {exc.message}")
            failures.setdefault(str(_meta(obj).get("uid")), []).append(failure)
            return {"uri": UNRESOLVED_URI}
        plain = {"uri": address.url, "audience": address.audience, "CACerts": address.ca_certs}
        return {k: v for k, v in plain.items() if v}

    def with_delivery(obj: Obj) -> Obj:
        spec = dict(obj.get("spec") or {})
        delivery = spec.get("delivery")
        if isinstance(delivery, Mapping) and delivery.get("deadLetterSink") is not None:
            sink = resolved(obj, delivery["deadLetterSink"], "DeadLetterSinkResolved",
                            "deadLetterSinkUri", "dead-letter sink")  # fmt: skip
            spec["delivery"] = {**delivery, "deadLetterSink": sink}
        return {**obj, "spec": spec}

    out = [with_delivery(b) for b in brokers]
    for trigger in triggers:
        copy = with_delivery(trigger)
        copy["spec"]["subscriber"] = resolved(copy, copy["spec"].get("subscriber"),
                                              "SubscriberResolved", "subscriberUri",
                                              "subscriber")  # fmt: skip
        out.append(copy)
    return out, failures


def finish(
    objects: list[Obj], statuses: dict[str, dict[str, Any]], snapshot: Snapshot,
    failures: Mapping[str, list[Failure]],
) -> tuple[dict[str, dict[str, Any]], Snapshot]:  # fmt: skip
    """Statuses in Knative's shape and the snapshot without what did not resolve. Pure.

    A Broker whose dead-letter sink did not resolve is not served, nor are its Triggers.
    """
    statuses = dict(statuses)
    brokers = dict(snapshot.brokers)
    triggers = dict(snapshot.triggers)
    for obj in objects:
        uid = str(_meta(obj).get("uid"))
        for failure in failures.get(uid, []):
            statuses[uid] = mark_unresolved(statuses[uid], failure.condition, failure.uri_field,
                                            failure.reason, failure.message)  # fmt: skip
            if obj["kind"] == "Broker":
                brokers.pop(_key(obj), None)
            else:
                triggers.pop(uid, None)
    served = set(brokers)
    for uid, spec in list(triggers.items()):
        if (spec.namespace, spec.broker) not in served:
            triggers.pop(uid)
    for obj in objects:
        uid = str(_meta(obj).get("uid"))
        if obj["kind"] == "Broker" and uid in statuses:
            statuses[uid] = knative_broker_status(
                statuses[uid], served=_key(obj) in served, previous=obj.get("status")
            )
    return statuses, dataclasses.replace(snapshot, brokers=brokers, triggers=triggers)


class ClusterObjects(Protocol):
    """What the cluster policy needs of the Kubernetes API beyond the storage seam:
    lookups in the watch caches of referenced kinds, finalizers and Events. Implemented by
    :class:`~broker.controlplane.kube.resource_store.KubeResourceStore`."""

    def listed_once(self, kind: KubeKind) -> bool:
        """Whether lookups of ``kind`` answer now (listed, or known not to be listable)."""
        ...

    def unreadable(self, kind: KubeKind) -> str | None:
        """Why ``kind`` cannot be listed; None when it can."""
        ...

    def lookup(self, kind: KubeKind, namespace: str, name: str) -> Obj | None: ...

    async def add_finalizer(self, obj: Obj, finalizer: str) -> Obj: ...

    async def remove_finalizer(self, obj: Obj, finalizer: str) -> None: ...

    async def record_event(self, event: Obj) -> None:
        """Create a core v1 Event (best effort: a refusal is logged, never raised)."""
        ...

    def touch(self) -> None:
        """Wake the controller (leadership changed)."""
        ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class _Pass:
    """What :meth:`ClusterPolicy.plan` hands on to finish and release."""

    chosen: Selection
    failures: dict[str, list[Failure]]


class ClusterPolicy:
    """cemesh-class Brokers and their Triggers on a cluster (module docstring)."""

    def __init__(
        self,
        objects: ClusterObjects,
        *,
        broker_class: str = DEFAULT_BROKER_CLASS,
        elector: LeaderElector | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
    ) -> None:
        self.objects = objects
        self.broker_class = broker_class
        self.elector = elector
        self._cluster_domain = cluster_domain
        self._elector_task: asyncio.Task[None] | None = None
        self.on_stop: list[Callable[[], Awaitable[None]]] = []  # run by stop(), in order
        if elector is not None:  # a new leader writes what the old one left
            elector.on_change = lambda _leading: objects.touch()

    @property
    def writing(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def ready(self) -> bool:
        return self.objects.listed_once(BROKERS) and self.objects.listed_once(TRIGGERS)

    def plan(self, objects: list[Obj]) -> Plan | None:
        brokers = [obj for obj in objects if obj.get("kind") == BROKERS.kind]
        triggers = [obj for obj in objects if obj.get("kind") == TRIGGERS.kind]
        chosen = select(brokers, triggers, self.broker_class)
        destinations: list[Mapping[str, Any]] = []
        for obj in (*chosen.brokers, *chosen.triggers):
            spec = obj.get("spec") or {}
            destinations.append(spec.get("subscriber") or {})
            destinations.append((spec.get("delivery") or {}).get("deadLetterSink") or {})
        # Wait for the first list of every referenced kind (it moves the revision), unless
        # listing it fails: then what refers to it is not Ready, saying why (_lookup).
        if not all(
            self.objects.listed_once(kube_kind(api_version, kind))
            for api_version, kind in referenced_kinds(destinations)
        ):
            return None
        resolved, failures = resolve_objects(
            chosen.brokers, chosen.triggers, self._lookup, self._cluster_domain
        )
        return Plan(
            objects=resolved + self._config_maps(chosen.brokers),
            managed=[*chosen.brokers, *chosen.triggers],
            releasing=[
                *chosen.released_triggers,
                *chosen.orphaned_triggers,
                *chosen.released_brokers,
            ],
            context=_Pass(chosen, failures),
        )

    def _lookup(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The watched object, None when it does not exist; Unresolvable when its kind cannot
        be listed (not served by this API server, or not allowed)."""
        watched = kube_kind(api_version, kind)
        why = self.objects.unreadable(watched)
        if why is not None:
            raise Unresolvable(
                "DestinationNotReadable", f"cannot list {kind} ({api_version}): {why}"
            )
        return self.objects.lookup(watched, namespace, name)

    def _config_maps(self, brokers: list[Obj]) -> list[Obj]:
        """The ConfigMaps cemesh's Brokers name in ``spec.config`` (watched once named)."""
        wanted = set()
        for broker in brokers:
            config = (broker.get("spec") or {}).get("config") or {}
            if config.get("kind") == "ConfigMap" and config.get("name"):
                wanted.add((str(config.get("namespace") or _key(broker)[0]), str(config["name"])))
        found = []
        for namespace, name in sorted(wanted):
            try:
                config_map = self._lookup("v1", "ConfigMap", namespace, name)
            except Unresolvable:  # ConfigMaps cannot be listed: reconcile says ConfigNotFound
                continue
            if config_map is not None:
                found.append({**config_map, "apiVersion": "v1", "kind": "ConfigMap"})
        return found

    def finish(self, plan: Plan, reconciled: Reconciled) -> Reconciled:
        context: _Pass = plan.context
        statuses, snapshot = finish(
            plan.objects, reconciled.statuses, reconciled.snapshot, context.failures
        )
        return Reconciled(statuses, snapshot, reconciled.children)

    async def hold(self, objects: list[Obj]) -> list[Obj]:
        """cemesh's finalizer on each object (added when missing): its deletion waits for
        cemesh to remove its bus state. An object it cannot be added to is left out."""
        held = []
        for obj in objects:
            try:
                held.append(
                    obj if _finalized(obj) else await self.objects.add_finalizer(obj, FINALIZER)
                )
            except CemeshError as exc:  # deleted meanwhile, or the API failed: next pass
                log.info("finalizer not added", extra={"kind": obj.get("kind"),
                         "object": "/".join(_key(obj)), "why": exc.message})  # fmt: skip
        return held

    async def release(self, plan: Plan, failed: Collection[str]) -> None:
        """Remove cemesh's finalizer from the released Triggers whose group went, and from
        released Brokers none of whose Triggers' groups is left (the bus refused: retried
        next pass, the finalizer kept)."""
        context: _Pass = plan.context
        chosen = context.chosen
        kept: set[Key] = set()  # Brokers with a group the bus refused to delete
        for trigger in (*chosen.released_triggers, *chosen.orphaned_triggers):
            if str(_meta(trigger).get("uid")) in failed:
                kept.add(broker_key_of(trigger))
        for trigger in chosen.released_triggers:
            if str(_meta(trigger).get("uid")) not in failed:
                await self._unfinalize(trigger)
        for broker in chosen.released_brokers:
            if _key(broker) not in kept and str(_meta(broker).get("uid")) not in failed:
                await self._unfinalize(broker)

    async def status_written(self, before: Obj, status: dict[str, Any]) -> None:
        """A Kubernetes Event when the status just written changed Ready (told by the store)."""
        transition = ready_transition(before.get("status"), status)
        if transition is None:
            return
        instance = self.elector.identity if self.elector is not None else DEFAULT_BROKER_CLASS
        await self.objects.record_event(
            ready_event(before, transition, instance=instance, now=datetime.now(UTC))
        )

    async def _unfinalize(self, obj: Obj) -> None:
        try:
            await self.objects.remove_finalizer(obj, FINALIZER)
            log.info("released", extra={"kind": obj.get("kind"), "object": "/".join(_key(obj))})
        except CemeshError as exc:
            log.warning("finalizer not removed", extra={"object": _key(obj)[1], "why": exc.message})

    def start(self) -> None:
        """Watch the cluster; run for the Lease."""
        self.objects.start()
        if self.elector is not None:
            self._elector_task = asyncio.get_running_loop().create_task(
                self.elector.run(), name="cemesh-kube-lease"
            )

    async def stop(self) -> None:
        """Stop watching; hand leadership over at once (the Lease is released)."""
        await cancel_and_wait(self._elector_task)
        self._elector_task = None
        await self.objects.stop()
        if self.elector is not None:
            await self.elector.release()
        for close in self.on_stop:
            await close()


async def connect_control_plane(
    settings: Any,
    *,
    apply_snapshot: Callable[[Snapshot], Awaitable[None]],
    open_buses: Callable[[set[str]], Awaitable[dict[str, str]]],
    retire_groups: Callable[[dict], Awaitable[None]] | None,
    delete_topic: Callable[[str, str | None], Awaitable[None]] | None = None,
    default_delivery: DeliveryPolicy,
    catalog: Catalog,
    reconcile_options: Mapping[str, Any] | None = None,
) -> Controller:
    """The controller on the cluster ``settings`` describe (a :class:`broker.core.config.Settings`):
    connected (kubeconfig / in-cluster), with Lease-based leader election; it closes the
    connection on :meth:`~broker.controlplane.controller.Controller.stop`. Raises CemeshError
    when the configuration cannot load."""
    connection = await KubeConnection.connect(settings.kubeconfig, settings.kube_context)
    api = KubeStore(connection, namespaces=settings.kube_namespaces or None)
    elector = LeaderElector(api, namespace=settings.kube_lease_namespace, identity=new_holder())
    store = KubeResourceStore(
        api,
        lease_namespace=settings.kube_lease_namespace,
        progress_bound=settings.kube_watch_progress_bound,
    )
    policy = ClusterPolicy(store, broker_class=settings.broker_class, elector=elector)
    store.status_written = policy.status_written
    policy.on_stop.append(connection.close)
    return Controller(
        store,
        catalog=catalog,
        base_url=settings.base_url,
        default_delivery=default_delivery,
        default_channel=settings.default_channel,
        apply_snapshot=apply_snapshot,
        open_buses=open_buses,
        resync_interval=settings.resync_interval,
        retire_groups=retire_groups,
        delete_topic=delete_topic,
        policy=policy,
        **(reconcile_options or {}),
    )
