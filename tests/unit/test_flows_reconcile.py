"""Sequence and Parallel wiring and status, pure: Knative's names and references (K165, K171,
K172, K174), per-step and per-branch delivery (K167, K174), replies (K165, K174), addresses
(K166, K171), status shapes (K168, K176) and admission (K164, K170)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.controlplane.reconcile import Reconciled
from broker.controlplane.world import owner_reference
from broker.core.errors import InvalidResource
from broker.core.spec import DeliveryPolicy, channel_topic
from broker.features.flows.wiring import (
    ChannelTemplate,
    parallel_resources,
    sequence_resources,
)
from broker.server.features import admit, reconcile

BASE = "http://127.0.0.1:8080"
DEFAULT = DeliveryPolicy(retry=1, backoff_delay=0.1, timeout=5.0, retry_after_max=5.0)
FLOWS = "flows.knative.dev/v1"
MESSAGING = "messaging.knative.dev/v1"
IMC = {"apiVersion": MESSAGING, "kind": "InMemoryChannel"}


def step(url: str, **extra: Any) -> dict[str, Any]:
    return {"uri": url, **extra}


def sequence(name: str = "seq", **spec: Any) -> dict[str, Any]:
    spec.setdefault("steps", [step("http://a.example/"), step("http://b.example/")])
    obj = admit({"apiVersion": FLOWS, "kind": "Sequence", "metadata": {"name": name}, "spec": spec})
    obj["metadata"].update(uid=f"uid-{name}", generation=1)
    return obj


def parallel(name: str = "par", **spec: Any) -> dict[str, Any]:
    obj = admit({"apiVersion": FLOWS, "kind": "Parallel", "metadata": {"name": name}, "spec": spec})
    obj["metadata"].update(uid=f"uid-{name}", generation=1)
    return obj


def converge(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Reconciled]:
    """What the controller does: create the owned objects, reconcile again, until stable."""
    objects = list(objects)
    for _ in range(6):
        result = reconcile(objects, base_url=BASE, default_delivery=DEFAULT)
        keys = {(o["kind"], o["metadata"]["name"]) for o in objects}
        new = [c for c in result.children if (c["kind"], c["metadata"]["name"]) not in keys]
        for obj in objects:
            obj["status"] = result.statuses.get(obj["metadata"]["uid"], obj.get("status"))
        if not new:
            return objects, result
        for child in new:
            admitted = admit(child)
            uid = f"uid-{child['kind']}-{child['metadata']['name']}"
            admitted["metadata"].update(uid=uid, generation=1)
            objects.append(admitted)
    raise AssertionError("did not converge")


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def ready(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


# --- wiring -------------------------------------------------------------------------------------


def test_k165_k167_sequence_wiring_names_chain_replies_and_per_step_delivery() -> None:
    dls = {"deadLetterSink": {"uri": "http://dls.example/"}, "retry": 2}
    seq = sequence(
        steps=[step("http://a/"), step("http://b/", delivery=dls), step("http://c/")],
        reply={"uri": "http://reply.example/"},
        channelTemplate={**IMC, "spec": {"delivery": {"retry": 1}}},
    )
    owner = owner_reference(seq)
    owned = sequence_resources(seq, ChannelTemplate(MESSAGING, "InMemoryChannel"), owner)
    assert [c["metadata"]["name"] for c in owned.channels] == [
        "seq-kn-sequence-0",
        "seq-kn-sequence-1",
        "seq-kn-sequence-2",
    ]
    assert [s["metadata"]["name"] for s in owned.subscriptions] == [
        "seq-kn-sequence-0",
        "seq-kn-sequence-1",
        "seq-kn-sequence-2",
    ]
    for obj in owned.all:
        assert obj["metadata"]["ownerReferences"] == [owner]
        assert obj["metadata"]["namespace"] == "default"
        assert "labels" not in obj["metadata"]  # Knative sets none
    first, second, last = (s["spec"] for s in owned.subscriptions)
    assert first == {
        "channel": {
            "apiVersion": MESSAGING,
            "kind": "InMemoryChannel",
            "name": "seq-kn-sequence-0",
        },
        "subscriber": {"uri": "http://a/"},
        "reply": {
            "ref": {
                "apiVersion": MESSAGING,
                "kind": "InMemoryChannel",
                "name": "seq-kn-sequence-1",
                "namespace": "default",
            }
        },
    }
    assert second["delivery"] == {**dls, "deadLetterSink": {"uri": "http://dls.example/"}}
    assert second["reply"]["ref"]["name"] == "seq-kn-sequence-2"
    assert last["reply"] == {"uri": "http://reply.example/"}
    assert "delivery" not in last


def test_k165_last_step_without_sequence_reply_has_no_reply() -> None:
    owned = sequence_resources(sequence(), ChannelTemplate(MESSAGING, "InMemoryChannel"), {})
    assert "reply" not in owned.subscriptions[-1]["spec"]


def test_k171_k172_k174_parallel_wiring_filters_branch_channels_and_replies() -> None:
    par = parallel(
        branches=[
            {
                "filter": {"uri": "http://even-filter/"},
                "subscriber": {"uri": "http://even/"},
                "delivery": {"retry": 4},
            },
            {"subscriber": {"uri": "http://all/"}, "reply": {"uri": "http://branch-reply/"}},
        ],
        reply={"uri": "http://parallel-reply/"},
        channelTemplate=IMC,
    )
    owned = parallel_resources(par, ChannelTemplate(MESSAGING, "InMemoryChannel"), {})
    assert owned.ingress["metadata"]["name"] == "par-kn-parallel"
    assert [c["metadata"]["name"] for c in owned.branch_channels] == [
        "par-kn-parallel-0",
        "par-kn-parallel-1",
    ]
    assert [s["metadata"]["name"] for s in owned.filter_subscriptions] == [
        "par-kn-parallel-filter-0",
        "par-kn-parallel-filter-1",
    ]
    assert [s["metadata"]["name"] for s in owned.subscriptions] == [
        "par-kn-parallel-0",
        "par-kn-parallel-1",
    ]
    filter0, filter1 = (s["spec"] for s in owned.filter_subscriptions)
    assert filter0["channel"]["name"] == "par-kn-parallel"
    assert filter0["subscriber"] == {"uri": "http://even-filter/"}
    assert filter0["reply"]["ref"]["name"] == "par-kn-parallel-0"
    assert "delivery" not in filter0  # K174: the filter step has no delivery spec
    # No filter: straight into the branch channel.
    assert filter1["subscriber"]["ref"]["name"] == "par-kn-parallel-1"
    assert "reply" not in filter1
    sub0, sub1 = (s["spec"] for s in owned.subscriptions)
    assert sub0["channel"]["name"] == "par-kn-parallel-0"
    assert sub0["subscriber"] == {"uri": "http://even/"}
    assert sub0["reply"] == {"uri": "http://parallel-reply/"}  # no branch reply: the Parallel's
    assert sub0["delivery"] == {"retry": 4}
    assert sub1["reply"] == {"uri": "http://branch-reply/"}  # the branch's own reply wins


# --- reconcile: children, statuses, addresses --------------------------------------------------


def test_k166_k168_sequence_becomes_ready_with_channel_and_subscription_statuses() -> None:
    objects, result = converge([sequence(reply={"uri": "http://reply.example/"})])
    seq = by_name(objects, "Sequence", "seq")
    assert ready(seq)["status"] == "True", seq["status"]
    for type_ in ("ChannelsReady", "SubscriptionsReady", "Addressable"):
        assert ready(seq, type_)["status"] == "True"
    url = f"{BASE}/channels/default/seq-kn-sequence-0"
    assert seq["status"]["address"] == {"name": "http", "url": url}
    channels = seq["status"]["channelStatuses"]
    assert [c["channel"] for c in channels] == [
        {
            "apiVersion": MESSAGING,
            "kind": "InMemoryChannel",
            "name": f"seq-kn-sequence-{i}",
            "namespace": "default",
        }
        for i in range(2)
    ]
    assert all(c["ready"]["status"] == "True" for c in channels)
    subscriptions = seq["status"]["subscriptionStatuses"]
    assert [s["subscription"]["name"] for s in subscriptions] == [
        "seq-kn-sequence-0",
        "seq-kn-sequence-1",
    ]
    assert subscriptions[0]["subscription"]["kind"] == "Subscription"
    # The data plane runs the owned objects: step 0 replies into channel 1.
    specs = {s.name: s for s in result.snapshot.subscriptions.values()}
    assert specs["seq-kn-sequence-0"].topic == channel_topic("default", "seq-kn-sequence-0")
    assert specs["seq-kn-sequence-0"].reply_uri == f"{BASE}/channels/default/seq-kn-sequence-1"
    assert specs["seq-kn-sequence-1"].reply_uri == "http://reply.example/"


def test_k167_per_step_dead_letter_sink_is_resolved_on_that_steps_subscription() -> None:
    dls = {"deadLetterSink": {"uri": "http://dls.example/"}, "retry": 0}
    seq = sequence(steps=[step("http://a/"), step("http://b/", delivery=dls)])
    _, result = converge([seq])
    specs = {s.name: s for s in result.snapshot.subscriptions.values()}
    assert specs["seq-kn-sequence-1"].delivery.dead_letter_uri == "http://dls.example/"
    assert specs["seq-kn-sequence-1"].delivery.retry == 0
    assert specs["seq-kn-sequence-0"].delivery == DEFAULT


def test_a_trigger_to_a_sequence_resolves_once_the_sequence_has_an_address() -> None:
    """One rule for every destination: a Sequence with no address yet does not resolve (with
    its own reason); once it has one, it resolves to its first channel (K166)."""
    broker = admit(
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "b"}}
    )
    broker["metadata"].update(uid="b1")
    trigger = admit(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {
                "broker": "b",
                "subscriber": {"ref": {"apiVersion": FLOWS, "kind": "Sequence", "name": "seq"}},
            },
        }
    )
    trigger["metadata"].update(uid="t1")
    result = reconcile([broker, trigger, sequence()], base_url=BASE, default_delivery=DEFAULT)
    resolved = ready({"status": result.statuses["t1"]}, "SubscriberResolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "DestinationNotReady")
    assert 'Sequence "default/seq" is not Ready: InMemoryChannel' in resolved["message"]
    _, result = converge([broker, trigger, sequence()])
    assert result.statuses["t1"]["subscriberUri"] == f"{BASE}/channels/default/seq-kn-sequence-0"


def test_sequence_waits_naming_the_step_that_does_not_resolve() -> None:
    seq = sequence(
        steps=[
            {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "first"}}
        ]
    )
    objects, _ = converge([seq])
    seq = by_name(objects, "Sequence", "seq")
    condition = ready(seq)
    assert condition["status"] == "False"
    assert condition["reason"].startswith("Destination")
    assert 'Subscription "default/seq-kn-sequence-0"' in condition["message"]
    assert 'Service "default/first"' in condition["message"]
    assert ready(seq, "ChannelsReady")["status"] == "True"


def test_default_channel_kind_backs_a_sequence_without_template() -> None:
    objects, _ = converge([sequence()])
    channel = by_name(objects, "InMemoryChannel", "seq-kn-sequence-0")
    assert "channelTemplate" not in by_name(objects, "Sequence", "seq")["spec"]
    assert channel["metadata"]["ownerReferences"][0]["kind"] == "Sequence"


def test_generic_channel_template_converges_through_the_backing_channel() -> None:
    objects, _ = converge([sequence(channelTemplate={"apiVersion": MESSAGING, "kind": "Channel"})])
    assert ready(by_name(objects, "Sequence", "seq"))["status"] == "True"
    assert by_name(objects, "InMemoryChannel", "seq-kn-sequence-1")  # owned by the Channel


def test_channel_with_the_flows_name_not_owned_by_it_is_reported() -> None:
    squatter = admit({**IMC, "metadata": {"name": "seq-kn-sequence-0"}})
    squatter["metadata"].update(uid="other")
    objects, _ = converge([squatter, sequence()])
    seq = by_name(objects, "Sequence", "seq")
    assert ready(seq, "ChannelsReady")["reason"] == "NotOwned"
    assert ready(seq)["status"] == "False"


def test_k171_k176_parallel_status_lists_ingress_and_branch_statuses() -> None:
    par = parallel(
        branches=[
            {"filter": {"uri": "http://f/"}, "subscriber": {"uri": "http://s0/"}},
            {"subscriber": {"uri": "http://s1/"}},
        ],
        reply={"uri": "http://r/"},
    )
    objects, result = converge([par])
    par = by_name(objects, "Parallel", "par")
    assert ready(par)["status"] == "True", par["status"]
    status = par["status"]
    url = f"{BASE}/channels/default/par-kn-parallel"
    assert status["address"]["url"] == url
    assert status["ingressChannelStatus"]["channel"]["name"] == "par-kn-parallel"
    assert status["ingressChannelStatus"]["ready"]["status"] == "True"
    [b0, b1] = status["branchStatuses"]
    assert b0["filterSubscriptionStatus"]["subscription"]["name"] == "par-kn-parallel-filter-0"
    assert b0["filterChannelStatus"]["channel"]["name"] == "par-kn-parallel-0"
    assert b0["subscriberSubscriptionStatus"]["subscription"]["name"] == "par-kn-parallel-0"
    assert b1["subscriberSubscriptionStatus"]["ready"]["status"] == "True"
    specs = {s.name: s for s in result.snapshot.subscriptions.values()}
    assert (
        specs["par-kn-parallel-filter-0"].reply_uri == f"{BASE}/channels/default/par-kn-parallel-0"
    )
    assert specs["par-kn-parallel-filter-1"].subscriber_uri == (
        f"{BASE}/channels/default/par-kn-parallel-1"
    )
    assert specs["par-kn-parallel-0"].reply_uri == "http://r/"


def test_removing_a_step_drops_its_owned_objects_from_the_wanted_children() -> None:
    objects, _ = converge([sequence(steps=[step("http://a/"), step("http://b/")])])
    shorter = sequence(steps=[step("http://a/")])
    objects = [shorter if o["kind"] == "Sequence" else o for o in objects]
    result = reconcile(objects, base_url=BASE, default_delivery=DEFAULT)
    names = {c["metadata"]["name"] for c in result.children if c["kind"] != "EventType"}
    assert "seq-kn-sequence-1" not in names
    assert "seq-kn-sequence-0" in names


# --- admission ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.steps"),
        ({"steps": []}, "spec.steps"),
        ({"steps": [{}]}, "spec.steps[0]"),
        (
            {"steps": [{"uri": "http://a/", "delivery": {"retry": -1}}]},
            "spec.steps[0].delivery.retry",
        ),
        (
            {
                "steps": [{"uri": "http://a/"}],
                "channelTemplate": {"apiVersion": "x/v1", "kind": "Nope"},
            },
            "spec.channelTemplate.kind",
        ),
        (
            {
                "steps": [{"uri": "http://a/"}],
                "channelTemplate": {**IMC, "spec": {"delivery": {"backoffPolicy": "random"}}},
            },
            "spec.channelTemplate.spec.delivery.backoffPolicy",
        ),
        ({"steps": [{"uri": "http://a/"}], "reply": {"uri": "relative"}}, "spec.reply.uri"),
    ],
)
def test_k164_sequence_admission_rejects_naming_the_field(spec: dict[str, Any], field: str) -> None:
    body = {"apiVersion": FLOWS, "kind": "Sequence", "metadata": {"name": "s"}, "spec": spec}
    with pytest.raises(InvalidResource) as caught:
        admit(body)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.branches"),
        ({"branches": [{}]}, "spec.branches[0].subscriber"),
        (
            {"branches": [{"subscriber": {"uri": "http://s/"}, "filter": {}}]},
            "spec.branches[0].filter",
        ),
        (
            {"branches": [{"subscriber": {"uri": "http://s/"}, "delivery": {"retry": "x"}}]},
            "spec.branches[0].delivery.retry",
        ),
    ],
)
def test_k170_parallel_admission_rejects_naming_the_field(spec: dict[str, Any], field: str) -> None:
    body = {"apiVersion": FLOWS, "kind": "Parallel", "metadata": {"name": "p"}, "spec": spec}
    with pytest.raises(InvalidResource) as caught:
        admit(body)
    assert caught.value.field == field


def test_flow_name_too_long_for_its_owned_objects_is_refused() -> None:
    body = {
        "apiVersion": FLOWS,
        "kind": "Sequence",
        "metadata": {"name": "a" * 245},
        "spec": {"steps": [{"uri": "http://a/"}]},
    }
    with pytest.raises(InvalidResource, match="too long"):
        admit(body)


def test_admission_defaults_step_ref_namespace_and_keeps_step_delivery() -> None:
    seq = sequence(
        steps=[
            {
                "ref": {"apiVersion": "v1", "kind": "Service", "name": "x"},
                "delivery": {"retry": 1},
            }
        ]
    )
    assert seq["spec"]["steps"][0] == {
        "ref": {"apiVersion": "v1", "kind": "Service", "name": "x", "namespace": "default"},
        "delivery": {"retry": 1},
    }
