"""The eventing kinds' resource types, the channel implementations and their buses, annotations.

Only names and tables (no admission, no reconcile), so that settings and every other layer can
name a kind without importing what checks it (:mod:`broker.controlplane.eventing.kinds`).
"""

from __future__ import annotations

from broker.controlplane.catalog import ResourceType

EVENTING = "eventing.knative.dev"
MESSAGING = "messaging.knative.dev"

BROKER = ResourceType(EVENTING, ("v1",), "Broker", "brokers", ("broker",))
TRIGGER = ResourceType(EVENTING, ("v1",), "Trigger", "triggers", ("trigger",))
CHANNEL = ResourceType(MESSAGING, ("v1",), "Channel", "channels", ("channel", "ch"))
IN_MEMORY_CHANNEL = ResourceType(
    MESSAGING, ("v1",), "InMemoryChannel", "inmemorychannels", ("inmemorychannel", "imc")
)
SUBSCRIPTION = ResourceType(
    MESSAGING, ("v1",), "Subscription", "subscriptions", ("subscription", "sub")
)
SECRET = ResourceType("", ("v1",), "Secret", "secrets", ("secret",))
CONFIG_MAP = ResourceType("", ("v1",), "ConfigMap", "configmaps", ("configmap", "cm"))

CEMESH_MESSAGING = "messaging.cemesh.dev"
KAFKA_CHANNEL = ResourceType(
    MESSAGING, ("v1beta1",), "KafkaChannel", "kafkachannels", ("kafkachannel", "kc")
)
NATS_CHANNEL = ResourceType(
    MESSAGING,
    ("v1alpha1",),
    "NatsJetStreamChannel",
    "natsjetstreamchannels",
    ("natsjetstreamchannel", "natschannel"),
)
PUBSUB_CHANNEL = ResourceType(
    CEMESH_MESSAGING, ("v1alpha1",), "PubSubChannel", "pubsubchannels", ("pubsubchannel",)
)
REDIS_CHANNEL = ResourceType(
    CEMESH_MESSAGING,
    ("v1alpha1",),
    "RedisStreamChannel",
    "redisstreamchannels",
    ("redisstreamchannel", "redischannel"),
)

# Each channel implementation and the bus adapter that carries it.
CHANNEL_BUSES: dict[ResourceType, str] = {
    IN_MEMORY_CHANNEL: "memory",
    KAFKA_CHANNEL: "kafka",
    NATS_CHANNEL: "nats",
    PUBSUB_CHANNEL: "pubsub",
    REDIS_CHANNEL: "redis",
}


def channel_type(kind: str) -> ResourceType | None:
    """The channel implementation named ``kind`` (InMemoryChannel, KafkaChannel, ...), if any."""
    return next((t for t in CHANNEL_BUSES if t.kind == kind), None)


def bus_of_channel(kind: str) -> str:
    """The bus adapter carrying channel kind ``kind`` (``settings.default_channel``'s bus)."""
    backing = channel_type(kind)
    if backing is None:
        raise ValueError(f"{kind!r} is not a channel implementation")
    return CHANNEL_BUSES[backing]


BROKER_CLASS_ANNOTATION = "eventing.knative.dev/broker.class"
DEFAULT_BROKER_CLASS = "MTChannelBasedBroker"
BROKER_LABEL = "eventing.knative.dev/broker"
DEPENDENCY_ANNOTATION = "knative.dev/dependency"
DELIVERY_ORDER_ANNOTATION = "kafka.eventing.knative.dev/delivery.order"

# The channel implementations a Channel's spec.channelTemplate may name (K140).
DEFAULT_CHANNEL_TEMPLATE: dict[str, str] = {
    "apiVersion": IN_MEMORY_CHANNEL.api_version,
    "kind": IN_MEMORY_CHANNEL.kind,
}
CHANNEL_IMPLEMENTATIONS: tuple[ResourceType, ...] = tuple(CHANNEL_BUSES)
