"""Which topics the deletion of Brokers and Channels frees (broker/controlplane/eventing/topics.py).

The rule: a Broker owns its topic (cemesh names and creates it, whatever ``spec.config`` or class
picks as the bus); a channel implementation owns its channel topic; a generic Channel, a Trigger,
anything else owns none; a topic still owned by an object present (a Broker applied again under
the same name) is kept; Knative's external topic annotation names nothing cemesh deletes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from broker.controlplane.eventing.topics import (
    EXTERNAL_TOPIC_ANNOTATION,
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
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}


def expected_topic(obj: dict[str, Any]) -> str | None:
    owns = next(o for a, k, o in KINDS if (a, k) == (obj["apiVersion"], obj["kind"]))
    metadata = obj["metadata"]
    if owns == "broker":
        return broker_topic(metadata["namespace"], metadata["name"])
    if owns == "channel":
        return channel_topic(metadata["namespace"], metadata["name"])
    return None


@given(objects())
def test_a_broker_owns_its_own_topic_whatever_its_config_and_class(obj: dict[str, Any]) -> None:
    """spec.config and the class pick the bus, never the topic: the owned topic is cemesh's."""
    assert owned_topic(obj) == expected_topic(obj)


@given(st.lists(objects(), max_size=8), st.lists(objects(), max_size=8))
def test_deletion_frees_the_owned_topics_no_object_present_still_owns(
    gone: list[dict[str, Any]], present: list[dict[str, Any]]
) -> None:
    """Each freed topic once, in order; never one an object present owns; every owned topic of
    ``gone`` that nothing present owns is freed."""
    freed = topics_to_delete(gone, present)
    kept = {expected_topic(obj) for obj in present} - {None}
    owned = [t for obj in gone if (t := expected_topic(obj)) is not None]
    assert freed == list(dict.fromkeys(t for t in owned if t not in kept))


@given(st.lists(objects(), max_size=8))
def test_an_external_topic_named_by_annotation_is_never_deleted(gone: list[dict[str, Any]]) -> None:
    """Knative's "bring your own topic" annotation names a topic cemesh never deletes (cemesh
    does not use it either): only cemesh-named topics are freed."""
    freed = topics_to_delete(gone, [])
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
    assert topics_to_delete([old], []) == [broker_topic("default", "b")]
