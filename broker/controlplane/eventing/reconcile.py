"""Statuses and runtime specs of the addressable eventing kinds (Broker, the channels, Secret,
ConfigMap), and the phase table of all eventing kinds.

The subscribing kinds (Trigger, Subscription) are in
:mod:`broker.controlplane.eventing.subscribers`. Kinds are handled in phases
(:data:`EVENTING_RECONCILERS`) so each sees what it depends on: addressables first (Broker, the
channel implementations, Channel), then Subscriptions (they need their Channel and add themselves to
its subscriber list), then Triggers (they need their Broker). As destinations, Brokers and channels
resolve by name (:data:`EVENTING_ADDRESSES`).

With ingress OIDC on, Brokers and channels publish ``status.address.audience`` (Knative's
``<group>/<kind>/<namespace>/<name>``, lower case). Pure, like :mod:`broker.controlplane.reconcile`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from broker.controlplane.catalog import KindReconciler
from broker.controlplane.eventing.subscribers import (
    reconcile_subscription,
    reconcile_trigger,
    trigger_references,
)
from broker.controlplane.resources import (
    BROKER,
    BROKER_CLASS_ANNOTATION,
    CHANNEL,
    CHANNEL_BUSES,
    CONFIG_MAP,
    EVENTING,
    KAFKA_CHANNEL,
    MESSAGING,
    SECRET,
    SUBSCRIPTION,
    TRIGGER,
    ResourceType,
    channel_type,
)
from broker.controlplane.world import (
    AddressResolver,
    Conditions,
    Delivery,
    Obj,
    Unresolvable,
    World,
    addresses,
    audience_of,
    base_status,
    broker_url,
    channel_url,
    group_of,
    key_of,
    own_delivery,
    owner_reference,
    set_dead_letter_condition,
)
from broker.core import spec as runtime
from broker.core.errors import InvalidResource
from broker.core.spec import (
    BrokerSpec,
    ChannelSpec,
)

# The broker class of Knative's Kafka broker: a Broker of that class is backed by Kafka.
KAFKA_BROKER_CLASS = "Kafka"

# How a reference to a Broker or channel turns into a URL, by (API group, kind).
EVENTING_ADDRESSES: dict[tuple[str, str], AddressResolver] = {
    (EVENTING, BROKER.kind): lambda obj, world: broker_url(
        world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
    ),
    (MESSAGING, CHANNEL.kind): lambda obj, world: channel_url(
        world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
    ),
    **{
        (channel.group, channel.kind): lambda obj, world: channel_url(
            world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
        )
        for channel in CHANNEL_BUSES
    },
}


def reconcile_addressable(
    obj: Obj, world: World, url: str, https_url: str | None = None
) -> tuple[dict[str, Any], bool]:
    """What Brokers and Channels share: address, dead-letter sink, the delivery children inherit.

    Returns the status and whether the object is Ready.
    """
    conditions = Conditions(obj, world.now)
    delivery = own_delivery(obj, world, require_ready=False)
    set_dead_letter_condition(conditions, delivery)
    try:  # check the durations here, so a bad one shows on this object, not on every child
        world.policy(delivery.spec, "spec.delivery", delivery.dead_letter_uri)
    except InvalidResource as exc:
        conditions.set("DeliveryValid", "False", "InvalidDelivery", str(exc))
        delivery = Delivery(delivery.spec, failure=("InvalidDelivery", str(exc)))
    ready = delivery.failure is None
    if ready:
        conditions.set("Addressable", "True")
    else:
        conditions.set("Addressable", "Unknown", "NotReady", "no address until the spec resolves")
    world.parent_delivery[key_of(obj)] = delivery
    status = base_status(obj, conditions)
    if ready:
        listed = addresses(url, https_url, world.ca_certs)
        if world.ingress_oidc:  # Knative sets the audience only with authentication-oidc on
            metadata = obj["metadata"]
            audience = audience_of(
                group_of(obj["apiVersion"]), obj["kind"], metadata["namespace"], metadata["name"]
            )
            for entry in listed:
                entry["audience"] = audience
        status["address"] = dict(listed[-1])
        status["addresses"] = listed
    if delivery.dead_letter_uri is not None:
        status["deadLetterSinkUri"] = delivery.dead_letter_uri
    return status, ready


def _broker_channel(obj: Obj, world: World) -> ResourceType:
    """The channel kind that backs a Broker: from its class, ``spec.config``, or the default.

    ``spec.config`` may reference a channel kind directly (``kind: KafkaChannel``), or, as in
    Knative, a ConfigMap whose ``channel-template-spec`` (or ``channelTemplateSpec``) names one;
    the Knative Kafka broker class (``Kafka``) means Kafka. Raises Unresolvable.
    """
    annotations = obj["metadata"].get("annotations") or {}
    if annotations.get(BROKER_CLASS_ANNOTATION) == KAFKA_BROKER_CLASS:
        # A Kafka-class Broker's spec.config names Kafka client settings (Knative's
        # kafka-broker-config: bootstrap.servers, ...), not a channel template; cemesh takes
        # those from its own kafka_* settings, so the ConfigMap is neither read nor required.
        return KAFKA_CHANNEL
    config = (obj.get("spec") or {}).get("config")
    namespace = obj["metadata"]["namespace"]
    if isinstance(config, Mapping):
        kind = str(config.get("kind", ""))
        if kind == CONFIG_MAP.kind:
            name = str(config.get("name", ""))
            config_namespace = str(config.get("namespace") or namespace)
            config_map = world.find(("", CONFIG_MAP.kind, config_namespace, name))
            if config_map is None:
                raise Unresolvable(
                    "ConfigNotFound", f"ConfigMap {config_namespace}/{name} does not exist"
                )
            data = config_map.get("data") or {}
            text = data.get("channel-template-spec") or data.get("channelTemplateSpec")
            if not text:
                raise Unresolvable(
                    "ConfigInvalid",
                    f"ConfigMap {config_namespace}/{name} has no channel-template-spec key",
                )
            try:
                template = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise Unresolvable(
                    "ConfigInvalid", f"channel-template-spec is not YAML: {exc}"
                ) from None
            kind = str((template or {}).get("kind", "")) if isinstance(template, dict) else ""
        backing = channel_type(kind)
        if backing is None:
            available = ", ".join(t.kind for t in CHANNEL_BUSES)
            raise Unresolvable(
                "ConfigInvalid",
                f"spec.config names {kind or 'no kind'}; channel kinds: {available}",
            )
        return backing
    return world.default_channel


def _without_readiness(
    obj: Obj, world: World, status: dict[str, Any], type_: str, reason: str, message: str
) -> dict[str, Any]:
    """``status`` with condition ``type_`` False (so Ready False) and no address."""
    conditions = Conditions(obj, world.now)
    for condition in status.get("conditions", []):
        if condition["type"] not in ("Ready", "Addressable"):
            conditions.set(
                condition["type"],
                condition["status"],
                condition.get("reason", ""),
                condition.get("message", ""),
            )
    conditions.set("Addressable", "Unknown", "NotReady", "no address until it is Ready")
    conditions.set(type_, "False", reason, message)
    kept = {k: v for k, v in status.items() if k not in ("conditions", "address", "addresses")}
    return {**kept, **base_status(obj, conditions)}


def _bus_unavailable(world: World, bus: str) -> str | None:
    """Why ``bus`` cannot be used right now (it failed to open), or None."""
    return world.unavailable_buses.get(bus)


def _reconcile_broker(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    url = broker_url(world.base_url, namespace, name)  # K26, K36
    https = world.https_base_url
    https_url = None if https is None else broker_url(https, namespace, name)
    status, ready = reconcile_addressable(obj, world, url, https_url)
    try:
        backing = _broker_channel(obj, world)
    except Unresolvable as exc:
        status = _without_readiness(obj, world, status, "ChannelReady", exc.reason, exc.message)
        ready = False
    else:
        # Knative's MT broker reports its backing channel in status.annotations.
        status["annotations"] = {
            "knative.dev/channelAPIVersion": backing.api_version,
            "knative.dev/channelKind": backing.kind,
            "knative.dev/channelName": f"{name}-kne-trigger",
        }
        why = _bus_unavailable(world, CHANNEL_BUSES[backing])
        if why is not None:
            status = _without_readiness(obj, world, status, "ChannelReady", "BusUnavailable", why)
            ready = False
    world.statuses[metadata["uid"]] = status
    if ready:
        world.brokers[(namespace, name)] = BrokerSpec(
            namespace=namespace,
            name=name,
            uid=metadata["uid"],
            topic=runtime.broker_topic(namespace, name),
            bus=CHANNEL_BUSES[backing],
        )


def _reconcile_backing_channel(obj: Obj, world: World) -> None:
    """A channel implementation (InMemoryChannel, KafkaChannel, ...): an address on its bus."""
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    url = channel_url(world.base_url, namespace, name)
    https = world.https_base_url
    https_url = None if https is None else channel_url(https, namespace, name)
    status, ready = reconcile_addressable(obj, world, url, https_url)
    backing = channel_type(obj["kind"])
    why = None if backing is None else _bus_unavailable(world, CHANNEL_BUSES[backing])
    if why is not None:
        status = _without_readiness(obj, world, status, "BusReady", "BusUnavailable", why)
        ready = False
    status["subscribers"] = []  # filled by the Subscriptions (K141)
    world.statuses[metadata["uid"]] = status
    if ready and backing is not None:
        world.channels[(namespace, name)] = ChannelSpec(
            namespace=namespace,
            name=name,
            uid=metadata["uid"],
            kind=obj["kind"],
            topic=runtime.channel_topic(namespace, name),
            bus=CHANNEL_BUSES[backing],
        )


def _reconcile_channel(obj: Obj, world: World) -> None:
    """A generic Channel owns a backing channel of its template's kind, with its own name (as
    Knative names it); the Channel's address is the backing channel's (K136, K140)."""
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    spec = obj.get("spec") or {}
    template = spec.get("channelTemplate") or {}
    backing = channel_type(str(template.get("kind", ""))) or world.default_channel
    child_spec = dict(template.get("spec") or {})
    if spec.get("delivery") is not None:
        child_spec["delivery"] = spec["delivery"]
    world.children.append(
        {
            "apiVersion": backing.api_version,
            "kind": backing.kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"messaging.knative.dev/channel": name},
                "ownerReferences": [owner_reference(obj)],
            },
            "spec": child_spec,
        }
    )
    conditions = Conditions(obj, world.now)
    child = world.find((backing.group, backing.kind, namespace, name))
    child_ready = child is not None and world.is_ready(child)
    status: dict[str, Any]
    if child is None:
        conditions.set(
            "BackingChannelReady", "Unknown", "Creating", f"creating {backing.kind} {name}"
        )
    elif not child_ready:
        conditions.set(
            "BackingChannelReady", "False", "BackingChannelNotReady", f"{backing.kind} not Ready"
        )
    else:
        conditions.set("BackingChannelReady", "True")
    status = base_status(obj, conditions)
    status["channel"] = {
        "apiVersion": backing.api_version,
        "kind": backing.kind,
        "name": name,
        "namespace": namespace,
    }
    status["subscribers"] = []  # filled by the Subscriptions (K141)
    if child is not None and child_ready:
        child_status = world.statuses[child["metadata"]["uid"]]
        for key in ("address", "addresses", "deadLetterSinkUri"):
            if key in child_status:
                status[key] = child_status[key]
        world.parent_delivery[key_of(obj)] = world.parent_delivery[key_of(child)]
    world.statuses[metadata["uid"]] = status


def _reconcile_secret(obj: Obj, world: World) -> None:
    world.statuses[obj["metadata"]["uid"]] = {}


# The eventing kinds' reconcilers, in phase order: every kind sees the kinds before it. Features'
# kinds come after these (broker.server.features); as destinations they resolve through the
# catalog's address resolvers, which need no status of theirs, so any kind may reference them.
EVENTING_RECONCILERS: tuple[KindReconciler, ...] = (
    KindReconciler(SECRET.group, SECRET.kind, _reconcile_secret),
    KindReconciler(CONFIG_MAP.group, CONFIG_MAP.kind, _reconcile_secret),
    KindReconciler(EVENTING, BROKER.kind, _reconcile_broker),
    *(
        KindReconciler(channel.group, channel.kind, _reconcile_backing_channel)
        for channel in CHANNEL_BUSES
    ),
    # After the backing channels it owns (and keeps in the store: owns_children).
    KindReconciler(MESSAGING, CHANNEL.kind, _reconcile_channel, owns_children=True),
    KindReconciler(MESSAGING, SUBSCRIPTION.kind, reconcile_subscription),
    KindReconciler(EVENTING, TRIGGER.kind, reconcile_trigger, references=trigger_references),
)
