"""Reconcile: statuses (K163), addresses (K26, K36), destination resolution (K159-K161),
Trigger before Broker (K56), subscriber and dead-letter URIs (K57, K58, K155), delivery
precedence (K66, K124), Channel subscribers (K141), Subscription before Channel (K156),
channel kinds and a generic Channel's backing channel (K136, K140), Broker backing (K59)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from broker.controlplane.reconcile import Reconciled
from broker.controlplane.world import owner_reference
from broker.core.events import CloudEvent
from broker.core.spec import (
    BrokerSpec,
    ChannelSpec,
    DeliveryPolicy,
    broker_topic,
    channel_topic,
    match_all,
    subscription_group,
    trigger_group,
)
from broker.server.features import CATALOG, admit, reconcile

BASE = "http://127.0.0.1:8080"
DEFAULT = DeliveryPolicy(retry=10, backoff_delay=0.2, timeout=30.0, retry_after_max=60.0)
NOW = "2030-01-01T00:00:00.000000Z"
LATER = "2030-01-01T00:05:00.000000Z"
EVENTING = "eventing.knative.dev/v1"
MESSAGING = "messaging.knative.dev/v1"
SINK = {"uri": "http://sink.example.com/"}
IMC = "InMemoryChannel"


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


def backing(owner: dict[str, Any], uid: str, default_channel: str = IMC) -> dict[str, Any]:
    """The backing channel the controller creates for a generic Channel, as the store holds it:
    the one object reconcile wants for ``owner`` (Reconciled.children), admitted, with a uid."""
    [child] = run(owner, default_channel=default_channel).children
    return stored(child, uid)


def backed(name: str = "ch", uid: str = "c1", **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A generic Channel and its backing InMemoryChannel (uid ``<uid>-imc``), as after a sync."""
    owner = channel(name, uid, **spec)
    return owner, backing(owner, f"{uid}-imc")


def ref(kind: str, name: str, api_version: str = "") -> dict[str, Any]:
    group = {"Broker": EVENTING, "Channel": MESSAGING, "InMemoryChannel": MESSAGING}
    return {"apiVersion": api_version or group.get(kind, "v1"), "kind": kind, "name": name}


def run(*objects: dict[str, Any], now: str = NOW, default_channel: str = IMC) -> Reconciled:
    return reconcile(
        list(objects),
        base_url=BASE,
        default_delivery=DEFAULT,
        default_channel=default_channel,
        now=now,
    )


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


def test_default_channel_sets_the_brokers_bus_and_base_url_trailing_slash_is_dropped() -> None:
    result = reconcile(
        [broker()], base_url=BASE + "/", default_delivery=DEFAULT, default_channel="KafkaChannel"
    )
    assert result.snapshot.brokers[("default", "default")].bus == "kafka"
    assert result.statuses["b1"]["address"]["url"] == f"{BASE}/default/default"
    assert result.statuses["b1"]["annotations"]["knative.dev/channelKind"] == "KafkaChannel"


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


def test_k136_channel_and_in_memory_channel_are_ready_addressable_and_run() -> None:
    result = run(*backed("ch", "c1"), channel("imc", "c2", kind="InMemoryChannel"))
    for uid, name in (("c1", "ch"), ("c1-imc", "ch"), ("c2", "imc")):
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
    # The generic Channel runs as its backing channel: same URL and topic, the backing's uid.
    assert result.snapshot.channels[("default", "ch")] == ChannelSpec(
        namespace="default",
        name="ch",
        uid="c1-imc",
        kind="InMemoryChannel",
        topic=channel_topic("default", "ch"),
        bus="memory",
    )
    assert result.snapshot.channels[("default", "imc")].kind == "InMemoryChannel"
    assert set(result.snapshot.channels) == {("default", "ch"), ("default", "imc")}


def test_k141_channel_lists_its_ready_subscriptions() -> None:
    result = run(
        *backed(),
        subscription("s2", "s2"),
        subscription("s1", "s1"),
        subscription("bad", "s3", reply={"ref": ref("Broker", "missing")}),
        subscription("other", "s4", channel_name="other"),
    )
    assert result.statuses["c1"]["subscribers"] == [
        {"uid": "s1", "observedGeneration": 1, "ready": "True"},
        {"uid": "s2", "observedGeneration": 1, "ready": "True"},
    ]


# --- generic Channel and its backing channel (K136, K140) ----------------------------------------

CHANNEL_KINDS = {  # kind -> (apiVersion, bus)
    "InMemoryChannel": (MESSAGING, "memory"),
    "KafkaChannel": ("messaging.knative.dev/v1beta1", "kafka"),
    "NatsJetStreamChannel": ("messaging.knative.dev/v1alpha1", "nats"),
    "PubSubChannel": ("messaging.cemesh.dev/v1alpha1", "pubsub"),
    "RedisStreamChannel": ("messaging.cemesh.dev/v1alpha1", "redis"),
}


def implementation(kind: str, name: str = "k", uid: str = "k1", **spec: Any) -> dict[str, Any]:
    """A channel implementation object (InMemoryChannel, KafkaChannel, ...) as stored."""
    body = {
        "apiVersion": CHANNEL_KINDS[kind][0],
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }
    return stored(body, uid)


def test_k140_channel_without_backing_channel_wants_one_and_is_not_ready_yet() -> None:
    owner = channel()
    result = run(owner)
    assert result.children == [
        {
            "apiVersion": MESSAGING,
            "kind": "InMemoryChannel",
            "metadata": {
                "name": "ch",
                "namespace": "default",
                "labels": {"messaging.knative.dev/channel": "ch"},
                "ownerReferences": [
                    {
                        "apiVersion": MESSAGING,
                        "kind": "Channel",
                        "name": "ch",
                        "uid": "c1",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {},
        }
    ]
    assert result.children[0]["metadata"]["ownerReferences"] == [owner_reference(owner)]
    status = result.statuses["c1"]
    assert ready(status) == "Unknown"
    backing_ready = condition(status, "BackingChannelReady")
    assert (backing_ready["status"], backing_ready["reason"]) == ("Unknown", "Creating")
    assert "InMemoryChannel ch" in backing_ready["message"]
    assert status["channel"]["kind"] == "InMemoryChannel"  # named before it exists, as Knative
    assert "address" not in status
    assert result.snapshot.channels == {}


def test_k136_channel_is_ready_only_once_its_backing_channel_is() -> None:
    """Creating -> backing channel not Ready -> Ready with the backing channel's address."""
    dls = {"deadLetterSink": {"ref": ref("Broker", "dlq")}}
    owner = channel(delivery=dls)
    first = run(owner)
    assert ready(first.statuses["c1"]) == "Unknown"

    # The backing channel exists (created from Reconciled.children) but its dead-letter sink,
    # copied from the Channel, does not resolve yet: neither is Ready.
    child = stored(first.children[0], "c1-imc")
    assert child["spec"]["delivery"]["deadLetterSink"]["ref"]["name"] == "dlq"
    second = run(with_status(owner, first), child, now=LATER)
    assert ready(second.statuses["c1-imc"]) == "False"
    status = second.statuses["c1"]
    assert ready(status) == "False"
    backing_ready = condition(status, "BackingChannelReady")
    assert (backing_ready["status"], backing_ready["reason"]) == ("False", "BackingChannelNotReady")
    assert condition(status, "Ready")["lastTransitionTime"] == LATER
    assert "address" not in status
    assert second.snapshot.channels == {}

    third = run(with_status(owner, second), with_status(child, second), broker("dlq", "b1"))
    status = third.statuses["c1"]
    assert ready(status) == "True"
    url = f"{BASE}/channels/default/ch"
    assert status["address"] == {"name": "http", "url": url}
    assert status["addresses"] == third.statuses["c1-imc"]["addresses"]
    assert status["deadLetterSinkUri"] == f"{BASE}/default/dlq"
    assert third.snapshot.channels[("default", "ch")].uid == "c1-imc"
    assert third.children == first.children  # nothing more to create or change


def test_k140_default_channel_setting_picks_the_backing_kind_of_a_template_less_channel() -> None:
    owner = channel()
    result = run(owner, default_channel="KafkaChannel")
    [child] = result.children
    assert (child["apiVersion"], child["kind"]) == (
        CHANNEL_KINDS["KafkaChannel"][0],
        "KafkaChannel",
    )
    assert result.statuses["c1"]["channel"] == {
        "apiVersion": "messaging.knative.dev/v1beta1",
        "kind": "KafkaChannel",
        "name": "ch",
        "namespace": "default",
    }
    kafka = stored(child, "c1-kafka")
    ready_now = run(owner, kafka, default_channel="KafkaChannel")
    assert ready(ready_now.statuses["c1"]) == "True"
    assert ready_now.snapshot.channels[("default", "ch")].bus == "kafka"
    # An InMemoryChannel of the same name does not back it when the default is KafkaChannel.
    imc = backing(owner, "c1-imc")
    assert ready(run(owner, imc, default_channel="KafkaChannel").statuses["c1"]) == "Unknown"


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_k140_channel_template_kind_and_spec_make_the_backing_channel(kind: str) -> None:
    api_version, bus = CHANNEL_KINDS[kind]
    template = {"apiVersion": api_version, "kind": kind, "spec": {"numPartitions": 3}}
    delivery = {"retry": 2}
    owner = channel(channelTemplate=template, delivery=delivery)
    # The template wins over the configured default.
    [child] = run(owner, default_channel="RedisStreamChannel").children
    assert (child["apiVersion"], child["kind"]) == (api_version, kind)
    assert child["spec"] == {"numPartitions": 3, "delivery": delivery}
    result = run(owner, stored(child, "c1-b"), default_channel="RedisStreamChannel")
    assert ready(result.statuses["c1"]) == "True"
    assert result.statuses["c1"]["channel"]["kind"] == kind
    assert result.snapshot.channels[("default", "ch")] == ChannelSpec(
        namespace="default",
        name="ch",
        uid="c1-b",
        kind=kind,
        topic=channel_topic("default", "ch"),
        bus=bus,
    )


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_k136_every_channel_kind_is_addressable_runs_on_its_bus_and_takes_subscriptions(
    kind: str,
) -> None:
    api_version, bus = CHANNEL_KINDS[kind]
    sub = subscription(channel_name="k", kind=kind)
    sub["spec"]["channel"]["apiVersion"] = api_version
    result = run(implementation(kind), sub)
    status = result.statuses["k1"]
    assert ready(status) == "True"
    assert status["address"]["url"] == f"{BASE}/channels/default/k"
    assert status["subscribers"] == [{"uid": "s1", "observedGeneration": 1, "ready": "True"}]
    assert result.snapshot.channels[("default", "k")].bus == bus
    assert result.snapshot.subscriptions["s1"].topic == channel_topic("default", "k")
    assert result.children == []  # only a generic Channel owns another object
    reference = {"ref": {"apiVersion": api_version, "kind": kind, "name": "k"}}
    resolved = run(implementation(kind), broker(), trigger(subscriber=reference))
    assert resolved.statuses["t1"]["subscriberUri"] == f"{BASE}/channels/default/k"


def test_k141_subscriptions_to_a_generic_channel_are_listed_on_it_and_run_on_its_topic() -> None:
    result = run(*backed(), subscription())
    assert result.statuses["c1"]["subscribers"] == [
        {"uid": "s1", "observedGeneration": 1, "ready": "True"}
    ]
    assert result.snapshot.subscriptions["s1"].topic == channel_topic("default", "ch")
    assert result.snapshot.channels[("default", "ch")].topic == channel_topic("default", "ch")


def test_k156_subscription_waits_for_the_generic_channels_backing_channel() -> None:
    result = run(channel(), subscription())
    cond = condition(result.statuses["s1"], "ChannelReady")
    assert (cond["status"], cond["reason"]) == ("False", "ChannelNotReady")
    assert result.snapshot.subscriptions == {}


def test_a_backing_channel_whose_channel_is_gone_is_no_longer_wanted() -> None:
    _, child = backed()
    result = run(child)  # the Channel was deleted: the controller deletes what is not wanted
    assert result.children == []
    assert ready(result.statuses["c1-imc"]) == "True"  # served until it is deleted


def test_owner_reference_marks_the_controller() -> None:
    owner = channel()
    assert owner_reference(owner) == {
        "apiVersion": MESSAGING,
        "kind": "Channel",
        "name": "ch",
        "uid": "c1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --- what backs a Broker (K59) ------------------------------------------------------------------


def config_map(
    name: str = "config-br-default-channel",
    uid: str = "cm1",
    namespace: str = "knative-eventing",
    **data: str,
) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
    return stored(body, uid)


def config_ref(name: str = "config-br-default-channel") -> dict[str, str]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "namespace": "knative-eventing"}


def classed(broker_class: str, uid: str = "b1", **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": EVENTING,
        "kind": "Broker",
        "metadata": {
            "name": "default",
            "annotations": {"eventing.knative.dev/broker.class": broker_class},
        },
        "spec": spec,
    }
    return stored(body, uid)


def channel_annotations(kind: str, name: str = "default") -> dict[str, str]:
    return {
        "knative.dev/channelAPIVersion": CHANNEL_KINDS[kind][0],
        "knative.dev/channelKind": kind,
        "knative.dev/channelName": f"{name}-kne-trigger",
    }


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_k59_default_channel_backs_a_broker_without_config(kind: str) -> None:
    result = run(broker(), default_channel=kind)
    status = result.statuses["b1"]
    assert ready(status) == "True"
    assert status["annotations"] == channel_annotations(kind)
    assert result.snapshot.brokers[("default", "default")].bus == CHANNEL_KINDS[kind][1]


def test_k59_broker_config_may_name_a_channel_kind_directly() -> None:
    config = {"apiVersion": "messaging.knative.dev/v1beta1", "kind": "KafkaChannel", "name": "x"}
    result = run(broker(config=config))
    assert ready(result.statuses["b1"]) == "True"
    assert result.statuses["b1"]["annotations"] == channel_annotations("KafkaChannel")
    assert result.snapshot.brokers[("default", "default")].bus == "kafka"


@pytest.mark.parametrize("key", ["channel-template-spec", "channelTemplateSpec"])
def test_k59_broker_config_map_channel_template_spec_names_the_kind(key: str) -> None:
    # As Knative's config-br-default-channel in knative-eventing.
    template = "apiVersion: messaging.knative.dev/v1alpha1\nkind: NatsJetStreamChannel\n"
    result = run(broker(config=config_ref()), config_map(**{key: template}))
    status = result.statuses["b1"]
    assert ready(status) == "True"
    assert status["annotations"]["knative.dev/channelKind"] == "NatsJetStreamChannel"
    assert result.snapshot.brokers[("default", "default")].bus == "nats"
    assert result.statuses["cm1"] == {}  # a ConfigMap has no status of its own


def test_k59_broker_whose_config_map_is_missing_is_not_ready_then_ready_when_it_appears() -> None:
    owner = broker(config=config_ref())
    result = run(owner, trigger())
    status = result.statuses["b1"]
    assert ready(status) == "False"
    channel_ready = condition(status, "ChannelReady")
    assert (channel_ready["status"], channel_ready["reason"]) == ("False", "ConfigNotFound")
    assert "knative-eventing/config-br-default-channel" in channel_ready["message"]
    assert condition(status, "Ready")["reason"] == "ConfigNotFound"
    assert "address" not in status and "annotations" not in status
    assert result.snapshot.brokers == {}
    broker_ready = condition(result.statuses["t1"], "BrokerReady")
    assert (broker_ready["status"], broker_ready["reason"]) == ("False", "ConfigNotFound")
    assert result.snapshot.triggers == {}

    template = "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"
    later = run(
        with_status(owner, result),
        config_map(**{"channel-template-spec": template}),
        trigger(),
        now=LATER,
    )
    assert ready(later.statuses["b1"]) == "True"
    assert later.snapshot.brokers[("default", "default")].bus == "memory"
    assert "t1" in later.snapshot.triggers


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "no channel-template-spec key"),
        ({"channel-template-spec": "kind: [unclosed"}, "not YAML"),
        ({"channel-template-spec": "- a list"}, "no kind"),
        ({"channel-template-spec": "apiVersion: v1\nkind: Service\n"}, "Service"),
    ],
)
def test_k59_broker_config_map_without_a_usable_template_is_not_ready(
    data: dict[str, str], fragment: str
) -> None:
    result = run(broker(config=config_ref()), config_map(**data))
    channel_ready = condition(result.statuses["b1"], "ChannelReady")
    assert (channel_ready["status"], channel_ready["reason"]) == ("False", "ConfigInvalid")
    assert fragment in channel_ready["message"]
    assert result.snapshot.brokers == {}


def test_k59_broker_config_naming_a_kind_that_is_not_a_channel_lists_the_channel_kinds() -> None:
    result = run(broker(config={"apiVersion": "v1", "kind": "Secret", "name": "s"}))
    channel_ready = condition(result.statuses["b1"], "ChannelReady")
    assert channel_ready["reason"] == "ConfigInvalid"
    assert channel_ready["message"] == (
        "spec.config names Secret; channel kinds: InMemoryChannel, KafkaChannel, "
        "NatsJetStreamChannel, PubSubChannel, RedisStreamChannel"
    )


def test_k59_kafka_broker_class_is_backed_by_kafka_whatever_the_default() -> None:
    result = run(classed("Kafka"), default_channel="NatsJetStreamChannel")
    assert result.statuses["b1"]["annotations"] == channel_annotations("KafkaChannel")
    assert result.snapshot.brokers[("default", "default")].bus == "kafka"
    mt = run(classed("MTChannelBasedBroker"), default_channel="NatsJetStreamChannel")
    assert mt.snapshot.brokers[("default", "default")].bus == "nats"


def test_k59_kafka_broker_sample_with_kafka_broker_config_is_ready_on_kafka() -> None:
    """Knative's Kafka Broker sample: spec.config names kafka-broker-config (bootstrap.servers,
    ...), which holds no channel template; cemesh takes Kafka settings from its own config."""
    sample = classed("Kafka", config=config_ref("kafka-broker-config"))
    for objects in (
        [sample],
        [sample, config_map("kafka-broker-config", **{"bootstrap.servers": "k:9092"})],
    ):
        result = run(*objects)
        assert ready(result.statuses["b1"]) == "True"
        assert result.snapshot.brokers[("default", "default")].bus == "kafka"


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
        objects.extend(backed("ch", "c1"))
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
    assert 'cannot resolve Service "default/svc" (v1)' in resolved["message"]
    assert "references and uri resolve" in resolved["message"]
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
    assert set(CATALOG.address_resolvers) == {
        ("eventing.knative.dev", "Broker"),
        ("messaging.knative.dev", "Channel"),
        ("messaging.knative.dev", "InMemoryChannel"),
        ("messaging.knative.dev", "KafkaChannel"),
        ("messaging.knative.dev", "NatsJetStreamChannel"),
        ("messaging.cemesh.dev", "PubSubChannel"),
        ("messaging.cemesh.dev", "RedisStreamChannel"),
        ("flows.knative.dev", "Sequence"),
        ("flows.knative.dev", "Parallel"),
        ("serving.knative.dev", "Service"),
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
        *backed(delivery=channel_delivery),
        subscription("own", "s1", delivery={"backoffPolicy": "linear"}),
        subscription("inherits", "s2"),
        *backed("plain", "c2"),
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
    result = run(subscription(kind="RabbitmqChannel"))
    cond = condition(result.statuses["s1"], "ChannelReady")
    assert cond["reason"] == "ChannelNotSupported"
    assert (
        "channel kinds: Channel, InMemoryChannel, KafkaChannel, NatsJetStreamChannel, "
        "PubSubChannel, RedisStreamChannel" in cond["message"]
    )


def test_k155_ready_subscription_reports_physical_subscription_and_runs() -> None:
    result = run(
        *backed(),
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
    result = run(*backed(), subscription(reply={"ref": ref("Broker", "gone")}))
    status = result.statuses["s1"]
    assert ready(status) == "False"
    assert status["physicalSubscription"]["replyUri"] == ""
    resolved = condition(status, "ReferencesResolved")
    assert resolved["reason"] == "DestinationNotFound"
    assert resolved["message"].startswith("reply:")
    assert result.snapshot.subscriptions == {}


def test_subscription_without_reply_has_no_reply_uri() -> None:
    result = run(*backed(), subscription())
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
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        "metadata": {"name": "p", "namespace": "default", "uid": "p1", "generation": 1},
        "spec": {},
    }
    result = run(secret, other)
    assert result.statuses == {"x1": {}}


def test_reconcile_does_not_modify_its_input() -> None:
    objects = [broker(), trigger(), *backed(delivery={"retry": 1}), subscription()]
    before = copy.deepcopy(objects)
    run(*objects)
    assert objects == before
