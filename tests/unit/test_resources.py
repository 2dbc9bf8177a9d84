"""Admission of resources: validation and defaults per kind, errors naming the field (K54-K69,
K112-K122, K140, K153-K154, K159, K162), ISO-8601 durations (K122), Knative doc samples, the
channel kinds (InMemoryChannel, KafkaChannel, NatsJetStreamChannel, PubSubChannel,
RedisStreamChannel) and ConfigMap."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.controlplane.resources import (
    BROKER,
    BROKER_CLASS_ANNOTATION,
    BROKER_LABEL,
    DEFAULT_BROKER_CLASS,
    trigger_broker,
)
from broker.core.durations import parse_duration
from broker.core.errors import InvalidResource
from broker.server.features import CATALOG, admit, type_for_kind
from tests.conftest import shared_fixture_dir

EVENTING = "eventing.knative.dev/v1"
MESSAGING = "messaging.knative.dev/v1"
SINK = {"uri": "http://sink.example.com/"}
# Every channel implementation a Channel may be backed by, with the apiVersion it is served as.
CHANNEL_KINDS = {
    "InMemoryChannel": MESSAGING,
    "KafkaChannel": "messaging.knative.dev/v1beta1",
    "NatsJetStreamChannel": "messaging.knative.dev/v1alpha1",
    "PubSubChannel": "messaging.cemesh.dev/v1alpha1",
    "RedisStreamChannel": "messaging.cemesh.dev/v1alpha1",
}


def obj(kind: str, spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    api_version = {
        "Broker": EVENTING,
        "Trigger": EVENTING,
        "Channel": MESSAGING,
        "Subscription": MESSAGING,
        **CHANNEL_KINDS,
    }[kind]
    result: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "x", **metadata},
    }
    if spec is not None:
        result["spec"] = spec
    return result


def trigger(**spec: Any) -> dict[str, Any]:
    return obj("Trigger", {"broker": "default", "subscriber": SINK, **spec})


def subscription(**spec: Any) -> dict[str, Any]:
    channel = {"apiVersion": MESSAGING, "kind": "Channel", "name": "ch"}
    return obj("Subscription", {"channel": channel, "subscriber": SINK, **spec})


def secret(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, **fields}


def config_map(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, **fields}


def invalid(body: Any, field: str, *fragments: str, **kwargs: Any) -> InvalidResource:
    with pytest.raises(InvalidResource) as info:
        admit(body, **kwargs)
    assert info.value.field == field, info.value
    for fragment in fragments:
        assert fragment in info.value.reason, info.value.reason
    return info.value


# --- durations (K122) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT0.2S", 0.2), ("PT1M", 60), ("P1D", 86400), ("PT1.5H", 5400), ("PT0S", 0), ("P1W", 604800)],
)
def test_k122_iso8601_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text, "f") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-PT1S", "PT", "P1DT", "1S", "pt1s", "", "PT1S ", "soon"])
def test_k122_negative_or_unparsable_durations_are_invalid(text: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_duration(text, "spec.delivery.backoffDelay")
    assert info.value.field == "spec.delivery.backoffDelay"
    assert "ISO-8601" in info.value.reason or "negative" in info.value.reason


def test_durations_must_be_strings() -> None:
    with pytest.raises(InvalidResource, match="ISO-8601"):
        parse_duration(5, "timeout")  # type: ignore[arg-type]


# --- shared: apiVersion, kind, body, metadata ---------------------------------------------------


def test_missing_or_unknown_api_version_and_kind_are_named() -> None:
    invalid({"kind": "Broker", "metadata": {"name": "b"}}, "apiVersion", "required")
    invalid({"apiVersion": EVENTING, "metadata": {"name": "b"}}, "kind", "required")
    invalid({"apiVersion": EVENTING, "kind": "Brokr", "metadata": {"name": "b"}}, "kind", "Brokr")
    invalid({"apiVersion": "eventing.knative.dev/v2", "kind": "Broker"}, "apiVersion", "v2")
    invalid({"apiVersion": 1, "kind": "Broker"}, "apiVersion", "string")


def test_non_object_body_and_spec_are_rejected() -> None:
    invalid(["Broker"], "", "object")
    invalid(obj("Broker", ["x"]), "spec", "object")  # type: ignore[arg-type]
    invalid({**obj("Broker"), "metadata": "x"}, "metadata", "object")


def test_name_is_required_and_must_be_a_dns_subdomain() -> None:
    invalid({**obj("Broker"), "metadata": {}}, "metadata.name", "required")
    invalid({**obj("Broker"), "metadata": {"generateName": "b-"}}, "metadata.name", "generateName")
    for bad in ("Default", "a_b", "-a", "a-", "a" * 254, "a..b", "a\n"):
        invalid(obj("Broker", name=bad), "metadata.name", "lower-case")
    for good in ("default", "a.b-c", "a" * 253, "0"):
        assert admit(obj("Broker", name=good))["metadata"]["name"] == good


def test_namespace_comes_from_the_object_or_the_argument_and_defaults_to_default() -> None:
    assert admit(obj("Broker"))["metadata"]["namespace"] == "default"
    assert admit(obj("Broker"), namespace="team")["metadata"]["namespace"] == "team"
    assert admit(obj("Broker", namespace="team"))["metadata"]["namespace"] == "team"
    assert (
        admit(obj("Broker", namespace="team"), namespace="team")["metadata"]["namespace"] == "team"
    )
    invalid(obj("Broker", namespace="a"), "metadata.namespace", "'a'", "'b'", namespace="b")
    invalid(obj("Broker", namespace="a.b"), "metadata.namespace", "63")
    invalid(obj("Broker"), "metadata.namespace", "63", namespace="x" * 64)


def test_server_set_metadata_and_status_are_dropped() -> None:
    body = obj(
        "Broker",
        uid="u",
        generation=7,
        resourceVersion="9",
        creationTimestamp="2020-01-01T00:00:00Z",
        finalizers=["f"],
    )
    body["status"] = {"conditions": []}
    admitted = admit(body)
    assert set(admitted["metadata"]) == {"name", "namespace", "labels", "annotations"}
    assert "status" not in admitted
    assert list(admitted) == ["apiVersion", "kind", "metadata", "spec"]


def test_input_is_not_modified() -> None:
    body = trigger()
    before = copy.deepcopy(body)
    admit(body)
    assert body == before


def test_labels_and_annotations_must_be_string_maps_with_valid_keys() -> None:
    invalid(obj("Broker", labels={"a": 1}), "metadata.labels[a]", "string")
    invalid(obj("Broker", labels={"a": "x y"}), "metadata.labels[a]", "label value")
    invalid(obj("Broker", labels={"bad key": "x"}), "metadata.labels", "bad key")
    invalid(obj("Broker", annotations={"a": True}), "metadata.annotations[a]", "string")
    invalid(obj("Broker", annotations=["a"]), "metadata.annotations", "map")
    ok = admit(obj("Broker", labels={"app.kubernetes.io/name": "x"}, annotations={"note": "a b"}))
    assert ok["metadata"]["labels"] == {"app.kubernetes.io/name": "x"}
    assert ok["metadata"]["annotations"]["note"] == "a b"


def test_unknown_spec_fields_are_kept() -> None:
    admitted = admit(trigger(somethingNew={"a": 1}))
    assert admitted["spec"]["somethingNew"] == {"a": 1}


def test_admission_is_idempotent_on_stored_objects() -> None:
    for body in (
        obj("Broker", {"delivery": {"retry": 3}}),
        trigger(filters=[{"exact": {"type": "a"}}]),
        obj("Channel"),
        obj("Channel", {"channelTemplate": {"apiVersion": MESSAGING, "kind": "InMemoryChannel"}}),
        *(obj(kind) for kind in CHANNEL_KINDS),
        obj("KafkaChannel", {"numPartitions": 3, "replicationFactor": 1}),
        subscription(reply={"uri": "http://r/"}),
        secret(stringData={"a": "b"}),
        config_map(data={"a": "b"}, immutable=True),
    ):
        once = admit(body)
        stored = copy.deepcopy(once)
        stored["metadata"].update(uid="u", generation=1, resourceVersion="1")
        stored["status"] = {"conditions": []}
        assert admit(stored, old=stored) == once


def test_every_served_kind_has_an_admission_entry() -> None:
    assert set(CATALOG.admissions) == set(CATALOG.kinds)


def test_update_cannot_change_name_namespace_or_kind() -> None:
    old = admit(obj("Broker"))
    invalid(obj("Broker", name="y"), "metadata.name", "cannot change", old=old)
    invalid(obj("Broker", namespace="other"), "metadata.namespace", "cannot change", old=old)


# --- Broker (K59, K66) --------------------------------------------------------------------------


def test_k59_broker_class_defaults_to_mt_channel_based_broker() -> None:
    admitted = admit(obj("Broker"))
    assert admitted["metadata"]["annotations"][BROKER_CLASS_ANNOTATION] == DEFAULT_BROKER_CLASS
    assert admitted["spec"] == {}
    kafka = admit(obj("Broker", annotations={BROKER_CLASS_ANNOTATION: "Kafka"}))
    assert kafka["metadata"]["annotations"][BROKER_CLASS_ANNOTATION] == "Kafka"


def test_k59_broker_class_is_immutable_and_kept_when_an_update_omits_it() -> None:
    old = admit(obj("Broker", annotations={BROKER_CLASS_ANNOTATION: "Kafka"}))
    kept = admit(obj("Broker"), old=old)
    assert kept["metadata"]["annotations"][BROKER_CLASS_ANNOTATION] == "Kafka"
    invalid(
        obj("Broker", annotations={BROKER_CLASS_ANNOTATION: DEFAULT_BROKER_CLASS}),
        f"metadata.annotations[{BROKER_CLASS_ANNOTATION}]",
        "immutable",
        old=old,
    )


def test_k59_broker_config_is_immutable() -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "namespace": "n"}
    old = admit(obj("Broker", {"config": config}))
    assert admit(obj("Broker", {"config": dict(config), "delivery": {"retry": 1}}), old=old)
    invalid(obj("Broker", {"config": {**config, "name": "d"}}), "spec.config", "immutable", old=old)
    invalid(obj("Broker", {}), "spec.config", "immutable", old=old)
    invalid(obj("Broker", {"config": "c"}), "spec.config", "object")


# --- delivery (K112, K114, K120, K121) ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["Broker", "Trigger", "Channel", *CHANNEL_KINDS, "Subscription"])
def test_k114_delivery_is_validated_on_every_kind_that_has_it(kind: str) -> None:
    def body(delivery: dict[str, Any]) -> dict[str, Any]:
        if kind == "Trigger":
            return trigger(delivery=delivery)
        if kind == "Subscription":
            return subscription(delivery=delivery)
        return obj(kind, {"delivery": delivery})

    good = {
        "retry": 5,
        "backoffPolicy": "linear",
        "backoffDelay": "PT0.5S",
        "timeout": "PT10S",
        "retryAfterMax": "PT0S",
        "format": "json",
        "deadLetterSink": {"uri": "http://dls.example.com"},
    }
    assert admit(body(good))["spec"]["delivery"] == good
    invalid(body({"retry": -1}), "spec.delivery.retry", ">= 0")
    invalid(body({"retry": "3"}), "spec.delivery.retry", "integer")
    invalid(body({"retry": True}), "spec.delivery.retry", "integer")
    invalid(body({"backoffPolicy": "fibonacci"}), "spec.delivery.backoffPolicy", "linear")
    invalid(body({"backoffDelay": "0.5s"}), "spec.delivery.backoffDelay", "ISO-8601")
    invalid(body({"backoffDelay": "-PT1S"}), "spec.delivery.backoffDelay", "negative")
    invalid(body({"timeout": "PT0S"}), "spec.delivery.timeout", "longer than zero")
    invalid(body({"timeout": "10"}), "spec.delivery.timeout", "ISO-8601")
    invalid(body({"retryAfterMax": "1m"}), "spec.delivery.retryAfterMax", "ISO-8601")
    invalid(body({"format": "xml"}), "spec.delivery.format", "json")
    invalid(body({"retries": 3}), "spec.delivery.retries", "unknown field")
    invalid(body({"deadLetterSink": {}}), "spec.delivery.deadLetterSink", "ref")
    invalid(body("PT1S"), "spec.delivery", "object")  # type: ignore[arg-type]


def test_k112_dead_letter_sink_ref_gets_the_objects_namespace() -> None:
    body = obj(
        "Broker",
        {
            "delivery": {
                "deadLetterSink": {"ref": {"apiVersion": MESSAGING, "kind": "Channel", "name": "d"}}
            }
        },
        namespace="team",
    )
    ref = admit(body)["spec"]["delivery"]["deadLetterSink"]["ref"]
    assert ref["namespace"] == "team"


# --- Trigger (K54, K55, K67, K69, K74, K81, K159, K162) -----------------------------------------


def test_k54_trigger_broker_is_required_and_immutable() -> None:
    invalid(obj("Trigger", {"subscriber": SINK}), "spec.broker", "required")
    invalid(trigger(broker=""), "spec.broker", "required")
    invalid(trigger(broker=3), "spec.broker", "string")
    invalid(trigger(broker="Bad_Name"), "spec.broker", "lower-case")
    old = admit(trigger())
    assert admit(trigger(filter={"attributes": {"type": "a"}}), old=old)  # K60: others may change
    invalid(trigger(broker="other"), "spec.broker", "immutable", old=old)


def test_k55_broker_and_broker_ref_are_mutually_exclusive() -> None:
    ref = {"name": "default"}
    admitted = admit(obj("Trigger", {"brokerRef": ref, "subscriber": SINK}))
    assert trigger_broker(admitted["spec"]) == "default"
    assert admitted["metadata"]["labels"][BROKER_LABEL] == "default"
    invalid(trigger(brokerRef=ref), "spec.brokerRef", "mutually exclusive")
    invalid(
        obj("Trigger", {"brokerRef": {}, "subscriber": SINK}), "spec.brokerRef.name", "required"
    )
    invalid(
        obj("Trigger", {"brokerRef": {"name": "b", "namespace": "other"}, "subscriber": SINK}),
        "spec.brokerRef.namespace",
        "other namespaces",
    )
    same_ns = {"name": "b", "namespace": "default", "kind": "Broker", "apiVersion": EVENTING}
    assert admit(obj("Trigger", {"brokerRef": same_ns, "subscriber": SINK}))
    invalid(
        obj("Trigger", {"brokerRef": {"name": "b", "kind": "Channel"}, "subscriber": SINK}),
        "spec.brokerRef.kind",
        "Broker",
    )
    old = admit(obj("Trigger", {"brokerRef": ref, "subscriber": SINK}))
    invalid(
        obj("Trigger", {"brokerRef": {"name": "other"}, "subscriber": SINK}),
        "spec.brokerRef.name",
        "immutable",
        old=old,
    )
    assert admit(trigger(), old=old)  # the same broker, named the other way


def test_k67_trigger_defaults_filter_label_and_subscriber_ref_namespace() -> None:
    body = obj(
        "Trigger",
        {
            "broker": "b",
            "subscriber": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "s"}},
        },
        namespace="team",
    )
    admitted = admit(body)
    assert admitted["spec"]["filter"] == {}
    assert admitted["metadata"]["labels"] == {BROKER_LABEL: "b"}
    assert admitted["spec"]["subscriber"]["ref"]["namespace"] == "team"
    explicit = copy.deepcopy(body)
    explicit["spec"]["subscriber"]["ref"]["namespace"] = "elsewhere"
    assert admit(explicit)["spec"]["subscriber"]["ref"]["namespace"] == "elsewhere"


def test_trigger_subscriber_is_required() -> None:
    invalid(obj("Trigger", {"broker": "b"}), "spec.subscriber", "required")


@pytest.mark.parametrize(
    ("destination", "field", "fragment"),
    [
        ({}, "spec.subscriber", "neither"),
        ({"uri": ""}, "spec.subscriber", "neither"),
        ("http://x", "spec.subscriber", "object"),
        ({"uri": "/relative"}, "spec.subscriber.uri", "relative"),
        (
            {"uri": "http://x/", "ref": {"apiVersion": "v1", "kind": "Service", "name": "s"}},
            "spec.subscriber.uri",
            "absolute uri cannot be combined with ref",
        ),
        ({"uri": "ftp://x/"}, "spec.subscriber.uri", "http"),
        ({"uri": "http://"}, "spec.subscriber.uri", "host"),
        ({"uri": 5}, "spec.subscriber.uri", "string"),
        ({"ref": {"kind": "Service", "name": "s"}}, "spec.subscriber.ref.apiVersion", "required"),
        ({"ref": {"apiVersion": "v1", "name": "s"}}, "spec.subscriber.ref.kind", "required"),
        ({"ref": {"apiVersion": "v1", "kind": "Service"}}, "spec.subscriber.ref.name", "required"),
        ({"ref": "svc"}, "spec.subscriber.ref", "object reference"),
    ],
)
def test_k159_k162_destination_rules(destination: Any, field: str, fragment: str) -> None:
    invalid(trigger(subscriber=destination), field, fragment)


def test_k159_destination_forms_that_are_accepted() -> None:
    ref = {"apiVersion": "v1", "kind": "Service", "name": "s"}
    assert admit(trigger(subscriber={"uri": "https://x.example.com:8443/p?q=1"}))
    assert admit(trigger(subscriber={"ref": ref}))
    with_path = admit(trigger(subscriber={"ref": ref, "uri": "/path"}))
    assert with_path["spec"]["subscriber"]["uri"] == "/path"


def test_k74_k77_legacy_filter_attributes_are_checked() -> None:
    invalid(trigger(filter={"attributes": {"My-Ext": "a"}}), "spec.filter.attributes", "My-Ext")
    invalid(trigger(filter={"attributes": {"exint": 1}}), "spec.filter.attributes.exint", "string")
    assert admit(trigger(filter={"attributes": {"type": "", "myext": "v"}}))


def test_k81_k85_k89_filters_are_checked_with_their_paths() -> None:
    invalid(
        trigger(filters=[{"exact": {"type": "a"}}, {"prefix": {"type": ""}}]),
        "spec.filters[1].prefix.type",
        "empty",
    )
    invalid(
        trigger(filters=[{"exact": {"type": "a"}, "suffix": {"type": "b"}}]),
        "spec.filters[0]",
        "multiple dialects found",
    )
    invalid(
        trigger(filters=[{"cesql": "type = "}]), "spec.filters[0].cesql", "invalid CESQL expression"
    )
    assert admit(trigger(filters=[{"any": [{"exact": {"type": "a"}}, {"not": {}}]}]))


def test_k69_dependency_annotation_must_be_a_json_object_reference() -> None:
    field = "metadata.annotations[knative.dev/dependency]"

    def with_dependency(value: str, namespace: str = "default") -> dict[str, Any]:
        body = trigger()
        body["metadata"].update(annotations={"knative.dev/dependency": value}, namespace=namespace)
        return body

    good = {"kind": "PingSource", "name": "p", "apiVersion": "sources.knative.dev/v1"}
    assert admit(with_dependency(json.dumps(good)))
    assert admit(with_dependency(json.dumps({**good, "namespace": "default"})))
    invalid(with_dependency("PingSource/p"), field, "JSON object reference")
    invalid(with_dependency("[]"), field, "object reference")
    for key in ("kind", "name", "apiVersion"):
        missing = {k: v for k, v in good.items() if k != key}
        invalid(with_dependency(json.dumps(missing)), f"{field}.{key}", "required")
    invalid(with_dependency(json.dumps({**good, "namespace": "other"})), f"{field}.namespace", "")


def test_delivery_order_annotation_is_ordered_or_unordered() -> None:
    key = "kafka.eventing.knative.dev/delivery.order"
    for value in ("ordered", "unordered"):
        body = trigger()
        body["metadata"]["annotations"] = {key: value}
        assert admit(body)["metadata"]["annotations"][key] == value
    body = trigger()
    body["metadata"]["annotations"] = {key: "sorted"}
    invalid(body, f"metadata.annotations[{key}]", "ordered")


# --- Channel, InMemoryChannel (K140) ------------------------------------------------------------


def test_k140_channel_template_is_left_unset_for_the_configured_default_and_is_immutable() -> None:
    # No template: the kind comes from CEMESH_DEFAULT_CHANNEL when reconciled, not admission.
    admitted = admit(obj("Channel"))
    assert "channelTemplate" not in admitted["spec"]
    assert admit(obj("Channel", {"delivery": {"retry": 2}}), old=admitted)  # others may change
    imc = {"apiVersion": MESSAGING, "kind": "InMemoryChannel"}
    invalid(
        obj("Channel", {"channelTemplate": imc}), "spec.channelTemplate", "immutable", old=admitted
    )

    explicit = admit(obj("Channel", {"channelTemplate": imc}))
    assert explicit["spec"]["channelTemplate"] == imc
    assert admit(obj("Channel", {"channelTemplate": dict(imc)}), old=explicit)
    # An update leaving the template out keeps it (a Channel stored when admission defaulted
    # it re-applies from the same template-less YAML).
    kept = admit(obj("Channel", {"delivery": {"retry": 2}}), old=explicit)
    assert kept["spec"]["channelTemplate"] == imc
    changed = obj("Channel", {"channelTemplate": {**imc, "spec": {"x": 1}}})
    invalid(changed, "spec.channelTemplate", "immutable", old=explicit)
    kafka = {"apiVersion": CHANNEL_KINDS["KafkaChannel"], "kind": "KafkaChannel"}
    invalid(
        obj("Channel", {"channelTemplate": kafka}),
        "spec.channelTemplate",
        "immutable",
        old=explicit,
    )


@pytest.mark.parametrize(("kind", "api_version"), CHANNEL_KINDS.items())
def test_k140_channel_template_may_name_every_channel_kind(kind: str, api_version: str) -> None:
    template = {"apiVersion": api_version, "kind": kind, "spec": {"numPartitions": 2}}
    admitted = admit(obj("Channel", {"channelTemplate": template}))
    assert admitted["spec"]["channelTemplate"] == template  # kept as written, spec included


def test_k140_channel_template_of_an_unknown_kind_or_version_names_the_available_ones() -> None:
    listed = (
        "available channel kinds: InMemoryChannel (messaging.knative.dev/v1), KafkaChannel "
        "(messaging.knative.dev/v1beta1), NatsJetStreamChannel (messaging.knative.dev/v1alpha1), "
        "PubSubChannel (messaging.cemesh.dev/v1alpha1), RedisStreamChannel "
        "(messaging.cemesh.dev/v1alpha1)"
    )
    rabbit = {"apiVersion": "messaging.knative.dev/v1", "kind": "RabbitmqChannel"}
    error = invalid(
        obj("Channel", {"channelTemplate": rabbit}), "spec.channelTemplate.kind", "RabbitmqChannel"
    )
    assert listed in error.reason
    wrong_version = {"apiVersion": MESSAGING, "kind": "KafkaChannel"}  # KafkaChannel is v1beta1
    invalid(
        obj("Channel", {"channelTemplate": wrong_version}),
        "spec.channelTemplate.kind",
        "KafkaChannel (messaging.knative.dev/v1) is not available",
    )
    invalid(
        obj("Channel", {"channelTemplate": {"kind": "InMemoryChannel"}}),
        "spec.channelTemplate.apiVersion",
        "required",
    )
    invalid(
        obj("Channel", {"channelTemplate": {"apiVersion": MESSAGING}}),
        "spec.channelTemplate.kind",
        "required",
    )
    invalid(
        obj("Channel", {"channelTemplate": "InMemoryChannel"}), "spec.channelTemplate", "object"
    )


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_every_channel_kind_admits_with_an_empty_spec(kind: str) -> None:
    admitted = admit(obj(kind))
    assert admitted["apiVersion"] == CHANNEL_KINDS[kind]
    assert admitted["spec"] == {}


@pytest.mark.parametrize(
    ("kind", "api_version"),
    [
        ("KafkaChannel", MESSAGING),  # served as v1beta1 only
        ("NatsJetStreamChannel", "messaging.knative.dev/v1beta1"),
        ("PubSubChannel", "messaging.cemesh.dev/v1"),
    ],
)
def test_channel_kinds_in_a_version_not_served_name_the_served_one(
    kind: str, api_version: str
) -> None:
    body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
    invalid(body, "apiVersion", CHANNEL_KINDS[kind].rpartition("/")[2])


def test_cemesh_channel_kinds_are_not_served_in_the_knative_group() -> None:
    body = {"apiVersion": "messaging.knative.dev/v1alpha1", "kind": "PubSubChannel"}
    invalid({**body, "metadata": {"name": "x"}}, "kind", "PubSubChannel")


def test_kafka_channel_partitions_and_replication_are_positive_integers() -> None:
    spec = {"numPartitions": 10, "replicationFactor": 3, "retentionDuration": "PT168H"}
    assert admit(obj("KafkaChannel", spec))["spec"] == spec
    for key in ("numPartitions", "replicationFactor"):
        for bad in (0, -1, "3", 2.5, True):
            invalid(obj("KafkaChannel", {key: bad}), f"spec.{key}", "integer >= 1")


@pytest.mark.parametrize("text", ["168h", "P", "-PT1H", "soon"])
def test_kafka_channel_retention_is_an_iso8601_duration(text: str) -> None:
    invalid(obj("KafkaChannel", {"retentionDuration": text}), "spec.retentionDuration", "")


def test_kafka_channel_partitions_and_replication_are_immutable_retention_is_not() -> None:
    old = admit(obj("KafkaChannel", {"numPartitions": 3, "replicationFactor": 1}))
    again = {"numPartitions": 3, "replicationFactor": 1, "retentionDuration": "PT1H"}
    assert admit(obj("KafkaChannel", again), old=old)["spec"]["retentionDuration"] == "PT1H"
    invalid(
        obj("KafkaChannel", {"numPartitions": 4, "replicationFactor": 1}),
        "spec.numPartitions",
        "immutable",
        old=old,
    )
    invalid(
        obj("KafkaChannel", {"numPartitions": 3, "replicationFactor": 2}),
        "spec.replicationFactor",
        "immutable",
        old=old,
    )
    invalid(
        obj("KafkaChannel", {"replicationFactor": 1}), "spec.numPartitions", "immutable", old=old
    )


def test_owner_references_are_kept_and_must_be_a_list_of_objects() -> None:
    owner = {
        "apiVersion": MESSAGING,
        "kind": "Channel",
        "name": "ch",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    admitted = admit(obj("InMemoryChannel", name="ch", ownerReferences=[owner]))
    assert admitted["metadata"]["ownerReferences"] == [owner]
    assert "ownerReferences" not in admit(obj("InMemoryChannel"))["metadata"]
    invalid(obj("InMemoryChannel", ownerReferences=owner), "metadata.ownerReferences", "list")
    invalid(obj("InMemoryChannel", ownerReferences=["ch"]), "metadata.ownerReferences", "list")


# --- Subscription (K153, K154) ------------------------------------------------------------------


def test_k153_subscription_channel_is_a_required_same_namespace_reference() -> None:
    invalid(obj("Subscription", {"subscriber": SINK}), "spec.channel", "required")
    invalid(subscription(channel={"kind": "Channel", "name": "c"}), "spec.channel.apiVersion", "")
    invalid(subscription(channel={"apiVersion": MESSAGING, "name": "c"}), "spec.channel.kind", "")
    invalid(
        subscription(channel={"apiVersion": MESSAGING, "kind": "Channel"}), "spec.channel.name", ""
    )
    invalid(
        subscription(
            channel={"apiVersion": MESSAGING, "kind": "Channel", "name": "c", "namespace": "o"}
        ),
        "spec.channel.namespace",
        "'o'",
    )
    admitted = admit(subscription())
    assert admitted["spec"]["channel"]["namespace"] == "default"


def test_k153_subscription_channel_is_immutable() -> None:
    old = admit(subscription())
    assert admit(subscription(reply={"uri": "http://r.example.com/"}), old=old)  # K157
    other = {"apiVersion": MESSAGING, "kind": "Channel", "name": "other"}
    invalid(subscription(channel=other), "spec.channel", "immutable", old=old)


def test_k154_subscription_subscriber_required_reply_optional() -> None:
    channel = {"apiVersion": MESSAGING, "kind": "Channel", "name": "ch"}
    invalid(obj("Subscription", {"channel": channel}), "spec.subscriber", "required")
    invalid(subscription(reply={"uri": "relative"}), "spec.reply.uri", "relative")
    assert "reply" not in admit(subscription())["spec"]


# --- Secret -------------------------------------------------------------------------------------


def test_secret_defaults_type_and_merges_string_data_into_base64_data() -> None:
    admitted = admit(secret(data={"a": base64.b64encode(b"1").decode()}, stringData={"b": "two"}))
    assert admitted["type"] == "Opaque"
    assert "stringData" not in admitted
    assert admitted["data"] == {"a": "MQ==", "b": base64.b64encode(b"two").decode()}
    assert "spec" not in admitted
    override = admit(secret(data={"a": "MQ=="}, stringData={"a": "new"}))
    assert base64.b64decode(override["data"]["a"]) == b"new"  # stringData wins, as in Kubernetes
    assert admit(secret(type="kubernetes.io/basic-auth"))["type"] == "kubernetes.io/basic-auth"


def test_secret_data_must_be_base64_with_valid_keys() -> None:
    invalid(secret(data={"token": "not base64!"}), "data.token", "base64")
    invalid(secret(data={"bad key": "MQ=="}), "data", "bad key")
    invalid(secret(data={"a": 1}), "data.a", "string")
    invalid(secret(stringData={"a": 1}), "stringData.a", "string")
    invalid(secret(data="x"), "data", "map")


def test_secret_name_is_required() -> None:
    invalid({"apiVersion": "v1", "kind": "Secret", "metadata": {}}, "metadata.name", "required")
    invalid({"apiVersion": "v1", "kind": "Secret"}, "metadata.name", "required")


def test_secret_type_is_immutable_and_immutable_secrets_keep_their_data() -> None:
    old = admit(secret(stringData={"a": "1"}))
    assert admit(secret(stringData={"a": "2"}), old=old)
    invalid(secret(type="kubernetes.io/tls"), "type", "immutable", old=old)
    frozen = admit(secret(stringData={"a": "1"}, immutable=True))
    assert admit(secret(stringData={"a": "1"}, immutable=True), old=frozen)
    invalid(secret(stringData={"a": "2"}, immutable=True), "data", "immutable", old=frozen)
    invalid(secret(immutable="yes"), "immutable", "true or false")


# --- ConfigMap ----------------------------------------------------------------------------------


def test_config_map_keeps_data_binary_data_and_immutable() -> None:
    template = "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"
    body = config_map(
        data={"channel-template-spec": template}, binaryData={"b": "eA=="}, immutable=True
    )
    body["metadata"]["namespace"] = "knative-eventing"
    body["status"] = {"x": 1}
    admitted = admit(body)
    assert admitted == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cm",
            "namespace": "knative-eventing",
            "labels": {},
            "annotations": {},
        },
        "data": {"channel-template-spec": template},
        "binaryData": {"b": "eA=="},
        "immutable": True,
    }
    assert "data" not in admit(config_map())


def test_config_map_values_must_be_strings_and_name_is_required() -> None:
    invalid(config_map(data={"n": 3}), "data.n", "string")
    invalid(config_map(binaryData={"b": 1}), "binaryData.b", "string")
    invalid(config_map(data=["a"]), "data", "map")
    invalid(config_map(immutable="yes"), "immutable", "true or false")
    invalid({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, "metadata.name", "required")


def test_config_map_keys_follow_the_kubernetes_config_map_key_rule() -> None:
    # Knative's own ConfigMaps carry an "_example" key; keys are [-._a-zA-Z0-9]+.
    keys = {"_example": "x", ".env": "x", "bootstrap.servers": "x", "channel-template-spec": "x"}
    assert admit(config_map(data=keys))["data"] == keys
    for bad in ("a/b", "a b", ""):
        invalid(config_map(data={bad: "x"}), "data", "invalid key")


def test_immutable_config_map_keeps_its_data() -> None:
    old = admit(config_map(data={"a": "1"}))
    assert admit(config_map(data={"a": "2"}), old=old)["data"] == {"a": "2"}
    frozen = admit(config_map(data={"a": "1"}, immutable=True))
    assert admit(config_map(data={"a": "1"}, immutable=True), old=frozen)
    invalid(config_map(data={"a": "2"}, immutable=True), "data", "immutable", old=frozen)
    invalid(
        config_map(data={"a": "1"}, binaryData={"b": "eA=="}, immutable=True),
        "binaryData",
        "immutable",
        old=frozen,
    )
    invalid(config_map(data={"a": "1"}), "immutable", "immutable", old=frozen)


# --- Knative doc samples ------------------------------------------------------------------------


def _documents(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document in the .yaml files and ```yaml blocks of the .md files."""
    texts: list[tuple[str, str]] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            texts.append((str(path.relative_to(folder)), path.read_text()))
        elif path.suffix == ".md":
            blocks = re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.DOTALL)
            texts += [(f"{path.relative_to(folder)}#{i}", block) for i, block in enumerate(blocks)]
    documents = []
    for name, text in texts:
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            # Some README blocks elide parts with "..." lines; the .yaml files never do.
            assert "#" in name, f"{name} is not valid YAML"
            continue
        documents += [
            (name, document)
            for document in loaded
            if isinstance(document, dict) and "kind" in document and "apiVersion" in document
        ]
    return documents


def _served(document: dict[str, Any]) -> bool:
    try:
        type_for_kind(str(document["apiVersion"]), str(document["kind"]))
    except InvalidResource:
        return False
    return True


@pytest.mark.shared_conformance
def test_knative_doc_samples_admit_unchanged() -> None:
    folder = shared_fixture_dir("knative-docs")
    channels = folder / "docs/versioned/eventing/channels/channels.yaml"
    # The channels list names the implementations; InMemoryChannel and KafkaChannel are served.
    listed = {entry["name"] for entry in yaml.safe_load(channels.read_text())["channels"]}
    assert {"InMemoryChannel", "KafkaChannel"} <= listed & set(CHANNEL_KINDS)
    admitted_kinds: set[str] = set()
    for name, document in _documents(folder):
        if not _served(document):
            continue
        if "<" in str((document.get("metadata") or {}).get("name", "")):
            continue  # a template ("name: <pingsource-name>"): Kubernetes refuses it too
        admitted = admit(copy.deepcopy(document))
        admitted_kinds.add(document["kind"])
        content = document.get("spec") if "spec" in document else None
        if content is not None:
            # Nothing written by the user is lost: every spec key survives with its value as
            # written; defaults only add (a ref gains its namespace, K67; a template its
            # defaults).
            assert _keeps(admitted["spec"], content), name
    assert {"Broker", "Trigger", "Secret"} <= admitted_kinds


def _keeps(admitted: object, written: object) -> bool:
    """Whether ``admitted`` holds everything of ``written`` (maps may gain keys)."""
    if isinstance(written, dict):
        return isinstance(admitted, dict) and all(
            key in admitted and _keeps(admitted[key], value) for key, value in written.items()
        )
    if isinstance(written, list):
        return (
            isinstance(admitted, list)
            and len(admitted) == len(written)
            and all(_keeps(a, w) for a, w in zip(admitted, written, strict=True))
        )
    return admitted == written


def test_knative_style_samples_of_every_kind_admit() -> None:
    samples = yaml.safe_load_all(
        """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: default
  annotations:
    eventing.knative.dev/broker.class: MTChannelBasedBroker
spec:
  config:
    apiVersion: v1
    kind: ConfigMap
    name: config-br-default-channel
    namespace: knative-eventing
  delivery:
    deadLetterSink:
      ref:
        apiVersion: serving.knative.dev/v1
        kind: Service
        name: dlq
    retry: 5
    backoffPolicy: exponential
    backoffDelay: PT0.5S
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: my-service-trigger
  annotations:
    knative.dev/dependency: '{"kind":"PingSource","name":"p","apiVersion":"sources.knative.dev/v1"}'
    kafka.eventing.knative.dev/delivery.order: ordered
spec:
  broker: default
  filters:
    - any:
        - exact:
            type: com.github.push
        - prefix:
            source: https://github.com/
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: my-service
    uri: /my-custom-path
  delivery:
    timeout: PT10S
---
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata:
  name: my-channel
spec:
  channelTemplate:
    apiVersion: messaging.knative.dev/v1
    kind: InMemoryChannel
---
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata:
  name: imc
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata:
  name: my-subscription
spec:
  channel:
    apiVersion: messaging.knative.dev/v1
    kind: Channel
    name: my-channel
  delivery:
    deadLetterSink:
      uri: http://dls.example.com
  reply:
    ref:
      apiVersion: messaging.knative.dev/v1
      kind: InMemoryChannel
      name: imc
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: my-service
"""
    )
    kinds = [admit(sample)["kind"] for sample in samples]
    assert kinds == ["Broker", "Trigger", "Channel", "InMemoryChannel", "Subscription"]
    assert BROKER.kind in kinds
