"""Archive and Replay status, and the specs the archive component runs. Pure, like
:mod:`broker.controlplane.reconcile`; reconciled after the eventing kinds (Brokers, Triggers).

- An Archive is Ready when its Broker is (condition ``BrokerReady``) and its filter compiles
  (``FilterValid``); then an :class:`~broker.dataplane.archive.ArchiveSpec` (the Broker's topic
  and bus, the compiled filter, the retention in seconds) goes to
  ``snapshot.components["archive"]["archive/<uid>"]``.
- A Replay needs its Archive Ready (``ArchiveReady``) and its targets (``TargetsReady``: the
  named Trigger, or every Ready Trigger of the archive's Broker); then a :class:`ReplaySpec` goes
  to ``snapshot.components["archive"]["replay/<uid>"]``. Its progress (``replayed``, ``total``,
  ``startedAt``, ``completedAt``) is written into its status by the component
  (:mod:`broker.features.archive.component`) and kept here; ``Succeeded`` is Unknown while it
  runs and True once ``completedAt`` is set, after which nothing else matters to its status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.controlplane.resources import BROKER, TRIGGER
from broker.controlplane.world import Conditions, Obj, World, base_status
from broker.core.durations import parse_duration
from broker.core.errors import InvalidResource
from broker.dataplane.archive import ArchiveSpec, archive_group
from broker.dataplane.dispatch.filters import compile_trigger_filter
from broker.features.archive.kinds import ARCHIVE, DEFAULT_RATE, replay_rate
from broker.features.archive.policy import parse_instant

COMPONENT = "archive"
# The status fields the component writes (progress), which reconcile keeps as they are.
PROGRESS_FIELDS = ("replayed", "total", "startedAt", "completedAt")


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """A Replay ready to run: the archive's events of [start_us, end_us) to ``triggers``."""

    namespace: str
    name: str
    uid: str
    archive_uid: str
    start_us: int
    end_us: int
    rate: float  # events per second at most
    triggers: tuple[str, ...]  # uids of the Triggers it delivers to


def archive_key(uid: str) -> str:
    return f"archive/{uid}"


def replay_key(uid: str) -> str:
    return f"replay/{uid}"


def reconcile_archive(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    broker = str(spec.get("broker", ""))
    conditions = Conditions(obj, world.now)
    broker_spec = world.brokers.get((namespace, broker))
    if world.find((BROKER.group, BROKER.kind, namespace, broker)) is None:
        conditions.set(
            "BrokerReady",
            "False",
            "BrokerDoesNotExist",
            f'Broker "{namespace}/{broker}" does not exist',
        )
    elif broker_spec is None:
        conditions.set(
            "BrokerReady", "False", "BrokerNotReady", f'Broker "{namespace}/{broker}" is not Ready'
        )
    else:
        conditions.set("BrokerReady", "True")
    try:
        predicate, text = compile_trigger_filter(spec)
        retention = parse_duration(spec.get("retention", "P7D"), "spec.retention")
    except InvalidResource as exc:  # stored before a rule tightened
        conditions.set("FilterValid", "False", "InvalidSpec", str(exc))
    else:
        conditions.set("FilterValid", "True")
        if broker_spec is not None:
            world.components.setdefault(COMPONENT, {})[archive_key(uid)] = ArchiveSpec(
                namespace=namespace,
                name=name,
                uid=uid,
                broker=broker,
                topic=broker_spec.topic,
                bus=broker_spec.bus,
                group=archive_group(uid),
                retention=retention,
                filter=predicate,
                filter_source=text,
            )
    status = base_status(obj, conditions)
    status["broker"] = broker
    world.statuses[uid] = status


def _targets(obj: Obj, world: World, broker: str, conditions: Conditions) -> tuple[str, ...]:
    """uids of the Ready Triggers a Replay delivers to; sets ``TargetsReady``."""
    namespace = obj["metadata"]["namespace"]
    wanted = (obj.get("spec") or {}).get("trigger")
    if wanted is None:
        ready = sorted(
            (t.name, uid)
            for uid, t in world.triggers.items()
            if (t.namespace, t.broker) == (namespace, broker)
        )
        if not ready:
            conditions.set(
                "TargetsReady",
                "False",
                "NoReadyTriggers",
                f'Broker "{broker}" has no Ready Trigger',
            )
            return ()
        conditions.set("TargetsReady", "True")
        return tuple(uid for _, uid in ready)
    trigger = world.find((TRIGGER.group, TRIGGER.kind, namespace, str(wanted)))
    if trigger is None:
        conditions.set(
            "TargetsReady", "False", "TriggerDoesNotExist", f'Trigger "{wanted}" does not exist'
        )
        return ()
    trigger_uid = trigger["metadata"]["uid"]
    if (trigger.get("spec") or {}).get("broker") != broker:
        conditions.set(
            "TargetsReady",
            "False",
            "TriggerOfAnotherBroker",
            f'Trigger "{wanted}" is not a Trigger of Broker "{broker}"',
        )
        return ()
    if trigger_uid not in world.triggers:
        conditions.set(
            "TargetsReady", "False", "TriggerNotReady", f'Trigger "{wanted}" is not Ready'
        )
        return ()
    conditions.set("TargetsReady", "True")
    return (trigger_uid,)


def _progress_message(stored: dict[str, Any]) -> str:
    return f"{stored.get('replayed', 0)} of {stored.get('total', '?')} events replayed"


def reconcile_replay(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    stored = dict(obj.get("status") or {})
    conditions = Conditions(obj, world.now)
    if stored.get("completedAt"):  # done: its inputs may come and go, its outcome stays
        conditions.set("Succeeded", "True", "Replayed", _progress_message(stored))
        _store_replay_status(obj, world, conditions, stored)
        return
    archive = world.find((ARCHIVE.group, ARCHIVE.kind, namespace, str(spec.get("archive", ""))))
    archive_spec = None
    if archive is None:
        conditions.set(
            "ArchiveReady",
            "False",
            "ArchiveDoesNotExist",
            f'Archive "{spec.get("archive")}" does not exist',
        )
    else:
        archive_spec = world.components.get(COMPONENT, {}).get(
            archive_key(archive["metadata"]["uid"])
        )
        if archive_spec is None:
            conditions.set(
                "ArchiveReady",
                "False",
                "ArchiveNotReady",
                f'Archive "{spec.get("archive")}" is not Ready',
            )
        else:
            conditions.set("ArchiveReady", "True")
    broker = str(((archive or {}).get("spec") or {}).get("broker", ""))
    targets = _targets(obj, world, broker, conditions) if archive is not None else ()
    conditions.set(
        "Succeeded",
        "Unknown",
        "Replaying" if stored.get("startedAt") else "Waiting",
        _progress_message(stored),
    )
    if archive_spec is not None and targets:
        try:
            start = parse_instant(spec.get("startTime"), "spec.startTime")
            end = parse_instant(spec.get("endTime"), "spec.endTime")
            rate = replay_rate(spec.get("rate", DEFAULT_RATE))
        except InvalidResource as exc:  # stored before a rule tightened
            conditions.set("SpecValid", "False", "InvalidSpec", str(exc))
        else:
            world.components.setdefault(COMPONENT, {})[replay_key(uid)] = ReplaySpec(
                namespace=namespace,
                name=name,
                uid=uid,
                archive_uid=archive["metadata"]["uid"],  # type: ignore[index]
                start_us=start,
                end_us=end,
                rate=rate,
                triggers=targets,
            )
    _store_replay_status(obj, world, conditions, stored)


def _store_replay_status(
    obj: Obj, world: World, conditions: Conditions, stored: dict[str, Any]
) -> None:
    status = base_status(obj, conditions)
    status.update({key: stored[key] for key in PROGRESS_FIELDS if key in stored})
    world.statuses[obj["metadata"]["uid"]] = status
