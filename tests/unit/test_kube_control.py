"""The pure parts of cemesh's Kubernetes control plane (broker/kube): what is cemesh's, how
destinations resolve in a cluster, Knative's status shape, Lease decisions, the relist diff.

Core kinds (a v1 Service as a subscriber, a ConfigMap as a Broker's ``spec.config``) are not
served by the test API server; they are tested here against responses in Kubernetes' shape in
``tests/data/kube/core`` (see its README: written for the project, not captured).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.controlplane.kube.lease import held_spec, may_acquire
from broker.controlplane.kube.policy import (
    FINALIZER,
    UNRESOLVED_URI,
    finish,
    resolve_objects,
    select,
)
from broker.controlplane.kube.resolution import resolve_destination
from broker.controlplane.kube.status import knative_broker_status
from broker.controlplane.kube.watch import ADD, DELETE, UPDATE, diff_states, object_key
from broker.controlplane.world import Unresolvable
from broker.core.spec import DeliveryPolicy
from broker.server.features import reconcile

CORE = Path(__file__).resolve().parents[1] / "data" / "kube" / "core"
NS = "shop"


def recorded(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CORE / name).read_text())
    return document


def broker(name: str, broker_class: str = "cemesh", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-b-{name}", "generation": 1,
                     "annotations": {"eventing.knative.dev/broker.class": broker_class}, **meta},
        "spec": {},
    }  # fmt: skip


def trigger(name: str, broker_name: str, subscriber: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-t-{name}", "generation": 1,
                     **meta},
        "spec": {"broker": broker_name, "subscriber": subscriber},
    }  # fmt: skip


def lookup_of(*objects: dict[str, Any]) -> Any:
    index = {
        (o["apiVersion"], o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in objects
    }
    return lambda api_version, kind, namespace, name: index.get(
        (api_version, kind, namespace, name)
    )


def names(objects: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objects]


# -- what is cemesh's ---------------------------------------------------------------------


def test_only_brokers_of_cemeshs_class_and_their_triggers_are_selected() -> None:
    chosen = select(
        [broker("ours"), broker("theirs", "MTChannelBasedBroker"), broker("unset", "")],
        [trigger("a", "ours", {}), trigger("b", "theirs", {}), trigger("c", "unset", {}),
         trigger("d", "missing", {})],
        "cemesh",
    )  # fmt: skip
    assert names(chosen.brokers) == ["ours"]
    assert names(chosen.triggers) == ["a"]
    assert chosen.released_brokers == chosen.released_triggers == []


def test_a_broker_switched_to_another_class_is_released_with_its_triggers() -> None:
    finalized: dict[str, Any] = {"finalizers": [FINALIZER]}
    chosen = select(
        [broker("was-ours", "MTChannelBasedBroker", **finalized)],
        [trigger("t", "was-ours", {}, **finalized)],
        "cemesh",
    )
    assert chosen.brokers == chosen.triggers == []
    assert names(chosen.released_brokers) == ["was-ours"]
    assert names(chosen.released_triggers) == ["t"]


def test_a_deleted_trigger_is_released_and_one_whose_broker_is_gone_stays_cemeshs() -> None:
    finalized: dict[str, Any] = {"finalizers": [FINALIZER]}
    deleting: dict[str, Any] = {**finalized, "deletionTimestamp": "2026-12-01T00:00:00Z"}
    chosen = select(
        [broker("ours")],
        [trigger("going", "ours", {}, **deleting), trigger("orphan", "gone", {}, **finalized)],
        "cemesh",
    )
    assert names(chosen.released_triggers) == ["going"]
    assert names(chosen.triggers) == ["orphan"]  # BrokerReady False, its deletion still cleans


def test_the_triggers_of_a_broker_being_deleted_stay_cemeshs_and_are_orphaned() -> None:
    """Their groups go with the Broker; they stay (BrokerReady False) with the finalizer, and a
    Trigger of it being deleted itself is released as usual."""
    deleting: dict[str, Any] = {
        "finalizers": [FINALIZER],
        "deletionTimestamp": "2026-12-01T00:00:00Z",
    }
    chosen = select(
        [broker("ours", **deleting)],
        [
            trigger("t", "ours", {}, finalizers=[FINALIZER]),
            trigger("going", "ours", {}, **deleting),
        ],
        "cemesh",
    )
    assert names(chosen.released_brokers) == ["ours"]
    assert names(chosen.triggers) == names(chosen.orphaned_triggers) == ["t"]
    assert names(chosen.released_triggers) == ["going"]


# -- resolution -----------------------------------------------------------------------------


def test_a_core_service_resolves_to_its_cluster_dns_name() -> None:
    service = recorded("service.json")
    lookup = lookup_of(service)
    ref = {"ref": {"apiVersion": "v1", "kind": "Service", "name": "orders"}}
    assert resolve_destination(ref, NS, lookup).url == "http://orders.shop.svc.cluster.local/"
    relative = {**ref, "uri": "/v1/orders?x=1"}
    assert (resolve_destination(relative, NS, lookup).url
            == "http://orders.shop.svc.cluster.local/v1/orders?x=1")  # fmt: skip


def test_a_missing_service_and_an_addressable_without_address_do_not_resolve() -> None:
    not_ready = {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "fn", "namespace": NS},
        "status": {"conditions": [{"type": "Ready", "status": "False",
                                   "reason": "RevisionFailed", "message": "image pull failed"}]},
    }  # fmt: skip
    lookup = lookup_of(not_ready)
    with pytest.raises(Unresolvable) as missing:
        resolve_destination({"ref": {"apiVersion": "v1", "kind": "Service", "name": "x"}},
                            NS, lookup)  # fmt: skip
    assert missing.value.reason == "DestinationNotFound"
    with pytest.raises(Unresolvable) as waiting:
        ref = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"}
        resolve_destination({"ref": ref}, NS, lookup)
    assert waiting.value.reason == "DestinationNotReady"
    assert "image pull failed" in waiting.value.message


def test_an_addressable_resolves_to_its_address_with_the_destinations_audience_first() -> None:
    ksvc = {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "fn", "namespace": "other"},
        "status": {"address": {"url": "http://fn.other.svc.cluster.local",
                               "audience": "published"}},
    }  # fmt: skip
    ref = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn",
           "namespace": "other"}  # fmt: skip
    lookup = lookup_of(ksvc)
    address = resolve_destination({"ref": ref}, NS, lookup)
    assert (address.url, address.audience) == ("http://fn.other.svc.cluster.local", "published")
    assert resolve_destination({"ref": ref, "audience": "mine"}, NS, lookup).audience == "mine"


@pytest.mark.parametrize(
    ("destination", "reason"),
    [({}, "DestinationInvalid"), ({"uri": "/relative"}, "DestinationInvalid"),
     ({"ref": {"kind": "Service", "name": "x"}}, "DestinationInvalid")],
)  # fmt: skip
def test_a_destination_without_an_absolute_uri_or_a_complete_ref_is_invalid(
    destination: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Unresolvable) as error:
        resolve_destination(destination, NS, lookup_of())
    assert error.value.reason == reason


def _reconciled(objects: list[dict[str, Any]], lookup: Any) -> tuple[dict[str, Any], Any]:
    resolved, failures = resolve_objects(
        [o for o in objects if o["kind"] == "Broker"],
        [o for o in objects if o["kind"] == "Trigger"],
        lookup,
    )
    extra = [o for o in objects if o["kind"] not in ("Broker", "Trigger")]
    result = reconcile(resolved + extra, base_url="http://cemesh.cemesh.svc",
                       default_delivery=DeliveryPolicy())  # fmt: skip
    return finish(resolved, result.statuses, result.snapshot, failures)


def test_a_trigger_whose_subscriber_does_not_resolve_is_not_ready_and_not_served() -> None:
    objects = [broker("default"),
               trigger("ok", "default", {"uri": "http://a.example/"}),
               trigger("bad", "default", {"ref": {"apiVersion": "v1", "kind": "Service",
                                                  "name": "nope"}})]  # fmt: skip
    statuses, snapshot = _reconciled(objects, lookup_of())
    bad = {c["type"]: c for c in statuses["uid-t-bad"]["conditions"]}
    assert bad["Ready"]["status"] == "False"
    assert bad["SubscriberResolved"]["reason"] == "DestinationNotFound"
    assert statuses["uid-t-bad"]["subscriberUri"] == ""
    assert set(snapshot.triggers) == {"uid-t-ok"}
    assert all(spec.subscriber_uri != UNRESOLVED_URI for spec in snapshot.triggers.values())


def test_a_broker_whose_dead_letter_sink_does_not_resolve_is_not_served_nor_its_triggers() -> None:
    sinkless = broker("default")
    sinkless["spec"]["delivery"] = {
        "deadLetterSink": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "dls"}}
    }
    statuses, snapshot = _reconciled(
        [sinkless, trigger("t", "default", {"uri": "http://a.example/"})], lookup_of()
    )
    conditions = {c["type"]: c for c in statuses["uid-b-default"]["conditions"]}
    assert conditions["DeadLetterSinkResolved"]["status"] == "False"
    assert conditions["Ready"]["status"] == "False"
    assert conditions["IngressReady"]["status"] != "True"
    assert not snapshot.brokers and not snapshot.triggers


def test_a_broker_config_configmap_picks_the_channel_kind() -> None:
    config_map = recorded("configmap-kafka-channel.json")
    configured = broker("default")
    configured["spec"]["config"] = {"apiVersion": "v1", "kind": "ConfigMap",
                                    "name": "kafka-channel"}  # fmt: skip
    statuses, _ = _reconciled([configured, config_map], lookup_of())
    status = statuses["uid-b-default"]
    assert status["annotations"]["knative.dev/channelKind"] == "KafkaChannel"


def test_a_ready_broker_gets_knatives_ingress_and_filter_conditions() -> None:
    statuses, snapshot = _reconciled([broker("default")], lookup_of())
    conditions = {c["type"]: c["status"] for c in statuses["uid-b-default"]["conditions"]}
    assert conditions["IngressReady"] == conditions["FilterReady"] == "True"
    assert conditions["Addressable"] == conditions["Ready"] == "True"
    assert statuses["uid-b-default"]["observedGeneration"] == 1
    assert set(snapshot.brokers) == {(NS, "default")}


def test_a_brokers_condition_keeps_its_transition_time_while_unchanged() -> None:
    first = knative_broker_status({"conditions": []}, served=True)
    again = knative_broker_status({"conditions": []}, served=True, previous=first)
    assert again == first
    stopped = knative_broker_status({"conditions": []}, served=False, previous=first)
    assert {c["type"]: c["status"] for c in stopped["conditions"]}["IngressReady"] == "Unknown"


# -- Lease decisions ----------------------------------------------------------------------

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


def test_a_lease_is_taken_when_free_or_expired_and_kept_by_its_holder() -> None:
    held = held_spec(None, "a", NOW, 15)
    assert may_acquire(None, "a", NOW)
    assert may_acquire(held, "a", NOW + timedelta(seconds=5))
    assert not may_acquire(held, "b", NOW + timedelta(seconds=14))
    assert may_acquire(held, "b", NOW + timedelta(seconds=16))
    taken = held_spec(held, "b", NOW + timedelta(seconds=16), 15)
    assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1
    renewed = held_spec(taken, "b", NOW + timedelta(seconds=20), 15)
    assert renewed["acquireTime"] == taken["acquireTime"]
    assert renewed["leaseTransitions"] == 1


# -- the relist diff ------------------------------------------------------------------------

names_ = st.sampled_from(["a", "b", "c", "d"])
states = st.dictionaries(names_, st.tuples(st.sampled_from(["u1", "u2"]), st.integers(1, 3)))


def _obj(name: str, uid: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"namespace": NS, "name": name, "uid": uid, "resourceVersion": str(rv)}}


@given(before=states, after=states)
def test_the_relist_diff_turns_the_known_state_into_the_listed_one(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]
) -> None:
    known = {object_key(o): o for o in (_obj(n, *v) for n, v in before.items())}
    listed = [_obj(n, *v) for n, v in after.items()]
    state = dict(known)
    for change, obj in diff_states(known, listed):
        key = object_key(obj)
        if change == DELETE:
            assert key in state
            del state[key]
        else:
            assert (key in state) == (change == UPDATE)
            assert change in (ADD, UPDATE)
            state[key] = dict(obj)
    assert state == {object_key(o): o for o in listed}
