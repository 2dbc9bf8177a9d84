"""Incremental reconcile (broker.controlplane.incremental): after any sequence of applies and
deletes of Brokers, Triggers, Channels and Subscriptions, a reconcile that reuses the previous
outcomes decides exactly what a reconcile from scratch decides, and it reconciles again only
the Triggers that changed or whose references changed."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.controlplane.incremental import Memo
from broker.controlplane.reconcile import Reconciled
from broker.core.spec import DeliveryPolicy
from broker.server.features import admit, reconcile

BASE = "http://127.0.0.1:8080"
DEFAULT = DeliveryPolicy(retry=3, timeout=30.0)
EVENTING = "eventing.knative.dev/v1"
MESSAGING = "messaging.knative.dev/v1"
Key = tuple[str, str]  # (kind, name): every object lives in namespace "default"


def _ref(kind: str, name: str) -> dict[str, Any]:
    api_version = EVENTING if kind in ("Broker", "Trigger") else MESSAGING
    return {"ref": {"apiVersion": api_version, "kind": kind, "name": name}}


DESTINATIONS = st.sampled_from(
    [
        {"uri": "http://sink.example.com/"},
        _ref("Broker", "b0"),
        _ref("Broker", "b1"),
        _ref("Channel", "c0"),
        _ref("InMemoryChannel", "c1"),
        _ref("Trigger", "t0"),  # not addressable: DestinationNotSupported
    ]
)
DEPENDENCIES = st.sampled_from(
    [
        None,
        '{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b1"}',
        '{"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": "t0"}',
        "not json",
    ]
)


@st.composite
def brokers(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    delivery = draw(st.sampled_from([None, "retry", "sink"]))
    if delivery == "retry":
        spec["delivery"] = {"retry": 2}
    elif delivery == "sink":
        spec["delivery"] = {"deadLetterSink": draw(DESTINATIONS)}
    if draw(st.booleans()):
        spec["config"] = {"apiVersion": MESSAGING, "kind": "KafkaChannel"}
    name = draw(st.sampled_from(["b0", "b1"]))
    return {"apiVersion": EVENTING, "kind": "Broker", "metadata": {"name": name}, "spec": spec}


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "broker": draw(st.sampled_from(["b0", "b1"])),
        "subscriber": draw(DESTINATIONS),
        "filter": {"attributes": {"type": draw(st.sampled_from(["a", "b"]))}},
    }
    if draw(st.booleans()):
        spec["delivery"] = {"deadLetterSink": draw(DESTINATIONS)}
    dependency = draw(DEPENDENCIES)
    metadata: dict[str, Any] = {"name": draw(st.sampled_from(["t0", "t1", "t2", "t3"]))}
    if dependency is not None:
        metadata["annotations"] = {"knative.dev/dependency": dependency}
    return {"apiVersion": EVENTING, "kind": "Trigger", "metadata": metadata, "spec": spec}


@st.composite
def channels(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Channel", "InMemoryChannel"]))
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["delivery"] = {"deadLetterSink": draw(DESTINATIONS)}
    name = "c0" if kind == "Channel" else "c1"
    return {"apiVersion": MESSAGING, "kind": kind, "metadata": {"name": name}, "spec": spec}


@st.composite
def subscriptions(draw: st.DrawFn) -> dict[str, Any]:
    channel = draw(st.sampled_from([("Channel", "c0"), ("InMemoryChannel", "c1")]))
    spec: dict[str, Any] = {
        "channel": {"apiVersion": MESSAGING, "kind": channel[0], "name": channel[1]},
        "subscriber": draw(DESTINATIONS),
    }
    if draw(st.booleans()):
        spec["reply"] = draw(DESTINATIONS)
    name = draw(st.sampled_from(["s0", "s1"]))
    return {
        "apiVersion": MESSAGING,
        "kind": "Subscription",
        "metadata": {"name": name},
        "spec": spec,
    }


DELETABLE = st.sampled_from(
    [("Broker", "b0"), ("Broker", "b1"), ("Trigger", "t0"), ("Trigger", "t1"),
     ("Channel", "c0"), ("InMemoryChannel", "c1"), ("Subscription", "s0")]
)  # fmt: skip
STEPS = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(
                st.just("apply"), st.one_of(brokers(), triggers(), channels(), subscriptions())
            ),
            st.tuples(st.just("delete"), DELETABLE),
        ),
        st.booleans(),  # whether the controller's status writes succeed this sync
        st.sampled_from([{}, {"kafka": "bus down"}]),  # buses that failed to open
    ),
    min_size=1,
    max_size=25,
)


class Store:
    """Objects as cemesh's store keeps them: uid, generation bumped on a spec change, status."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self._uids = itertools.count()
        self._versions = itertools.count(1)

    def apply(self, body: dict[str, Any]) -> None:
        body = copy.deepcopy(body)
        # Annotations as stored, past admission: a dependency that no longer parses too.
        annotations = body["metadata"].pop("annotations", None)
        obj = admit(body)
        if annotations:
            obj["metadata"].setdefault("annotations", {}).update(annotations)
        key = (obj["kind"], obj["metadata"]["name"])
        old = self.objects.get(key)
        if old is not None and old.get("spec") == obj.get("spec"):
            return
        if old is None:
            obj["metadata"].update(uid=f"u{next(self._uids)}", generation=1)
        else:
            generation = old["metadata"]["generation"] + 1
            obj["metadata"].update(uid=old["metadata"]["uid"], generation=generation)
            if "status" in old:
                obj["status"] = old["status"]
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj

    def write(self, result: Reconciled) -> None:
        """What a sync writes back: every status, and the owned objects it wants."""
        for obj in self.objects.values():
            status = result.statuses.get(obj["metadata"]["uid"])
            if status is not None and status != obj.get("status"):
                obj["status"] = copy.deepcopy(status)
                obj["metadata"]["resourceVersion"] = str(next(self._versions))
        for child in result.children:
            if (child["kind"], child["metadata"]["name"]) not in self.objects:
                self.apply(child)


def _full_and_incremental(
    objects: list[dict[str, Any]], memo: Memo | None, unavailable: dict[str, str], now: str
) -> tuple[Reconciled, Reconciled]:
    options: dict[str, Any] = {
        "base_url": BASE,
        "default_delivery": DEFAULT,
        "unavailable_buses": unavailable,
        "now": now,
    }
    full = reconcile(copy.deepcopy(objects), **options)
    incremental = reconcile(objects, memo=memo, incremental=True, **options)
    return full, incremental


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_incremental_reconcile_decides_what_a_full_reconcile_decides(steps: list[Any]) -> None:
    store, memo = Store(), None
    for number, ((action, what), written, unavailable) in enumerate(steps):
        if action == "apply":
            store.apply(what)
        else:
            store.objects.pop(what, None)
        now = f"2030-01-01T00:00:{number:02d}.000000Z"
        full, incremental = _full_and_incremental(
            list(store.objects.values()), memo, unavailable, now
        )
        assert incremental.statuses == full.statuses
        assert incremental.snapshot == full.snapshot
        assert incremental.children == full.children
        memo = incremental.memo
        if written:
            store.write(full)


def _broker(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": EVENTING, "kind": "Broker", "metadata": {"name": name}, "spec": spec}


def _trigger(index: int, broker: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": EVENTING,
        "kind": "Trigger",
        "metadata": {"name": f"t{index}"},
        "spec": {"broker": broker, "subscriber": {"uri": f"http://sink.example.com/{index}"}},
    }


def _sync(store: Store, memo: Memo | None) -> Reconciled:
    result = reconcile(
        list(store.objects.values()),
        base_url=BASE,
        default_delivery=DEFAULT,
        memo=memo,
        incremental=True,
    )
    store.write(result)
    return result


def test_a_sync_reconciles_only_the_triggers_applied_since_the_last_one() -> None:
    store = Store()
    store.apply(_broker())
    for index in range(20):
        store.apply(_trigger(index))
    first = _sync(store, None)
    assert first.reused == 0
    settled = _sync(store, first.memo)  # the statuses written: nothing changed
    assert settled.reused == 20
    store.apply(_trigger(20))
    store.apply(_trigger(21))
    after = _sync(store, settled.memo)
    assert after.reused == 20  # the two new ones alone are reconciled
    assert len(after.snapshot.triggers) == 22


def test_a_changed_broker_reconciles_its_triggers_again_and_no_others() -> None:
    store = Store()
    store.apply(_broker("one"))
    store.apply(_broker("two"))
    for index in range(10):
        store.apply(_trigger(index, broker="one" if index < 4 else "two"))
    memo = _sync(store, _sync(store, None).memo).memo
    store.apply(_broker("one", delivery={"retry": 7}))
    result = _sync(store, memo)
    assert result.reused == 6  # the four Triggers of Broker "one" are reconciled again
    assert {spec.delivery.retry for spec in result.snapshot.triggers.values()} == {7, 3}
    store.objects.pop(("Broker", "two"))
    gone = _sync(store, result.memo)
    assert gone.reused == 4
    assert len(gone.snapshot.triggers) == 4  # those of the deleted Broker are not served
