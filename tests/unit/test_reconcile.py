"""Reconcile: statuses (K163), addresses (K26, K36), destination resolution (K159-K161),
Trigger before Broker (K56), subscriber and dead-letter URIs (K57, K58, K155), delivery
precedence (K66, K124), Channel subscribers (K141), Subscription before Channel (K156)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from broker.events import CloudEvent
from broker.reconcile import ADDRESS_RESOLVERS, Reconciled, reconcile
from broker.resources import admit
from broker.spec import (
    BrokerSpec,
    ChannelSpec,
    DeliveryPolicy,
    broker_topic,
    channel_topic,
    match_all,
    subscription_group,
    trigger_group,
)

BASE = "http://127.0.0.1:8080"
DEFAULT = DeliveryPolicy(retry=10, backoff_delay=0.2, timeout=30.0, retry_after_max=60.0)
NOW = "2030-01-01T00:00:00.000000Z"
LATER = "2030-01-01T00:05:00.000000Z"
EVENTING = "eventing.knative.dev/v1"
MESSAGING = "messaging.knative.dev/v1"
SINK = {"uri": "http://sink.example.com/"}


def stored(body: dict[str, Any], uid: str, generation: int = 1) -> dict[str, Any]:
    """An object as the store holds it: admitted, with uid and generation."""
    obj = admit(body)
    obj["metadata"].update(uid=uid, generation=generation)
    return obj


def broker(
    name: str = "default", uid: str = "b1", namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": EVENTING,
        "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return stored(body, uid)


def trigger(
    name: str = "t",
    uid: str = "t1",
    broker_name: str = "default",
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body = {
        "apiVersion": EVENTING,
        "kind": "Trigger",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"broker": broker_name, "subscriber": SINK, **spec},
    }
    return stored(body, uid)


def channel(
    name: str = "ch", uid: str = "c1", kind: str = "Channel", **spec: Any
) -> dict[str, Any]:
    body = {"apiVersion": MESSAGING, "kind": kind, "metadata": {"name": name}, "spec": spec}
    return stored(body, uid)


def subscription(
    name: str = "s", uid: str = "s1", channel_name: str = "ch", kind: str = "Channel", **spec: Any
) -> dict[str, Any]:
    body = {
        "apiVersion": MESSAGING,
        "kind": "Subscription",
        "metadata": {"name": name},
        "spec": {
            "channel": {"apiVersion": MESSAGING, "kind": kind, "name": channel_name},
            "subscriber": SINK,
            **spec,
        },
    }
    return stored(body, uid)


def ref(kind: str, name: str, api_version: str = "") -> dict[str, Any]:
    group = {"Broker": EVENTING, "Channel": MESSAGING, "InMemoryChannel": MESSAGING}
    return {"apiVersion": api_version or group.get(kind, "v1"), "kind": kind, "name": name}


def run(*objects: dict[str, Any], now: str = NOW) -> Reconciled:
    return reconcile(list(objects), base_url=BASE, default_delivery=DEFAULT, now=now)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def ready(status: dict[str, Any]) -> str:
    return str(condition(status, "Ready")["status"])


def with_status(obj: dict[str, Any], result: Reconciled) -> dict[str, Any]:
    updated = copy.deepcopy(obj)
    updated["status"] = result.statuses[obj["metadata"]["uid"]]
    return updated


# --- Broker -------------------------------------------------------------------------------------


def test_k26_k36_broker_is_ready_with_its_address_and_runs() -> None:
    result = run(broker())
    status = result.statuses["b1"]
    assert ready(status) == "True"
    assert status["observedGeneration"] == 1
    url = f"{BASE}/default/default"
    assert status["address"] == {"name": "http", "url": url}
    assert status["addresses"] == [{"name": "http", "url": url}]
    assert "deadLetterSinkUri" not in status
    assert result.snapshot.brokers == {
        ("default", "default"): BrokerSpec(
            namespace="default",
            name="default",
            uid="b1",
            topic=broker_topic("default", "default"),
            bus="memory",
        )
    }


def test_bus_name_and_base_url_trailing_slash() -> None:
    result = reconcile([broker()], base_url=BASE + "/", default_delivery=DEFAULT, bus="kafka")
    assert result.snapshot.brokers[("default", "default")].bus == "kafka"
    assert result.statuses["b1"]["address"]["url"] == f"{BASE}/default/default"


def test_k58_broker_dead_letter_sink_is_resolved_into_status() -> None:
    dls = {"ref": ref("Channel", "dlq")}
    result = run(broker(delivery={"deadLetterSink": dls}), channel("dlq", "c1"))
    status = result.statuses["b1"]
    assert ready(status) == "True"
    assert status["deadLetterSinkUri"] == f"{BASE}/channels/default/dlq"
    assert condition(status, "DeadLetterSinkResolved")["status"] == "True"


def test_k58_broker_with_unresolvable_dead_letter_sink_is_not_ready_and_not_run() -> None:
    result = run(broker(delivery={"deadLetterSink": {"ref": ref("Channel", "missing")}}))
    status = result.statuses["b1"]
    assert ready(status) == "False"
    assert condition(status, "Ready")["reason"] == "DestinationNotFound"
    assert "missing" in condition(status, "Ready")["message"]
    assert "address" not in status
    assert result.snapshot.brokers == {}


# --- Channel / InMemoryChannel ------------------------------------------------------------------


def test_channel_and_in_memory_channel_are_ready_addressable_and_run() -> None:
    result = run(channel("ch", "c1"), channel("imc", "c2", kind="InMemoryChannel"))
    for uid, name in (("c1", "ch"), ("c2", "imc")):
        status = result.statuses[uid]
        assert ready(status) == "True"
        assert status["address"]["url"] == f"{BASE}/channels/default/{name}"
        assert status["subscribers"] == []
    assert result.statuses["c1"]["channel"] == {
        "apiVersion": MESSAGING,
        "kind": "InMemoryChannel",
        "name": "ch",
        "namespace": "default",
    }
    assert "channel" not in result.statuses["c2"]
    assert result.snapshot.channels[("default", "ch")] == ChannelSpec(
        namespace="default",
        name="ch",
        uid="c1",
        kind="Channel",
        topic=channel_topic("default", "ch"),
    )
    assert result.snapshot.channels[("default", "imc")].kind == "InMemoryChannel"


def test_k141_channel_lists_its_ready_subscriptions() -> None:
    result = run(
        channel(),
        subscription("s2", "s2"),
        subscription("s1", "s1"),
        subscription("bad", "s3", reply={"ref": ref("Broker", "missing")}),
        subscription("other", "s4", channel_name="other"),
    )
    assert result.statuses["c1"]["subscribers"] == [
        {"uid": "s1", "observedGeneration": 1, "ready": "True"},
        {"uid": "s2", "observedGeneration": 1, "ready": "True"},
    ]


# --- Trigger ------------------------------------------------------------------------------------


def test_k56_trigger_before_its_broker_is_not_ready_then_becomes_ready() -> None:
    lonely = trigger()
    result = run(lonely)
    status = result.statuses["t1"]
    assert ready(status) == "False"
    broker_ready = condition(status, "BrokerReady")
    assert broker_ready["status"] == "False"
    assert broker_ready["reason"] == "BrokerDoesNotExist"
    assert '"default"' in broker_ready["message"]
    assert condition(status, "Ready")["reason"] == "BrokerDoesNotExist"
    assert condition(status, "SubscriptionReady")["status"] == "Unknown"
    assert result.snapshot.triggers == {}

    later = run(with_status(lonely, result), broker(), now=LATER)
    status = later.statuses["t1"]
    assert ready(status) == "True"
    assert condition(status, "Ready")["lastTransitionTime"] == LATER
    spec = later.snapshot.triggers["t1"]
    assert spec.broker == "default"
    assert spec.topic == broker_topic("default", "default")
    assert spec.group == trigger_group("t1")
    assert spec.subscriber_uri == "http://sink.example.com/"


def test_trigger_of_a_broker_that_is_not_ready_is_not_ready() -> None:
    bad = broker(delivery={"deadLetterSink": {"ref": ref("Channel", "missing")}})
    result = run(bad, trigger())
    broker_ready = condition(result.statuses["t1"], "BrokerReady")
    assert broker_ready["status"] == "False"
    assert broker_ready["reason"] == "DestinationNotFound"
    assert result.snapshot.triggers == {}


def test_ready_trigger_has_all_conditions_true_and_a_snapshot_spec() -> None:
    result = run(broker(), trigger(filter={"attributes": {"type": "a"}}))
    status = result.statuses["t1"]
    types = [c["type"] for c in status["conditions"]]
    assert types[0] == "Ready"
    assert set(types) == {
        "Ready",
        "BrokerReady",
        "SubscriberResolved",
        "DeadLetterSinkResolved",
        "DependencyReady",
        "SubscriptionReady",
    }
    assert all(c["status"] == "True" for c in status["conditions"])
    assert all(c["lastTransitionTime"] == NOW for c in status["conditions"])
    assert status["subscriberUri"] == "http://sink.example.com/"
    assert "deadLetterSinkUri" not in status
    spec = result.snapshot.triggers["t1"]
    assert spec.filter(CloudEvent({"type": "a"}))
    assert not spec.filter(CloudEvent({"type": "b"}))
    assert json.loads(spec.filter_source) == {"filter": {"attributes": {"type": "a"}}}
    assert spec.delivery == DEFAULT
    assert spec.ordered is False


def test_trigger_without_filter_matches_all() -> None:
    spec = run(broker(), trigger()).snapshot.triggers["t1"]
    assert spec.filter is match_all
    assert spec.filter_source == "{}"


def test_trigger_filters_are_compiled() -> None:
    spec = run(broker(), trigger(filters=[{"prefix": {"type": "com."}}])).snapshot.triggers["t1"]
    assert spec.filter(CloudEvent({"type": "com.x"}))
    assert not spec.filter(CloudEvent({"type": "org.x"}))


def test_trigger_ordered_comes_from_the_delivery_order_annotation() -> None:
    key = "kafka.eventing.knative.dev/delivery.order"
    result = run(
        broker(),
        trigger("a", "t1", annotations={key: "ordered"}),
        trigger("b", "t2", annotations={key: "unordered"}),
    )
    assert result.snapshot.triggers["t1"].ordered is True
    assert result.snapshot.triggers["t2"].ordered is False


# --- destination resolution (K57, K159-K161) ----------------------------------------------------


@pytest.mark.parametrize(
    ("subscriber", "extra", "expected"),
    [
        ({"uri": "https://x.example.com/p?q=1"}, [], "https://x.example.com/p?q=1"),
        ({"ref": ref("Broker", "other")}, ["broker"], f"{BASE}/default/other"),
        ({"ref": ref("Channel", "ch")}, ["channel"], f"{BASE}/channels/default/ch"),
        ({"ref": ref("InMemoryChannel", "ch")}, ["imc"], f"{BASE}/channels/default/ch"),
        ({"ref": ref("Channel", "ch"), "uri": "/extra"}, ["channel"], f"{BASE}/extra"),
        ({"ref": ref("Channel", "ch"), "uri": "sub"}, ["channel"], f"{BASE}/channels/default/sub"),
    ],
)
def test_k159_k160_subscriber_resolution(
    subscriber: dict[str, Any], extra: list[str], expected: str
) -> None:
    objects = [broker(), trigger(subscriber=subscriber)]
    if "broker" in extra:
        objects.append(broker("other", "b2"))
    if "channel" in extra:
        objects.append(channel("ch", "c1"))
    if "imc" in extra:
        objects.append(channel("ch", "c1", kind="InMemoryChannel"))
    result = run(*objects)
    assert result.statuses["t1"]["subscriberUri"] == expected
    assert result.snapshot.triggers["t1"].subscriber_uri == expected


def test_k160_relative_uri_resolves_against_the_ref_as_rfc3986() -> None:
    # Knative resolves with Go's URL.ResolveReference: an absolute path replaces the ref's path.
    result = run(
        broker(),
        broker("other", "b2"),
        trigger(subscriber={"ref": ref("Broker", "other"), "uri": "/x"}),
    )
    assert result.statuses["t1"]["subscriberUri"] == f"{BASE}/x"


def test_k57_k161_kubernetes_service_ref_is_not_resolvable_in_this_version() -> None:
    result = run(broker(), trigger(subscriber={"ref": ref("Service", "svc", "v1")}))
    status = result.statuses["t1"]
    assert status["subscriberUri"] == ""
    assert ready(status) == "False"
    resolved = condition(status, "SubscriberResolved")
    assert resolved["status"] == "False"
    assert resolved["reason"] == "DestinationNotSupported"
    assert "only Broker, Channel, InMemoryChannel references and uri resolve" in resolved["message"]
    assert result.snapshot.triggers == {}


def test_k57_ref_to_missing_object_is_unresolvable_and_named() -> None:
    result = run(broker(), trigger(subscriber={"ref": ref("Channel", "nope")}))
    resolved = condition(result.statuses["t1"], "SubscriberResolved")
    assert resolved["reason"] == "DestinationNotFound"
    assert 'Channel "default/nope"' in resolved["message"]
    assert result.statuses["t1"]["subscriberUri"] == ""


def test_ref_to_a_not_ready_broker_is_unresolvable() -> None:
    bad = broker("other", "b2", delivery={"deadLetterSink": {"ref": ref("Channel", "missing")}})
    result = run(broker(), bad, trigger(subscriber={"ref": ref("Broker", "other")}))
    assert condition(result.statuses["t1"], "SubscriberResolved")["reason"] == "DestinationNotReady"


def test_ref_namespace_is_used_for_resolution() -> None:
    elsewhere = broker("b", "b2", namespace="team")
    result = run(
        broker(),
        elsewhere,
        trigger(subscriber={"ref": {**ref("Broker", "b"), "namespace": "team"}}),
    )
    assert result.statuses["t1"]["subscriberUri"] == f"{BASE}/team/b"


def test_resolver_table_is_keyed_by_group_and_kind() -> None:
    assert set(ADDRESS_RESOLVERS) == {
        ("eventing.knative.dev", "Broker"),
        ("messaging.knative.dev", "Channel"),
        ("messaging.knative.dev", "InMemoryChannel"),
    }


# --- dead-letter sinks and delivery precedence (K58, K66, K124) ---------------------------------


def test_k58_trigger_dead_letter_sink_is_resolved_into_status_and_policy() -> None:
    own = {"deadLetterSink": {"uri": "http://dls.example.com/"}}
    result = run(broker(), trigger(delivery=own))
    assert result.statuses["t1"]["deadLetterSinkUri"] == "http://dls.example.com/"
    assert result.snapshot.triggers["t1"].delivery.dead_letter_uri == "http://dls.example.com/"


def test_k58_unresolvable_trigger_dead_letter_sink_keeps_it_out() -> None:
    result = run(broker(), trigger(delivery={"deadLetterSink": {"ref": ref("Broker", "gone")}}))
    status = result.statuses["t1"]
    assert ready(status) == "False"
    assert condition(status, "DeadLetterSinkResolved")["status"] == "False"
    assert condition(status, "DeadLetterSinkResolved")["reason"] == "DestinationNotFound"
    assert "deadLetterSinkUri" not in status
    assert result.snapshot.triggers == {}


def test_k66_trigger_own_delivery_wins_whole_with_no_field_merge() -> None:
    broker_delivery = {
        "retry": 7,
        "backoffPolicy": "linear",
        "backoffDelay": "PT2S",
        "deadLetterSink": {"uri": "http://broker-dls/"},
    }
    result = run(broker(delivery=broker_delivery), trigger(delivery={"retry": 2}))
    policy = result.snapshot.triggers["t1"].delivery
    assert policy == DeliveryPolicy(retry=2, timeout=DEFAULT.timeout)  # nothing from the Broker
    assert "deadLetterSinkUri" not in result.statuses["t1"]


def test_k66_trigger_without_delivery_takes_the_brokers_whole() -> None:
    broker_delivery = {
        "retry": 7,
        "backoffPolicy": "linear",
        "backoffDelay": "PT2S",
        "timeout": "PT5S",
        "retryAfterMax": "PT1M",
        "format": "json",
        "deadLetterSink": {"ref": ref("Channel", "dlq")},
    }
    result = run(broker(delivery=broker_delivery), channel("dlq", "c1"), trigger(delivery={}))
    policy = result.snapshot.triggers["t1"].delivery
    dlq = f"{BASE}/channels/default/dlq"
    assert policy == DeliveryPolicy(
        retry=7,
        backoff_policy="linear",
        backoff_delay=2.0,
        timeout=5.0,
        retry_after_max=60.0,
        dead_letter_uri=dlq,
        format="json",
    )
    assert result.statuses["t1"]["deadLetterSinkUri"] == dlq


def test_k66_neither_sets_delivery_gives_the_server_default() -> None:
    result = run(broker(), trigger())
    assert result.snapshot.triggers["t1"].delivery is DEFAULT


def test_trigger_own_delivery_unset_timeout_is_the_server_setting() -> None:
    result = run(broker(), trigger(delivery={"backoffDelay": "PT0.5S"}))
    policy = result.snapshot.triggers["t1"].delivery
    assert policy.timeout == DEFAULT.timeout
    assert policy.retry == 0
    assert policy.backoff_delay == 0.5
    assert policy.retry_after_max == 0.0


def test_bad_stored_delivery_makes_only_that_trigger_not_ready() -> None:
    bad = trigger("bad", "t2")
    bad["spec"]["delivery"] = {"timeout": "soon"}  # stored before validation, say
    result = run(broker(), trigger(), bad)
    assert ready(result.statuses["t1"]) == "True"
    status = result.statuses["t2"]
    assert ready(status) == "False"
    assert condition(status, "SubscriptionReady")["reason"] == "InvalidSpec"
    assert "spec.delivery.timeout" in condition(status, "SubscriptionReady")["message"]
    assert set(result.snapshot.triggers) == {"t1"}


def test_k124_subscription_delivery_precedence_over_channel_and_default() -> None:
    channel_delivery = {"retry": 4, "deadLetterSink": {"uri": "http://channel-dls/"}}
    result = run(
        channel(delivery=channel_delivery),
        subscription("own", "s1", delivery={"backoffPolicy": "linear"}),
        subscription("inherits", "s2"),
        channel("plain", "c2"),
        subscription("default", "s3", channel_name="plain"),
    )
    subs = result.snapshot.subscriptions
    assert subs["s1"].delivery == DeliveryPolicy(backoff_policy="linear", timeout=DEFAULT.timeout)
    assert subs["s2"].delivery == DeliveryPolicy(
        retry=4, timeout=DEFAULT.timeout, dead_letter_uri="http://channel-dls/"
    )
    assert subs["s3"].delivery is DEFAULT
    assert result.statuses["c1"]["deadLetterSinkUri"] == "http://channel-dls/"
    assert "deadLetterSinkUri" not in result.statuses["s1"]["physicalSubscription"]
    assert (
        result.statuses["s2"]["physicalSubscription"]["deadLetterSinkUri"] == "http://channel-dls/"
    )


# --- dependency annotation (K69) ----------------------------------------------------------------


def test_k69_dependency_must_exist_and_be_ready() -> None:
    dependency = json.dumps({"apiVersion": EVENTING, "kind": "Broker", "name": "dep"})
    annotations = {"knative.dev/dependency": dependency}
    result = run(broker(), trigger(annotations=annotations))
    dep = condition(result.statuses["t1"], "DependencyReady")
    assert dep["status"] == "False"
    assert dep["reason"] == "DependencyDoesNotExist"
    assert result.snapshot.triggers == {}

    result = run(broker(), broker("dep", "b2"), trigger(annotations=annotations))
    assert condition(result.statuses["t1"], "DependencyReady")["status"] == "True"
    assert "t1" in result.snapshot.triggers


def test_k69_dependency_on_an_object_without_ready_is_unknown() -> None:
    dependency = json.dumps({"apiVersion": "v1", "kind": "Secret", "name": "s"})
    secret = stored({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, "x1")
    result = run(broker(), secret, trigger(annotations={"knative.dev/dependency": dependency}))
    status = result.statuses["t1"]
    assert condition(status, "DependencyReady")["status"] == "Unknown"
    assert ready(status) == "Unknown"


# --- Subscription (K155, K156) ------------------------------------------------------------------


def test_k156_subscription_before_its_channel_is_not_ready() -> None:
    result = run(subscription())
    status = result.statuses["s1"]
    assert ready(status) == "False"
    assert condition(status, "ChannelReady")["reason"] == "ChannelNotFound"
    assert condition(status, "Ready")["reason"] == "ChannelNotFound"
    assert result.snapshot.subscriptions == {}


def test_subscription_to_an_unsupported_channel_kind_says_which_are() -> None:
    result = run(subscription(kind="KafkaChannel"))
    cond = condition(result.statuses["s1"], "ChannelReady")
    assert cond["reason"] == "ChannelNotSupported"
    assert "Channel, InMemoryChannel" in cond["message"]


def test_k155_ready_subscription_reports_physical_subscription_and_runs() -> None:
    result = run(
        channel(),
        broker("replies", "b1"),
        subscription(
            reply={"ref": ref("Broker", "replies")},
            delivery={"deadLetterSink": {"uri": "http://dls/"}},
        ),
    )
    status = result.statuses["s1"]
    assert ready(status) == "True"
    assert status["physicalSubscription"] == {
        "subscriberUri": "http://sink.example.com/",
        "replyUri": f"{BASE}/default/replies",
        "deadLetterSinkUri": "http://dls/",
    }
    spec = result.snapshot.subscriptions["s1"]
    assert spec.channel == "ch"
    assert spec.topic == channel_topic("default", "ch")
    assert spec.group == subscription_group("s1")
    assert spec.subscriber_uri == "http://sink.example.com/"
    assert spec.reply_uri == f"{BASE}/default/replies"
    assert spec.delivery.dead_letter_uri == "http://dls/"


def test_k155_unresolvable_reply_leaves_an_empty_uri_and_a_reason() -> None:
    result = run(channel(), subscription(reply={"ref": ref("Broker", "gone")}))
    status = result.statuses["s1"]
    assert ready(status) == "False"
    assert status["physicalSubscription"]["replyUri"] == ""
    resolved = condition(status, "ReferencesResolved")
    assert resolved["reason"] == "DestinationNotFound"
    assert resolved["message"].startswith("reply:")
    assert result.snapshot.subscriptions == {}


def test_subscription_without_reply_has_no_reply_uri() -> None:
    result = run(channel(), subscription())
    assert result.statuses["s1"]["physicalSubscription"] == {
        "subscriberUri": "http://sink.example.com/"
    }
    assert result.snapshot.subscriptions["s1"].reply_uri is None


# --- conditions (K163) --------------------------------------------------------------------------


def test_k163_every_false_condition_carries_a_reason_and_ready_leads() -> None:
    result = run(
        trigger("t", "t1"),
        trigger("u", "t2", subscriber={"ref": ref("Service", "svc", "v1")}),
        subscription(),
        broker("b", "b1", delivery={"deadLetterSink": {"ref": ref("Channel", "none")}}),
    )
    for uid, status in result.statuses.items():
        assert status["conditions"][0]["type"] == "Ready", uid
        assert status["observedGeneration"] == 1
        for cond in status["conditions"]:
            assert cond["status"] in ("True", "False", "Unknown")
            if cond["status"] == "False":
                assert cond["reason"], (uid, cond)


def test_k163_last_transition_time_is_kept_while_the_status_does_not_change() -> None:
    first = run(broker())
    obj = with_status(broker(), first)
    again = run(obj, now=LATER)
    assert again.statuses["b1"] == first.statuses["b1"]  # nothing to write back

    broken = copy.deepcopy(obj)
    broken["spec"]["delivery"] = {"deadLetterSink": {"ref": ref("Channel", "gone")}}
    broken["metadata"]["generation"] = 2
    changed = run(broken, now=LATER).statuses["b1"]
    assert changed["observedGeneration"] == 2
    assert condition(changed, "Ready")["lastTransitionTime"] == LATER
    assert condition(changed, "Addressable")["lastTransitionTime"] == LATER


def test_secrets_get_an_empty_status_and_unknown_kinds_none() -> None:
    secret = stored({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, "x1")
    other = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": "p", "namespace": "default", "uid": "p1", "generation": 1},
        "spec": {},
    }
    result = run(secret, other)
    assert result.statuses == {"x1": {}}


def test_reconcile_does_not_modify_its_input() -> None:
    objects = [broker(), trigger(), channel(), subscription()]
    before = copy.deepcopy(objects)
    run(*objects)
    assert objects == before
