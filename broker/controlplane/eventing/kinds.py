"""The eventing kinds cemesh serves itself: Broker, Trigger, Channel and its implementations,
Subscription, Secret, ConfigMap: their resource types and admission (:data:`EVENTING_KINDS`).

Their resource types are in :mod:`broker.controlplane.eventing.types`, their reconcilers in
:mod:`broker.controlplane.eventing.reconcile`; the feature that serves both is listed
in :mod:`broker.server.features`.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Mapping
from typing import Any

import orjson

from broker.controlplane.admission import (
    admit_destination,
    admit_reference,
    admit_spec_delivery,
    check_immutable,
    old_annotations,
    old_spec,
    require_mapping,
    require_string,
    type_name,
)
from broker.controlplane.catalog import Admission, Catalog, ResourceType, check_subdomain_name
from broker.controlplane.eventing.types import (
    BROKER,
    BROKER_CLASS_ANNOTATION,
    BROKER_LABEL,
    CHANNEL,
    CHANNEL_IMPLEMENTATIONS,
    CONFIG_MAP,
    DEFAULT_BROKER_CLASS,
    DELIVERY_ORDER_ANNOTATION,
    DEPENDENCY_ANNOTATION,
    IN_MEMORY_CHANNEL,
    KAFKA_CHANNEL,
    NATS_CHANNEL,
    PUBSUB_CHANNEL,
    REDIS_CHANNEL,
    SECRET,
    SUBSCRIPTION,
    TRIGGER,
)
from broker.core.durations import parse_duration
from broker.core.errors import InvalidResource
from broker.dataplane.dispatch.filters import (
    FILTER_PAYLOAD_ANNOTATION,
    FILTER_PAYLOAD_ENABLED,
    validate_trigger_filters,
)

_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _admit_broker(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    annotations = obj["metadata"]["annotations"]
    field = f"metadata.annotations[{BROKER_CLASS_ANNOTATION}]"
    old_class = old_annotations(old).get(BROKER_CLASS_ANNOTATION)
    if not annotations.get(BROKER_CLASS_ANNOTATION):  # K59: default on create, keep on update
        annotations[BROKER_CLASS_ANNOTATION] = old_class or DEFAULT_BROKER_CLASS
    spec = obj["spec"]
    if spec.get("config") is not None:
        require_mapping(spec["config"], "spec.config", "an object reference")
    admit_spec_delivery(spec, obj["metadata"]["namespace"])
    if old is not None:
        check_immutable(old, annotations[BROKER_CLASS_ANNOTATION], old_class, field)
        check_immutable(old, spec.get("config"), old_spec(old).get("config"), "spec.config")


def trigger_broker(spec: Mapping[str, Any]) -> str:
    """The Broker a (admitted) Trigger spec names, by ``broker`` or ``brokerRef.name``."""
    ref = spec.get("brokerRef")
    if isinstance(ref, Mapping) and ref.get("name"):
        return str(ref["name"])
    return str(spec.get("broker") or "")


def _admit_trigger(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    metadata = obj["metadata"]
    namespace = metadata["namespace"]
    spec = obj["spec"]
    broker, broker_ref = spec.get("broker"), spec.get("brokerRef")
    if broker_ref is not None:  # K55
        if broker not in (None, ""):
            raise InvalidResource(
                "spec.brokerRef", "spec.broker and spec.brokerRef are mutually exclusive; set one"
            )
        ref = require_mapping(broker_ref, "spec.brokerRef", "an object reference to a Broker")
        field = "spec.brokerRef.name"
        name = require_string(ref.get("name"), field)
        if ref.get("kind") not in (None, "", BROKER.kind):
            raise InvalidResource("spec.brokerRef.kind", f"must be Broker, got {ref['kind']!r}")
        if ref.get("apiVersion") not in (None, "", BROKER.api_version):
            raise InvalidResource(
                "spec.brokerRef.apiVersion",
                f"must be {BROKER.api_version}, got {ref['apiVersion']!r}",
            )
        if ref.get("namespace") not in (None, "", namespace):
            raise InvalidResource(
                "spec.brokerRef.namespace",
                f"must be empty or the Trigger's namespace {namespace!r}: "
                "Triggers of Brokers in other namespaces are not supported",
            )
    else:
        field = "spec.broker"
        name = require_string(broker, field, ": the name of a Broker in the Trigger's namespace")
    check_subdomain_name(name, field)
    if old is not None:  # K54
        check_immutable(old, name, trigger_broker(old_spec(old)), field)

    if spec.get("subscriber") is None:
        raise InvalidResource("spec.subscriber", "is required: where matching events are sent")
    spec["subscriber"] = admit_destination(
        spec["subscriber"], "spec.subscriber", namespace=namespace
    )
    if spec.get("filter") is None:  # K67
        spec["filter"] = {}
    validate_trigger_filters(
        spec,
        payload=metadata["annotations"].get(FILTER_PAYLOAD_ANNOTATION) == FILTER_PAYLOAD_ENABLED,
    )
    admit_spec_delivery(spec, namespace)
    metadata["labels"][BROKER_LABEL] = name  # K67

    annotations = metadata["annotations"]
    if DEPENDENCY_ANNOTATION in annotations:  # K69
        _check_dependency(annotations[DEPENDENCY_ANNOTATION], namespace)
    _check_delivery_order(annotations)


def _check_delivery_order(annotations: Mapping[str, str]) -> None:
    """The Kafka broker's ordered-delivery annotation, honoured on Triggers and Subscriptions."""
    order = annotations.get(DELIVERY_ORDER_ANNOTATION)
    if order is not None and order not in ("ordered", "unordered"):
        raise InvalidResource(
            f"metadata.annotations[{DELIVERY_ORDER_ANNOTATION}]",
            f"must be 'ordered' or 'unordered', got {order!r}",
        )


def _check_dependency(text: str, namespace: str) -> None:
    field = f"metadata.annotations[{DEPENDENCY_ANNOTATION}]"
    try:
        ref = orjson.loads(text)  # orjson: bounded depth, never a RecursionError
    except ValueError as exc:
        raise InvalidResource(
            field,
            'must be a JSON object reference such as {"kind": "PingSource", "name": "x", '
            f'"apiVersion": "sources.knative.dev/v1"}}: {exc}',
        ) from exc
    ref = require_mapping(ref, field, "a JSON object reference (kind, name, apiVersion)")
    for key in ("kind", "name", "apiVersion"):
        require_string(ref.get(key), f"{field}.{key}")
    if ref.get("namespace") not in (None, "", namespace):
        raise InvalidResource(
            f"{field}.namespace", f"must be empty or the Trigger's namespace {namespace!r}"
        )


def _admit_channel(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    template = spec.get("channelTemplate")
    old_template = old_spec(old).get("channelTemplate")
    if template is None and old_template is not None:
        # An update that leaves the template out keeps it (as the Broker class, K59): Channels
        # stored when admission still defaulted it re-apply from the same YAML.
        template = spec["channelTemplate"] = copy.deepcopy(old_template)
    # No template: the configured default channel kind backs it (CEMESH_DEFAULT_CHANNEL, K140);
    # that is decided at reconcile time, where the setting is known.
    if template is not None:
        template = require_mapping(template, "spec.channelTemplate")
        api_version = require_string(template.get("apiVersion"), "spec.channelTemplate.apiVersion")
        kind = require_string(template.get("kind"), "spec.channelTemplate.kind")
        if not any(
            t.kind == kind and api_version == t.api_version for t in CHANNEL_IMPLEMENTATIONS
        ):
            available = ", ".join(f"{t.kind} ({t.api_version})" for t in CHANNEL_IMPLEMENTATIONS)
            raise InvalidResource(
                "spec.channelTemplate.kind",
                f"{kind} ({api_version}) is not available in this version; "
                f"available channel kinds: {available}",
            )
    admit_spec_delivery(spec, obj["metadata"]["namespace"])
    if old is not None:  # K140: immutable
        check_immutable(old, spec.get("channelTemplate"), old_template, "spec.channelTemplate")


def _admit_backing_channel(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    admit_spec_delivery(obj["spec"], obj["metadata"]["namespace"])


def _admit_kafka_channel(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """KafkaChannel (messaging.knative.dev/v1beta1): numPartitions, replicationFactor,
    retentionDuration, as Knative's; the first two are immutable once the topic exists."""
    spec = obj["spec"]
    for key in ("numPartitions", "replicationFactor"):
        value = spec.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidResource(f"spec.{key}", f"must be an integer >= 1, got {value!r}")
        if old is not None:
            check_immutable(old, value, old_spec(old).get(key), f"spec.{key}")
    if spec.get("retentionDuration") is not None:
        parse_duration(spec["retentionDuration"], "spec.retentionDuration")
    admit_spec_delivery(spec, obj["metadata"]["namespace"])


def _admit_config_map(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    # ConfigMap keys follow the Secret key rule, not the label-key one: Knative's own
    # ConfigMaps carry an ``_example`` key, and ``a/b`` is not a valid key.
    for field in ("data", "binaryData"):
        if obj.get(field) is not None:
            obj[field] = _secret_items(obj[field], field)
    immutable = obj.get("immutable")
    if immutable is not None and not isinstance(immutable, bool):
        raise InvalidResource("immutable", f"must be true or false, got {immutable!r}")
    if old is not None and old.get("immutable") is True:
        for field in ("data", "binaryData"):
            check_immutable(old, obj.get(field) or {}, old.get(field) or {}, field)
        check_immutable(old, immutable, True, "immutable")


def _admit_subscription(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    namespace = obj["metadata"]["namespace"]
    _check_delivery_order(obj["metadata"]["annotations"])
    spec = obj["spec"]
    if spec.get("channel") is None:  # K153
        raise InvalidResource("spec.channel", "is required: a reference to a Channel")
    spec["channel"] = admit_reference(
        spec["channel"], "spec.channel", namespace=namespace, same_namespace=True
    )
    if old is not None:
        old_channel = old_spec(old).get("channel")
        if isinstance(old_channel, Mapping):
            old_channel = {"namespace": namespace, **old_channel}
        check_immutable(old, spec["channel"], old_channel, "spec.channel")
    if spec.get("subscriber") is None:  # K154
        raise InvalidResource("spec.subscriber", "is required: where the channel's events are sent")
    spec["subscriber"] = admit_destination(
        spec["subscriber"], "spec.subscriber", namespace=namespace
    )
    if spec.get("reply") is not None:
        spec["reply"] = admit_destination(spec["reply"], "spec.reply", namespace=namespace)
    admit_spec_delivery(spec, namespace)


def _admit_secret(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    secret_type = obj.setdefault("type", "Opaque")
    if secret_type is None:
        secret_type = obj["type"] = "Opaque"
    require_string(secret_type, "type")
    data: dict[str, str] = {}
    for key, value in _secret_items(obj.get("data"), "data").items():
        try:
            base64.b64decode(value, validate=True)
        except (ValueError, TypeError) as exc:
            raise InvalidResource(
                f"data.{key}",
                "is not valid base64; put base64-encoded values in data, plain text in stringData",
            ) from exc
        data[key] = value
    # Like Kubernetes: stringData is write-only, merged into data (winning over it) and dropped.
    for key, value in _secret_items(obj.pop("stringData", None), "stringData").items():
        data[key] = base64.b64encode(value.encode()).decode("ascii")
    obj["data"] = data
    immutable = obj.get("immutable")
    if immutable is not None and not isinstance(immutable, bool):
        raise InvalidResource("immutable", f"must be true or false, got {immutable!r}")
    if old is not None:
        check_immutable(old, obj["type"], old.get("type") or "Opaque", "type")
        if old.get("immutable") is True:
            check_immutable(old, obj["data"], old.get("data") or {}, "data")
            check_immutable(old, immutable, True, "immutable")


def _secret_items(value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    mapping = require_mapping(value, field, "a map of key to string value")
    items: dict[str, str] = {}
    for key, item in mapping.items():
        if not isinstance(key, str) or len(key) > 253 or not _SECRET_KEY.fullmatch(key):
            raise InvalidResource(
                field, f"invalid key {key!r}: use letters, digits, '-', '_' or '.' (<= 253)"
            )
        if not isinstance(item, str):
            raise InvalidResource(f"{field}.{key}", f"must be a string, got {type_name(item)}")
        items[key] = item
    return items


EVENTING_KINDS: dict[ResourceType, Admission] = {
    BROKER: Admission(_admit_broker),
    TRIGGER: Admission(_admit_trigger),
    CHANNEL: Admission(_admit_channel),
    IN_MEMORY_CHANNEL: Admission(_admit_backing_channel),
    SUBSCRIPTION: Admission(_admit_subscription),
    KAFKA_CHANNEL: Admission(_admit_kafka_channel),
    NATS_CHANNEL: Admission(_admit_backing_channel),
    PUBSUB_CHANNEL: Admission(_admit_backing_channel),
    REDIS_CHANNEL: Admission(_admit_backing_channel),
    SECRET: Admission(_admit_secret, content=("type", "data", "stringData", "immutable")),
    CONFIG_MAP: Admission(_admit_config_map, content=("data", "binaryData", "immutable")),
}

# The eventing kinds alone (admission only): what a flow's channelTemplate is checked against.
EVENTING_CATALOG = Catalog.of(EVENTING_KINDS.items())
