"""Which bus topics go when Brokers and Channels are deleted: the one rule, pure.

A Broker's topic is cemesh's own: named by cemesh after the Broker's namespace and name
(:func:`broker.core.spec.broker_topic`), created by the bus on first use, and used by nothing but
that Broker and its Triggers. A Broker's ``spec.config`` (a channel kind, or a ConfigMap whose
``channel-template-spec`` names one) and the Kafka broker class pick the *bus* the topic lives
on, never the topic: no configuration can point a cemesh Broker at a pre-existing topic. So the
deletion of a Broker deletes its topic, on the bus the data plane served it on, as Knative's
Kafka broker deletes the topic it created. Knative's Kafka broker can also be pointed at an
externally managed topic (annotation :data:`EXTERNAL_TOPIC_ANNOTATION`), which it never deletes;
cemesh does not honour that annotation (the Broker keeps its own topic), so such a topic is
never cemesh's to delete and nothing here ever names it.

A channel implementation (InMemoryChannel, KafkaChannel, ...) owns the topic
:func:`broker.core.spec.channel_topic` of its name. A generic ``Channel`` owns a channel
implementation of the same name, which is garbage-collected with it and takes the topic then: the
generic Channel itself names none.

A topic is kept while an object still present owns it: a Broker deleted and applied again under
the same name (a new uid) has the same topic, which must not be deleted under it.

The bus a topic lives on: a channel implementation's is its kind's; a Broker's is what its
config resolved to when it was last reconciled, which reconcile records in the Broker's status
(``knative.dev/channelKind``, as Knative's channel-based broker does), so it is known even to a
process that never served the Broker (one started after it was deleted). None when the status
does not say: the caller uses the bus it served the topic on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.controlplane.eventing.types import BROKER, CHANNEL_BUSES, channel_type
from broker.core.spec import broker_topic, channel_topic

# Knative Kafka broker's "bring your own topic" annotation: cemesh never deletes (nor uses) it.
EXTERNAL_TOPIC_ANNOTATION = "kafka.eventing.knative.dev/external.topic"

_CHANNEL_KINDS = frozenset((t.group, t.kind) for t in CHANNEL_BUSES)
CHANNEL_KIND_ANNOTATION = "knative.dev/channelKind"  # in a Broker's status: its channel kind


@dataclass(frozen=True, slots=True)
class OwnedTopic:
    """A topic an object owns, and the bus it lives on when the object says (else None)."""

    name: str
    bus: str | None


def _group(obj: Mapping[str, Any]) -> str:
    return str(obj.get("apiVersion") or "").rpartition("/")[0]


def _bus_of_kind(kind: object) -> str | None:
    backing = channel_type(kind) if isinstance(kind, str) else None
    return None if backing is None else CHANNEL_BUSES[backing]


def owned_topic(obj: Mapping[str, Any]) -> OwnedTopic | None:
    """The topic ``obj`` owns: a Broker's, a channel implementation's; else None."""
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "default")
    name = str(metadata.get("name") or "")
    kind = (_group(obj), obj.get("kind"))
    if not name:
        return None
    if kind == (BROKER.group, BROKER.kind):
        status = obj.get("status")
        annotations = status.get("annotations") if isinstance(status, Mapping) else None
        recorded = (
            annotations.get(CHANNEL_KIND_ANNOTATION) if isinstance(annotations, Mapping) else None
        )
        return OwnedTopic(broker_topic(namespace, name), _bus_of_kind(recorded))
    if kind in _CHANNEL_KINDS:
        return OwnedTopic(channel_topic(namespace, name), _bus_of_kind(obj.get("kind")))
    return None


def topics_to_delete(
    gone: Iterable[Mapping[str, Any]], present: Iterable[Mapping[str, Any]]
) -> list[OwnedTopic]:
    """The topics that the deletion of ``gone`` frees, given the objects still ``present``.

    Each topic once (as its first owner in ``gone`` says), in the order of ``gone``; none that
    an object of ``present`` owns.
    """
    kept = {topic.name for obj in present if (topic := owned_topic(obj)) is not None}
    topics: dict[str, OwnedTopic] = {}
    for obj in gone:
        topic = owned_topic(obj)
        if topic is not None and topic.name not in kept:
            topics.setdefault(topic.name, topic)
    return list(topics.values())
