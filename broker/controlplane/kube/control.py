"""The Kubernetes control plane: cemesh-class Brokers and their Triggers, from the API server.

With ``CEMESH_CONTROL_PLANE=kubernetes`` this replaces the SQL-store controller's loop:

1. Brokers and Triggers are watched (:class:`~broker.controlplane.kube.watch.CollectionWatch`, all
   namespaces or a set); so are, on demand, the kinds their destinations reference (any Addressable,
   core Services) and the ConfigMaps their ``spec.config`` names. Any change marks the state dirty.
2. :func:`select` (pure) decides what is cemesh's: Brokers whose class annotation is
   ``broker_class`` and the Triggers of those Brokers. Brokers of other classes and their
   Triggers are never written to. What carries cemesh's finalizer but is no longer cemesh's
   (deleted, or its Broker switched class) is *released*.
3. Destinations are resolved in the cluster (:mod:`broker.controlplane.kube.resolution`) and handed
   to the pure :func:`broker.controlplane.reconcile.reconcile` as URIs; it computes statuses and the
   data-plane snapshot, which is applied (every replica serves the data plane). Unresolved
   destinations and Knative's extra Broker conditions are then filled in
   (:mod:`broker.controlplane.kube.status`).
4. The leader (:mod:`broker.controlplane.kube.lease`; every replica when there is no elector) writes
   the statuses that changed (status subresource, merge patch, guarded by resourceVersion), adds
   the finalizer to what is cemesh's, and, for what is released, retires the Triggers'
   consumer groups (the snapshot applied no longer consumes them) and removes the finalizer.
   A status write that changes Ready is also recorded as a Kubernetes Event
   (:mod:`broker.controlplane.kube.events`). A Broker being deleted takes its Triggers' groups
   with it before its finalizer goes; the Triggers stay, BrokerReady False
   (``BrokerDoesNotExist``), and keep the finalizer. Its topic goes too, before the finalizer
   (:func:`broker.controlplane.eventing.topics.topics_to_delete`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker.controlplane.catalog import Catalog
from broker.controlplane.eventing.topics import topics_to_delete
from broker.controlplane.kube.client import KubeConnection
from broker.controlplane.kube.events import ready_event, ready_transition
from broker.controlplane.kube.lease import LeaderElector
from broker.controlplane.kube.resolution import (
    CLUSTER_DOMAIN,
    Lookup,
    referenced_kinds,
    resolve_destination,
)
from broker.controlplane.kube.status import knative_broker_status, mark_unresolved
from broker.controlplane.kube.store import BROKERS, TRIGGERS, KubeKind, KubeStore, kube_kind
from broker.controlplane.kube.watch import Backoff, CollectionWatch
from broker.controlplane.reconcile import reconcile
from broker.controlplane.resource_store import new_holder
from broker.controlplane.resources import BROKER_CLASS_ANNOTATION, trigger_broker
from broker.controlplane.world import Unresolvable
from broker.core.errors import CemeshError
from broker.core.spec import DeliveryPolicy, Snapshot
from broker.core.tasks import cancel_all_and_wait

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


class KubeControlPlane:
    """Keeps the data plane and Knative's statuses in step with the API server (module doc).

    Same surface as :class:`broker.controlplane.controller.Controller` where the runtime uses it:
    :meth:`start`, :meth:`stop`, :meth:`sync`, :attr:`synced`, :attr:`bus_errors`.
    """

    def __init__(
        self,
        store: KubeStore,
        *,
        base_url: str,
        default_delivery: DeliveryPolicy,
        default_channel: str,
        apply_snapshot: Callable[[Snapshot], Awaitable[None]],
        open_buses: Callable[[set[str]], Awaitable[dict[str, str]]],
        retire_groups: Callable[[dict], Awaitable[None]] | None = None,
        delete_topic: Callable[[str, str | None], Awaitable[None]] | None = None,
        broker_class: str = DEFAULT_BROKER_CLASS,
        elector: LeaderElector | None = None,
        resync_interval: float = 30.0,
        progress_bound: float = 150.0,
        backoff: Backoff | None = None,
        cluster_domain: str = CLUSTER_DOMAIN,
        catalog: Catalog,
        reconcile_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.broker_class = broker_class
        self.elector = elector
        self._base_url = base_url
        self._default_delivery = default_delivery
        self._default_channel = default_channel
        self._apply_snapshot = apply_snapshot
        self._open_buses = open_buses
        self._retire_groups = retire_groups
        self._delete_topic = delete_topic
        self._resync_interval = resync_interval
        self._progress_bound = progress_bound
        self._backoff = backoff
        self._cluster_domain = cluster_domain
        self._catalog = catalog
        self._reconcile_options = dict(reconcile_options or {})
        self._bus_errors: dict[str, str] = {}
        self._watches: dict[KubeKind, list[CollectionWatch]] = {}
        # Kinds whose LIST/WATCH fails now (not served, forbidden), with why.
        self._unreadable: dict[KubeKind, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._retired: set[str] = set()  # uids whose consumer group is gone already
        self.synced = asyncio.Event()
        self.on_stop: list[Callable[[], Awaitable[None]]] = []  # run by stop(), in order
        if elector is not None:
            elector.on_change = lambda _leading: self._dirty.set()

    @property
    def bus_errors(self) -> dict[str, str]:
        return dict(self._bus_errors)

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader

    # -- watches ---------------------------------------------------------------------------

    def _watch(self, kind: KubeKind) -> list[CollectionWatch]:
        watches = self._watches.get(kind)
        if watches is None:

            async def on_change(_change: str, _obj: dict[str, Any]) -> None:
                self._dirty.set()

            def on_problem(problem: tuple[str, str] | None) -> None:
                if problem is None:
                    self._unreadable.pop(kind, None)
                elif kind not in self._unreadable:
                    self._unreadable[kind] = problem[1]
                    self._dirty.set()  # what refers to this kind says why it cannot resolve

            watches = self._watches[kind] = self.store.watch(
                kind,
                on_change,
                on_problem=on_problem,
                backoff=self._backoff,
                progress_bound=self._progress_bound,
            )
            for watch in watches:
                self._spawn(watch.run(), f"cemesh-kube-watch {watch.path}")
        return watches

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine, name=name))

    def _objects(self, kind: KubeKind) -> list[Obj]:
        return [obj for w in self._watch(kind) for obj in w.objects.values()]

    def _synced(self, kind: KubeKind) -> bool:
        return all(w.synced.is_set() for w in self._watch(kind))

    def _lookup(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """The watched object, None when it does not exist; Unresolvable when its kind cannot
        be listed (not served by this API server, or not allowed)."""
        watched = kube_kind(api_version, kind)
        watches = self._watch(watched)
        if not all(w.synced.is_set() for w in watches) and watched in self._unreadable:
            raise Unresolvable(
                "DestinationNotReadable",
                f"cannot list {kind} ({api_version}): {self._unreadable[watched]}",
            )
        for watch in watches:
            found = watch.objects.get((namespace, name))
            if found is not None:
                return found
        return None

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        """Watch and reconcile until :meth:`stop`."""
        self._watch(BROKERS)
        self._watch(TRIGGERS)
        if self.elector is not None:
            self._spawn(self.elector.run(), "cemesh-kube-lease")
        self._spawn(self._loop(), "cemesh-kube-control")

    async def stop(self) -> None:
        """Stop watching; hand leadership over at once (the Lease is released)."""
        await cancel_all_and_wait(self._tasks)
        self._tasks.clear()
        if self.elector is not None:
            await self.elector.release()
        for close in self.on_stop:
            await close()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._resync_interval):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.sync()
            except Exception:  # keep the loop alive: an API outage must not stop the data plane
                log.exception("Kubernetes reconcile failed; will try again")

    async def sync(self) -> None:
        """One pass (module docstring); does nothing until Brokers and Triggers are listed."""
        async with self._lock:
            if not (self._synced(BROKERS) and self._synced(TRIGGERS)):
                return
            chosen = select(self._objects(BROKERS), self._objects(TRIGGERS), self.broker_class)
            objects, failures = self._resolve(chosen)
            if objects is None:
                return  # a referenced kind is still being listed: its watch marks us dirty
            result = self._reconcile(objects, {})
            self._bus_errors = await self._open_buses(
                {b.bus for b in result.snapshot.brokers.values()}
            )
            if self._bus_errors:
                result = self._reconcile(objects, self._bus_errors)
            statuses, snapshot = finish(objects, result.statuses, result.snapshot, failures)
            await self._apply_snapshot(snapshot)
            self.synced.set()
            if self.leading:
                await self._write(chosen, statuses)
                await self._release(chosen)

    def _resolve(self, chosen: Selection) -> tuple[list[Obj] | None, dict[str, list[Failure]]]:
        destinations: list[Mapping[str, Any]] = []
        for obj in (*chosen.brokers, *chosen.triggers):
            spec = obj.get("spec") or {}
            destinations.append(spec.get("subscriber") or {})
            destinations.append((spec.get("delivery") or {}).get("deadLetterSink") or {})
        # Wait for the first list of every referenced kind (its watch marks us dirty), unless
        # listing it fails: then what refers to it is not Ready, saying why (_lookup).
        pending = False
        for api_version, kind in referenced_kinds(destinations):
            watched = kube_kind(api_version, kind)
            pending |= not self._synced(watched) and watched not in self._unreadable
        if pending:
            return None, {}
        objects, failures = resolve_objects(
            chosen.brokers, chosen.triggers, self._lookup, self._cluster_domain
        )
        return objects + self._config_maps(chosen.brokers), failures

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

    def _reconcile(self, objects: list[Obj], unavailable: dict[str, str]) -> Any:
        return reconcile(
            objects,
            base_url=self._base_url,
            default_delivery=self._default_delivery,
            default_channel=self._default_channel,
            unavailable_buses=unavailable,
            catalog=self._catalog,
            **self._reconcile_options,
        )

    async def _write(self, chosen: Selection, statuses: Mapping[str, dict[str, Any]]) -> None:
        """Finalizers on what is cemesh's, then the statuses that changed."""
        for kind, objects in ((BROKERS, chosen.brokers), (TRIGGERS, chosen.triggers)):
            for obj in objects:
                namespace, name = _key(obj)
                try:
                    if not _finalized(obj):
                        obj = await self.store.add_finalizer(kind, namespace, name, FINALIZER)
                    status = statuses.get(str(_meta(obj).get("uid")))
                    if status is None or status == obj.get("status"):
                        continue
                    if await self.store.update_status(kind, obj, status) is not None:
                        await self._record_event(obj, status)
                except CemeshError as exc:  # deleted meanwhile, or the API failed: next pass
                    log.info("status not written",
                             extra={"kind": kind.kind, "name": f"{namespace}/{name}",
                                    "why": exc.message})  # fmt: skip

    async def _record_event(self, obj: Obj, status: Mapping[str, Any]) -> None:
        """A Kubernetes Event when the status just written changed Ready (best effort)."""
        transition = ready_transition(obj.get("status"), status)
        if transition is None:
            return
        instance = self.elector.identity if self.elector is not None else DEFAULT_BROKER_CLASS
        event = ready_event(obj, transition, instance=instance, now=datetime.now(UTC))
        try:
            await self.store.create_event(event)
        except CemeshError as exc:  # e.g. Events not served or not allowed: statuses still tell
            log.info("event not recorded", extra={"reason": event["reason"], "why": exc.message})

    async def _release(self, chosen: Selection) -> None:
        """Retire the groups of released Triggers and of those orphaned by a Broker being
        deleted (the applied snapshot no longer consumes them); then remove cemesh's finalizer
        from the released Triggers, and from released Brokers none of whose groups is left and
        whose topic is deleted (``Bus.delete_topic``).
        """
        kept: set[Key] = set()  # Brokers with a group the bus refused to delete
        for trigger in chosen.released_triggers:
            if await self._retire(trigger):
                await self._unfinalize(TRIGGERS, trigger)
            else:
                kept.add(broker_key_of(trigger))
        for trigger in chosen.orphaned_triggers:
            if not await self._retire(trigger):
                kept.add(broker_key_of(trigger))
        # Forget retired uids once nothing to retire names them (uids are never reused).
        self._retired &= {
            str(_meta(t).get("uid")) for t in (*chosen.released_triggers, *chosen.orphaned_triggers)
        }
        for broker in chosen.released_brokers:
            if _key(broker) not in kept and await self._delete_topics(broker, chosen.brokers):
                await self._unfinalize(BROKERS, broker)

    async def _retire(self, trigger: Obj) -> bool:
        """Delete ``trigger``'s consumer group (once); whether it is gone."""
        uid = str(_meta(trigger).get("uid"))
        if uid in self._retired or self._retire_groups is None:
            return True
        try:
            await self._retire_groups(trigger)
        except Exception:  # the bus refused: keep the finalizer, retry next pass
            log.exception("consumer group not retired", extra={"uid": uid})
            return False
        self._retired.add(uid)
        return True

    async def _delete_topics(self, broker: Obj, live: list[Obj]) -> bool:
        """Delete the topic a released Broker frees; whether it is gone (else: retry later)."""
        if self._delete_topic is None:
            return True
        try:
            for topic in topics_to_delete([broker], live):
                await self._delete_topic(topic.name, topic.bus)
        except Exception:  # the bus refused: keep the finalizer, retry next pass
            log.exception("topic not deleted", extra={"uid": str(_meta(broker).get("uid"))})
            return False
        return True

    async def _unfinalize(self, kind: KubeKind, obj: Obj) -> None:
        namespace, name = _key(obj)
        try:
            await self.store.remove_finalizer(kind, namespace, name, FINALIZER)
            log.info("released", extra={"kind": kind.kind, "name": f"{namespace}/{name}"})
        except CemeshError as exc:
            log.warning("finalizer not removed", extra={"name": name, "why": exc.message})


async def connect_control_plane(
    settings: Any,
    *,
    apply_snapshot: Callable[[Snapshot], Awaitable[None]],
    open_buses: Callable[[set[str]], Awaitable[dict[str, str]]],
    retire_groups: Callable[[dict], Awaitable[None]] | None,
    default_delivery: DeliveryPolicy,
    delete_topic: Callable[[str, str | None], Awaitable[None]] | None = None,
    catalog: Catalog,
    reconcile_options: Mapping[str, Any] | None = None,
) -> KubeControlPlane:
    """The control plane ``settings`` describe (a :class:`broker.core.config.Settings`), connected
    (kubeconfig / in-cluster), with Lease-based leader election; it closes the connection on
    :meth:`~KubeControlPlane.stop`. Raises CemeshError when the configuration cannot load."""
    connection = await KubeConnection.connect(settings.kubeconfig, settings.kube_context)
    store = KubeStore(connection, namespaces=settings.kube_namespaces or None)
    elector = LeaderElector(store, namespace=settings.kube_lease_namespace, identity=new_holder())
    plane = KubeControlPlane(
        store,
        base_url=settings.base_url,
        default_delivery=default_delivery,
        default_channel=settings.default_channel,
        apply_snapshot=apply_snapshot,
        open_buses=open_buses,
        retire_groups=retire_groups,
        delete_topic=delete_topic,
        broker_class=settings.broker_class,
        elector=elector,
        resync_interval=settings.resync_interval,
        progress_bound=settings.kube_watch_progress_bound,
        catalog=catalog,
        reconcile_options=reconcile_options,
    )
    plane.on_stop.append(connection.close)
    return plane
