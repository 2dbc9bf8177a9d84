"""Statuses and runtime specs of the kinds that subscribe: Trigger and Subscription.

A Trigger subscribes its subscriber to a Broker (through a filter), a Subscription to a channel
(with a reply). Both resolve their destinations through the one rule (:meth:`World.resolve`),
take the delivery in force (their own, else their parent's: K66, K124), and enter the snapshot
only once everything they need is Ready. They run after the Brokers and channels
(:data:`broker.controlplane.eventing.reconcile.EVENTING_RECONCILERS`), whose statuses they read.
Pure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import orjson

from broker.auth.identity import delivery_subject
from broker.controlplane.resources import (
    BROKER,
    CHANNEL,
    CHANNEL_BUSES,
    DELIVERY_ORDER_ANNOTATION,
    DEPENDENCY_ANNOTATION,
    EVENTING,
    MESSAGING,
    SUBSCRIPTION,
    TRIGGER,
    trigger_broker,
)
from broker.controlplane.world import (
    Address,
    Conditions,
    Delivery,
    Obj,
    ObjKey,
    Unresolvable,
    World,
    base_status,
    describe,
    destination_references,
    effective_delivery,
    group_of,
    ready_condition,
    set_dead_letter_condition,
)
from broker.core import spec as runtime
from broker.core.errors import InvalidResource
from broker.core.spec import (
    SubscriptionSpec,
    TriggerSpec,
)
from broker.dataplane.dispatch.filters import (
    FILTER_PAYLOAD_ANNOTATION,
    FILTER_PAYLOAD_ENABLED,
    compile_trigger_filter,
)

# The broker class of Knative's Kafka broker: a Broker of that class is backed by Kafka.

_CHANNEL_KINDS = frozenset(
    {(MESSAGING, CHANNEL.kind), *((channel.group, channel.kind) for channel in CHANNEL_BUSES)}
)


def _dependency_key(obj: Obj, text: str) -> ObjKey:
    """The object a ``knative.dev/dependency`` annotation names; ValueError, KeyError or
    TypeError when it does not parse."""
    ref = orjson.loads(text)
    return (
        group_of(str(ref["apiVersion"])),
        str(ref["kind"]),
        str(ref.get("namespace") or obj["metadata"]["namespace"]),
        str(ref["name"]),
    )


def _dependency(obj: Obj, world: World, conditions: Conditions) -> None:
    """``knative.dev/dependency`` (K69): the Trigger waits for that object to be Ready."""
    text = (obj["metadata"].get("annotations") or {}).get(DEPENDENCY_ANNOTATION)
    if not text:
        conditions.set("DependencyReady", "True")
        return
    try:
        key = _dependency_key(obj, text)
    except (ValueError, KeyError, TypeError):
        conditions.set(
            "DependencyReady", "False", "DependencyInvalid", f"{DEPENDENCY_ANNOTATION}: {text!r}"
        )
        return
    what = describe(key[1], key[2], key[3])
    target = world.find(key)
    if target is None:
        conditions.set("DependencyReady", "False", "DependencyDoesNotExist", f"{what} not found")
        return
    status = world.statuses.get(target["metadata"]["uid"]) or target.get("status") or {}
    ready = ready_condition(status)
    if ready is None:
        conditions.set("DependencyReady", "Unknown", "DependencyUnknown", f"{what} has no status")
    elif ready.get("status") == "True":
        conditions.set("DependencyReady", "True")
    else:
        conditions.set(
            "DependencyReady",
            "False" if ready.get("status") == "False" else "Unknown",
            str(ready.get("reason") or "DependencyNotReady"),
            f"{what} is not Ready: {ready.get('message') or 'no message'}",
        )


_TRIGGER_PREREQUISITES = (
    "BrokerReady",
    "SubscriberResolved",
    "DeadLetterSinkResolved",
    "DependencyReady",
)


def _broker_ready(conditions: Conditions, world: World, namespace: str, broker: str) -> Obj | None:
    """BrokerReady (K56): the Trigger may come first; it waits, not Ready, until the Broker is.
    The Broker object, when it exists."""
    broker_obj = world.find((EVENTING, BROKER.kind, namespace, broker))
    if broker_obj is None:
        conditions.set(
            "BrokerReady",
            "False",
            "BrokerDoesNotExist",
            f'Broker "{broker}" does not exist in namespace "{namespace}"',
        )
    elif (namespace, broker) not in world.brokers:
        ready = ready_condition(world.statuses.get(broker_obj["metadata"]["uid"]) or {}) or {}
        conditions.set(
            "BrokerReady",
            "False",
            str(ready.get("reason") or "BrokerNotReady"),
            f'Broker "{broker}" is not Ready: {ready.get("message") or "no message"}',
        )
    else:
        conditions.set("BrokerReady", "True")
    return broker_obj


def _trigger_spec(
    obj: Obj,
    world: World,
    conditions: Conditions,
    subscriber: Address,
    delivery: Delivery,
    broker: str,
) -> TriggerSpec | None:
    """SubscriptionReady: the Trigger's runtime spec once every prerequisite holds (K61).
    ``broker``: the Broker it names (:func:`~broker.controlplane.resources.trigger_broker`)."""
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    waiting = conditions.not_true(_TRIGGER_PREREQUISITES)
    if waiting:
        message = f"waiting for {', '.join(waiting)}"
        conditions.set("SubscriptionReady", "Unknown", "NotSubscribed", message)
        return None
    annotations = metadata.get("annotations") or {}
    try:
        predicate, filter_text = compile_trigger_filter(
            spec,
            payload=annotations.get(FILTER_PAYLOAD_ANNOTATION) == FILTER_PAYLOAD_ENABLED,
        )
        policy = world.policy(delivery.spec, "spec.delivery", delivery.dead_letter_uri, delivery)
    except InvalidResource as exc:  # stored before a rule tightened: report, do not crash
        conditions.set("SubscriptionReady", "False", "InvalidSpec", str(exc))
        return None
    conditions.set("SubscriptionReady", "True")
    return TriggerSpec(
        namespace=namespace,
        name=name,
        uid=uid,
        broker=broker,
        topic=runtime.broker_topic(namespace, broker),
        group=runtime.trigger_group(uid),
        subscriber_uri=subscriber.url,
        delivery=policy,
        filter=predicate,
        filter_source=filter_text,
        ordered=annotations.get(DELIVERY_ORDER_ANNOTATION) == "ordered",
        subscriber_audience=subscriber.audience,
        subscriber_ca_certs=subscriber.ca_certs,
        identity=delivery_subject(EVENTING, TRIGGER.kind, namespace, name),
    )


def reconcile_trigger(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, uid = metadata["namespace"], metadata["uid"]
    spec = obj.get("spec") or {}
    conditions = Conditions(obj, world.now)
    status_fields: dict[str, Any] = {}

    broker = trigger_broker(spec)
    broker_obj = _broker_ready(conditions, world, namespace, broker)

    # SubscriberResolved (K57): subscriberUri is "" while it does not resolve.
    subscriber = Address("")
    try:
        subscriber = world.resolve_address(
            spec.get("subscriber") or {}, namespace, require_ready=True
        )
    except Unresolvable as exc:
        conditions.set("SubscriberResolved", "False", exc.reason, f"subscriber: {exc.message}")
    else:
        conditions.set("SubscriberResolved", "True")
    status_fields["subscriberUri"] = subscriber.url

    # DeadLetterSinkResolved (K58) for the delivery in force (K66).
    broker_key = (EVENTING, BROKER.kind, namespace, broker)
    delivery = effective_delivery(obj, world, broker_key if broker_obj is not None else None)
    set_dead_letter_condition(conditions, delivery)
    if delivery.dead_letter_uri is not None:
        status_fields["deadLetterSinkUri"] = delivery.dead_letter_uri

    _dependency(obj, world, conditions)

    trigger_spec = _trigger_spec(obj, world, conditions, subscriber, delivery, broker)
    world.statuses[uid] = {**base_status(obj, conditions), **status_fields}
    if trigger_spec is not None:
        world.triggers[uid] = trigger_spec


def trigger_references(obj: Obj) -> tuple[ObjKey, ...]:
    """The keys of every object :func:`reconcile_trigger` reads: its Broker, its subscriber's
    and dead-letter sink's refs, its ``knative.dev/dependency`` (incremental reconcile)."""
    metadata, spec = obj["metadata"], obj.get("spec") or {}
    namespace = metadata["namespace"]
    delivery = spec.get("delivery")
    keys = [
        (EVENTING, BROKER.kind, namespace, trigger_broker(spec)),
        *destination_references(spec.get("subscriber"), namespace),
        *destination_references(
            delivery.get("deadLetterSink") if isinstance(delivery, Mapping) else None, namespace
        ),
    ]
    text = (metadata.get("annotations") or {}).get(DEPENDENCY_ANNOTATION)
    if text:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # invalid: it reads nothing
            keys.append(_dependency_key(obj, text))
    return tuple(keys)


def _channel_condition(conditions: Conditions, world: World, key: ObjKey) -> Obj | None:
    """ChannelReady (K156): the Subscription may come first and waits for its Channel."""
    what = describe(key[1], key[2], key[3])
    if key[:2] not in _CHANNEL_KINDS:
        kinds = ", ".join(sorted(kind for _, kind in _CHANNEL_KINDS))
        conditions.set(
            "ChannelReady",
            "False",
            "ChannelNotSupported",
            f"{what} is not a channel kind served here; channel kinds: {kinds}",
        )
        return None
    channel = world.find(key)
    if channel is None:
        conditions.set("ChannelReady", "False", "ChannelNotFound", f"{what} does not exist")
    elif not world.is_ready(channel):
        conditions.set("ChannelReady", "False", "ChannelNotReady", f"{what} is not Ready")
    else:
        conditions.set("ChannelReady", "True")
    return channel


def _subscription_references(
    obj: Obj, world: World, conditions: Conditions, parent: ObjKey | None
) -> tuple[Address, Address | None, Delivery, dict[str, str]]:
    """ReferencesResolved (K155): the subscriber, the reply (None when not set), the delivery in
    force (``parent``: the Channel it inherits from) and ``physicalSubscription``, where each URI
    is "" when it does not resolve."""
    namespace = obj["metadata"]["namespace"]
    spec = obj.get("spec") or {}
    failures: list[tuple[str, str]] = []

    def resolve(destination: Mapping[str, Any], what: str) -> Address:
        try:
            return world.resolve_address(destination, namespace, require_ready=True)
        except Unresolvable as exc:
            failures.append((exc.reason, f"{what}: {exc.message}"))
            return Address("")

    subscriber = resolve(spec.get("subscriber") or {}, "subscriber")
    physical: dict[str, str] = {"subscriberUri": subscriber.url}
    reply: Address | None = None
    if spec.get("reply") is not None:
        reply = resolve(spec["reply"], "reply")
        physical["replyUri"] = reply.url
    delivery = effective_delivery(obj, world, parent)
    if delivery.failure is not None:
        failures.append(delivery.failure)
    if delivery.configured:
        physical["deadLetterSinkUri"] = delivery.dead_letter_uri or ""
    if failures:
        conditions.set("ReferencesResolved", "False", *failures[0])
    else:
        conditions.set("ReferencesResolved", "True")
    return subscriber, reply, delivery, physical


def reconcile_subscription(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    conditions = Conditions(obj, world.now)

    ref = spec.get("channel") or {}
    channel_name = str(ref.get("name", ""))
    channel_key = (
        group_of(str(ref.get("apiVersion", ""))),
        str(ref.get("kind", "")),
        namespace,
        channel_name,
    )
    channel = _channel_condition(conditions, world, channel_key)

    subscriber, reply, delivery, physical = _subscription_references(
        obj, world, conditions, channel_key if channel is not None else None
    )
    failed = conditions.get("ReferencesResolved")["status"] != "True"
    reply_uri = None if reply is None else reply.url
    reply = reply or Address("")

    subscription_spec: SubscriptionSpec | None = None
    if channel is None or failed or not world.is_ready(channel):
        conditions.set(
            "AddedToChannel", "Unknown", "NotAdded", "waiting for ChannelReady, ReferencesResolved"
        )
    else:
        try:
            policy = world.policy(
                delivery.spec, "spec.delivery", delivery.dead_letter_uri, delivery
            )
        except InvalidResource as exc:  # stored before a rule tightened: report, do not crash
            conditions.set("AddedToChannel", "False", "InvalidSpec", str(exc))
        else:
            subscription_spec = SubscriptionSpec(
                namespace=namespace,
                name=name,
                uid=uid,
                channel=channel_name,
                topic=runtime.channel_topic(namespace, channel_name),
                group=runtime.subscription_group(uid),
                subscriber_uri=physical["subscriberUri"],
                reply_uri=reply_uri,
                delivery=policy,
                ordered=(metadata.get("annotations") or {}).get(DELIVERY_ORDER_ANNOTATION)
                == "ordered",
                subscriber_audience=subscriber.audience,
                subscriber_ca_certs=subscriber.ca_certs,
                reply_audience=reply.audience,
                reply_ca_certs=reply.ca_certs,
                identity=delivery_subject(MESSAGING, SUBSCRIPTION.kind, namespace, name),
            )
            conditions.set("AddedToChannel", "True")
    world.statuses[uid] = {**base_status(obj, conditions), "physicalSubscription": physical}
    if subscription_spec is not None and channel is not None:
        world.subscriptions[uid] = subscription_spec
        generation = int(metadata.get("generation") or 0)
        world.statuses[channel["metadata"]["uid"]]["subscribers"].append(  # K141
            {"uid": uid, "observedGeneration": generation, "ready": "True"}
        )
