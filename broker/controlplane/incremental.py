"""Incremental reconcile: an object's outcome reused from the previous pass when nothing it
reads changed. Pure: a :class:`Memo` in, a new one out.

A reconcile pass (:func:`broker.controlplane.reconcile.reconcile`) reconciles every object. For
the kinds whose reconciler declares its ``references``
(:class:`~broker.controlplane.catalog.KindReconciler`: a Trigger reads its Broker, its
subscriber's and dead-letter sink's targets and its ``knative.dev/dependency``, nothing else),
the outcome of an object (its status, its runtime spec, the forward look-ups it made) is a
function of the object, of what it references as the pass shows it when the object's turn comes,
and of the pass's settings. :class:`MemoPass` keeps those outcomes, keyed by uid, with a
fingerprint of each referenced object (the object, its status computed this pass and the previous
one, the delivery it passes on, its Broker or channel runtime spec). The next pass reuses an
outcome when the object and every fingerprint are equal, and reconciles the object otherwise:
a Trigger applied or changed is reconciled alone, a Broker's change reconciles its Triggers
again, a deleted object those that referenced it. Kinds without ``references`` (few objects:
Brokers, channels, the features' kinds) are reconciled on every pass, so what they compute is
always fresh, and the kinds that read Triggers (an Archive) read them as a full pass leaves them.

Equal to a full reconcile because a reconcile is idempotent: an object whose stored status is the
one a pass decided gets that status again (conditions keep their ``lastTransitionTime`` when
their status stays). So an outcome is reused once its status is stored (or, in the settle
passes of one reconcile, with the same ``now``): a status not written yet, or written by someone
else, is a change. Settings (base URL, default delivery, buses unavailable, ...) differ:
nothing is reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.controlplane.catalog import Catalog, KindReconciler
from broker.controlplane.world import Obj, ObjKey, World, serves
from broker.core.spec import SubscriptionSpec, TriggerSpec

# What a pass shows of one referenced object (:func:`fingerprint`).
Fingerprint = tuple[Any, ...]
_ABSENT: Fingerprint = (None,)
_VERSION = "resourceVersion"  # moves with every write, status writes included; never read


@dataclass(frozen=True, slots=True)
class Outcome:
    """What reconciling one object decided, and what it read then."""

    obj: Obj  # the object as reconciled (its stored status included)
    status: Mapping[str, Any]
    trigger: TriggerSpec | None
    subscription: SubscriptionSpec | None
    references: tuple[tuple[ObjKey, Fingerprint], ...]
    forward: tuple[str, ...]  # uids it looked up forward (World.forward)
    now: str  # the pass's time then


@dataclass(frozen=True)
class Memo:
    """The outcomes of the last pass, by uid, and the settings they were decided under."""

    catalog: Catalog
    settings: tuple[Any, ...]
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)


def fingerprint(world: World, key: ObjKey) -> Fingerprint:
    """Everything a referrer may read of the object at ``key`` now. Its stored status and
    the previous pass's only while this pass has computed none (or an empty one) for it: a
    status written since (and the resourceVersion that moved with it) is no change then."""
    target = world.objects.get(key)
    if target is None:
        return _ABSENT
    uid = target["metadata"]["uid"]
    computed = world.statuses.get(uid)
    metadata = {name: value for name, value in target["metadata"].items() if name != _VERSION}
    return (
        {name: value for name, value in target.items() if name not in ("status", "metadata")},
        metadata,
        computed,
        None if computed else (target.get("status"), world.prior.get(uid)),
        world.parent_delivery.get(key),
        world.brokers.get(key[2:]),
        world.channels.get(key[2:]),
    )


def unchanged(obj: Obj, before: Outcome, now: str) -> bool:
    """Whether ``obj`` is the object ``before`` was decided for: equal but for
    ``metadata.resourceVersion``, its status the one decided, or the one stored then when
    ``now`` is the same too (``now`` dates the conditions that changed from the stored ones)."""
    old = before.obj
    status = obj.get("status")
    if status != before.status and (now != before.now or status != old.get("status")):
        return False
    if obj.keys() != old.keys():
        return False
    for name, value in obj.items():
        if name not in ("status", "metadata") and value != old[name]:
            return False
    metadata, old_metadata = obj["metadata"], old["metadata"]
    if metadata.keys() != old_metadata.keys():
        return False
    return all(
        value == old_metadata[name] for name, value in metadata.items() if name != "resourceVersion"
    )


class MemoPass:
    """One reconcile's use of the previous :class:`Memo`, building the next (module docstring).

    ``reused`` and ``reconciled`` count the objects of memoized kinds (for tests and logs).
    """

    def __init__(self, previous: Memo | None, catalog: Catalog, settings: tuple[Any, ...]) -> None:
        self._previous: Mapping[str, Outcome] = {}
        if previous is not None and previous.catalog is catalog and previous.settings == settings:
            self._previous = previous.outcomes
        self._catalog = catalog
        self._settings = settings
        self._outcomes: dict[str, Outcome] = {}
        self.reused = 0
        self.reconciled = 0

    def memo(self) -> Memo:
        """The outcomes of the last settle pass run, for the next reconcile."""
        return Memo(self._catalog, self._settings, dict(self._outcomes))

    def run(self, entry: KindReconciler, objects: list[Obj], world: World) -> None:
        """Reconcile ``objects`` of ``entry``'s kind into ``world``, reusing what holds."""
        references: Callable[[Obj], tuple[ObjKey, ...]] | None = entry.references
        if references is None:
            for obj in objects:
                entry.reconcile(obj, world)
            return
        # Fingerprints of other kinds' objects hold for the whole phase (only this kind's
        # statuses move in it): taken once, and compared with a previous one once.
        steady: dict[ObjKey, Fingerprint] = {}
        same: dict[tuple[int, int], bool] = {}
        previous, outcomes = self._previous, self._outcomes
        for obj in objects:
            uid = obj["metadata"]["uid"]
            read = []
            for key in references(obj):
                if key[1] == entry.kind and key[0] == entry.group:
                    read.append((key, fingerprint(world, key)))
                    continue
                taken = steady.get(key)
                if taken is None:
                    taken = steady[key] = fingerprint(world, key)
                read.append((key, taken))
            refs = tuple(read)
            before = previous.get(uid)
            if (
                before is not None
                and unchanged(obj, before, world.now)
                and _same(before.references, refs, same)
            ):
                self._replay(before, world)
                outcomes[uid] = Outcome(
                    obj,
                    before.status,
                    before.trigger,
                    before.subscription,
                    refs,
                    before.forward,
                    world.now,
                )
                self.reused += 1
                continue
            outcomes[uid] = self._reconcile(entry, obj, world, refs)
            self.reconciled += 1

    def next_pass(self) -> None:
        """A settle pass ends: the next one reuses what this one decided."""
        self._previous, self._outcomes = self._outcomes, {}
        self.reused = self.reconciled = 0

    @staticmethod
    def _replay(before: Outcome, world: World) -> None:
        uid = before.obj["metadata"]["uid"]
        world.statuses[uid] = dict(before.status)
        if before.trigger is not None:
            world.triggers[uid] = before.trigger
        if before.subscription is not None:
            world.subscriptions[uid] = before.subscription
        for target in before.forward:
            world.forward[target] = serves(world.prior.get(target))

    @staticmethod
    def _reconcile(
        entry: KindReconciler,
        obj: Obj,
        world: World,
        refs: tuple[tuple[ObjKey, Fingerprint], ...],
    ) -> Outcome:
        uid = obj["metadata"]["uid"]
        seen, world.forward = world.forward, {}
        try:
            entry.reconcile(obj, world)
        finally:
            recorded, world.forward = world.forward, seen
            seen.update(recorded)
        return Outcome(
            obj,
            dict(world.statuses[uid]),
            world.triggers.get(uid),
            world.subscriptions.get(uid),
            refs,
            tuple(recorded),
            world.now,
        )


def _same(
    before: tuple[tuple[ObjKey, Fingerprint], ...],
    now: tuple[tuple[ObjKey, Fingerprint], ...],
    same: dict[tuple[int, int], bool],
) -> bool:
    """Whether two reads of the same references saw the same. A previous fingerprint is shared
    by the referrers of one pass, and so is a current one of another kind's object: each pair
    is compared once (by identity: every fingerprint stays alive through the phase)."""
    if len(before) != len(now):
        return False
    for (key, old), (new_key, new) in zip(before, now, strict=True):
        if key != new_key:
            return False
        if old is new:
            continue
        memo_key = (id(old), id(new))
        verdict = same.get(memo_key)
        if verdict is None:
            verdict = same[memo_key] = old == new
        if not verdict:
            return False
    return True
