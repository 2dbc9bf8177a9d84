"""Which topics the deletion of Brokers and Channels frees (broker/controlplane/eventing/topics.py).

The rule: a Broker owns its topic (cemesh names and creates it, whatever ``spec.config`` or class
picks as the bus); a channel implementation owns its channel topic; a generic Channel, a Trigger,
anything else owns none; a topic still owned by an object present (a Broker applied again under
the same name) is kept; Knative's external topic annotation names nothing cemesh deletes. The
bus: a channel implementation's kind's; a Broker's as its status records its channel kind (what
its config resolved to), else unknown (None).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.controlplane.eventing.topics import (
    CHANNEL_KIND_ANNOTATION,
    EXTERNAL_TOPIC_ANNOTATION,
    OwnedTopic,
    owned_topic,
    topics_to_delete,
)
from broker.core.spec import broker_topic, channel_topic

# (apiVersion, kind, owns a broker topic | owns a channel topic | owns none)
KINDS = [
    ("eventing.knative.dev/v1", "Broker", "broker"),
    ("messaging.knative.dev/v1", "InMemoryChannel", "channel"),
    ("messaging.knative.dev/v1beta1", "KafkaChannel", "channel"),
    ("messaging.knative.dev/v1alpha1", "NatsJetStreamChannel", "channel"),
    ("messaging.cemesh.dev/v1alpha1", "PubSubChannel", "channel"),
    ("messaging.cemesh.dev/v1alpha1", "RedisStreamChannel", "channel"),
    ("messaging.knative.dev/v1", "Channel", None),  # its channel implementation owns the topic
    ("eventing.knative.dev/v1", "Trigger", None),
    ("messaging.knative.dev/v1", "Subscription", None),
    ("flows.knative.dev/v1", "Sequence", None),
    ("example.com/v1", "Broker", None),  # another group's Broker is not Knative's
]

BUS_OF_KIND = {
    "InMemoryChannel": "memory",
    "KafkaChannel": "kafka",
    "NatsJetStreamChannel": "nats",
    "PubSubChannel": "pubsub",
    "RedisStreamChannel": "redis",
}
names = st.text(alphabet="abc-1", min_size=1, max_size=4)
namespaces = st.sampled_from(["default", "team-a"])


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    api_version, kind, _ = draw(st.sampled_from(KINDS))
    metadata: dict[str, Any] = {
        "name": draw(names),
        "namespace": draw(namespaces),
        "uid": draw(st.uuids()).hex,
    }
    annotations = draw(
        st.dictionaries(
            st.sampled_from([EXTERNAL_TOPIC_ANNOTATION, "eventing.knative.dev/broker.class"]),
            st.sampled_from(["orders", "Kafka", "cemesh", "cemesh.broker.default.a"]),
        )
    )
    if annotations:
        metadata["annotations"] = annotations
    spec = draw(
        st.sampled_from(
            [
                {},
                {"config": {"apiVersion": "messaging.knative.dev/v1beta1", "kind": "KafkaChannel"}},
                {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka-channel"}},
            ]
        )
    )
    obj = {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}
    recorded = draw(st.sampled_from([None, "NoSuchChannel", *BUS_OF_KIND]))
    if recorded is not None:
        obj["status"] = {"annotations": {CHANNEL_KIND_ANNOTATION: recorded}}
    return obj


def expected(obj: dict[str, Any]) -> OwnedTopic | None:
    owns = next(o for a, k, o in KINDS if (a, k) == (obj["apiVersion"], obj["kind"]))
    metadata = obj["metadata"]
    if owns == "broker":
        recorded = obj.get("status", {}).get("annotations", {}).get(CHANNEL_KIND_ANNOTATION)
        topic = broker_topic(metadata["namespace"], metadata["name"])
        return OwnedTopic(topic, BUS_OF_KIND.get(recorded or ""))
    if owns == "channel":
        topic = channel_topic(metadata["namespace"], metadata["name"])
        return OwnedTopic(topic, BUS_OF_KIND[obj["kind"]])
    return None


def expected_topic(obj: dict[str, Any]) -> str | None:
    owned = expected(obj)
    return None if owned is None else owned.name


@given(objects())
def test_a_broker_owns_its_own_topic_whatever_its_config_and_class(obj: dict[str, Any]) -> None:
    """spec.config and the class pick the bus, never the topic: the owned topic is cemesh's, on
    the bus the Broker's status records (a channel implementation: its kind's)."""
    assert owned_topic(obj) == expected(obj)


@given(st.lists(objects(), max_size=8), st.lists(objects(), max_size=8))
def test_deletion_frees_the_owned_topics_no_object_present_still_owns(
    gone: list[dict[str, Any]], present: list[dict[str, Any]]
) -> None:
    """Each freed topic once, in order; never one an object present owns; every owned topic of
    ``gone`` that nothing present owns is freed."""
    freed = topics_to_delete(gone, present)
    kept = {expected_topic(obj) for obj in present} - {None}
    owned = [t for obj in gone if (t := expected(obj)) is not None]
    first: dict[str, OwnedTopic] = {}
    for topic in owned:
        if topic.name not in kept:
            first.setdefault(topic.name, topic)
    assert freed == list(first.values())


@given(st.lists(objects(), max_size=8))
def test_an_external_topic_named_by_annotation_is_never_deleted(gone: list[dict[str, Any]]) -> None:
    """Knative's "bring your own topic" annotation names a topic cemesh never deletes (cemesh
    does not use it either): only cemesh-named topics are freed."""
    freed = [topic.name for topic in topics_to_delete(gone, [])]
    assert all(t.startswith(("cemesh.broker.", "cemesh.channel.")) for t in freed)
    for obj in gone:
        external = (obj["metadata"].get("annotations") or {}).get(EXTERNAL_TOPIC_ANNOTATION)
        if external is not None and not external.startswith("cemesh."):
            assert external not in freed


def test_a_broker_applied_again_under_its_name_keeps_the_topic() -> None:
    """The old Broker (one uid) is deleted, a new one (another uid) of the same name is present:
    they share the topic, so nothing is deleted."""
    old = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
           "metadata": {"name": "b", "namespace": "default", "uid": "1"}}  # fmt: skip
    new = {**old, "metadata": {**old["metadata"], "uid": "2"}}
    assert topics_to_delete([old], [new]) == []
    assert topics_to_delete([old], []) == [OwnedTopic(broker_topic("default", "b"), None)]
