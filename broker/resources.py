"""Knative-shaped resources: the kinds cemesh serves, and their admission (validation + defaults).

A resource is a plain dict in Kubernetes shape (``apiVersion``, ``kind``, ``metadata``, ``spec``,
``status``). This module owns the table of kinds (group, versions, plural, short names) used by
the REST API and the CLI, and :func:`admit`, which validates and defaults an object before it is
stored, raising :class:`~broker.errors.InvalidResource` naming the bad field.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import orjson
from cryptography import x509

from broker.dispatch.filters import (
    FILTER_PAYLOAD_ANNOTATION,
    FILTER_PAYLOAD_ENABLED,
    validate_trigger_filters,
)
from broker.durations import parse_duration
from broker.errors import InvalidResource, NotFound
from broker.outbound import OutboundGuard, active_guard, guarding, refusal, relative_refusal


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One kind of resource as the API serves it."""

    group: str  # "" for the Kubernetes core group (Secret)
    versions: tuple[str, ...]  # accepted versions; the first is the preferred one
    kind: str
    plural: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True

    @property
    def version(self) -> str:
        return self.versions[0]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str) -> str:
        """The REST path of this kind's collection in ``namespace``."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"


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

# Every kind served. Feature packages (sources, serving, flows) add theirs with register_kind.
TYPES: list[ResourceType] = [
    BROKER,
    TRIGGER,
    CHANNEL,
    *CHANNEL_BUSES,
    SUBSCRIPTION,
    SECRET,
    CONFIG_MAP,
]


def channel_type(kind: str) -> ResourceType | None:
    """The channel implementation named ``kind`` (InMemoryChannel, KafkaChannel, ...), if any."""
    return next((t for t in CHANNEL_BUSES if t.kind == kind), None)


def type_for_path(group: str, version: str, plural: str) -> ResourceType:
    """The kind served at ``/apis/{group}/{version}/.../{plural}`` (group "" for ``/api``)."""
    for resource_type in TYPES:
        if (
            resource_type.group == group
            and resource_type.plural == plural
            and version in resource_type.versions
        ):
            return resource_type
    where = f"{group}/{version}" if group else version
    raise NotFound(f"the server does not serve {plural!r} in {where}")


def type_for_kind(api_version: str, kind: str) -> ResourceType:
    """The kind named by an object's ``apiVersion`` and ``kind`` (for ``cemesh apply``)."""
    group, _, version = api_version.rpartition("/")
    for resource_type in TYPES:
        if resource_type.kind == kind and resource_type.group == group:
            if version not in resource_type.versions:
                raise InvalidResource(
                    "apiVersion",
                    f"{kind} is served as {', '.join(resource_type.versions)} of "
                    f"{group or 'core'}, not {version!r}",
                )
            return resource_type
    known = ", ".join(f"{t.kind} ({t.api_version})" for t in TYPES)
    raise InvalidResource("kind", f"unknown kind {kind!r} in {api_version!r}; known: {known}")


def type_for_name(name: str) -> ResourceType:
    """The kind a CLI user names: kind, plural, short name, or ``plural.group``; any case."""
    wanted = name.lower()
    for resource_type in TYPES:
        names = {
            resource_type.kind.lower(),
            resource_type.plural,
            *resource_type.short_names,
            f"{resource_type.plural}.{resource_type.group}".rstrip("."),
        }
        if wanted in names:
            return resource_type
    known = ", ".join(t.plural for t in TYPES)
    raise NotFound(f"unknown resource kind {name!r}; known kinds: {known}")


# =================================================================================================
# Admission: validation and defaults, per kind.
#
# ``admit`` does what every kind shares (apiVersion/kind, metadata, dropping server-set fields and
# status) and then calls the kind's entry in ``ADMISSIONS``. A new kind adds one function and one
# table row. Every failure is an InvalidResource naming the dotted path of the bad field and
# saying what is allowed.
# =================================================================================================

BROKER_CLASS_ANNOTATION = "eventing.knative.dev/broker.class"
DEFAULT_BROKER_CLASS = "MTChannelBasedBroker"
BROKER_LABEL = "eventing.knative.dev/broker"
DEPENDENCY_ANNOTATION = "knative.dev/dependency"
DELIVERY_ORDER_ANNOTATION = "kafka.eventing.knative.dev/delivery.order"
DEFAULT_NAMESPACE = "default"

# The channel implementations a Channel's spec.channelTemplate may name (K140).
DEFAULT_CHANNEL_TEMPLATE: dict[str, str] = {
    "apiVersion": IN_MEMORY_CHANNEL.api_version,
    "kind": IN_MEMORY_CHANNEL.kind,
}
CHANNEL_IMPLEMENTATIONS: tuple[ResourceType, ...] = tuple(CHANNEL_BUSES)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


# How deep an object may nest (maps and lists). Admission, the store and the reconcilers walk
# objects recursively (copy.deepcopy, orjson.dumps which stops at 254, filter trees), so this
# bound keeps every walk far from a stack limit; real Knative objects nest about 10 levels.
MAX_RESOURCE_DEPTH = 100


def check_depth(value: object, limit: int = MAX_RESOURCE_DEPTH) -> None:
    """InvalidResource naming the field when ``value`` nests deeper than ``limit`` levels.

    Walked with an explicit stack, so the check itself cannot exhaust the interpreter's stack.
    The field is named by its first few path segments (``spec.a[0]...``).
    """
    shown = 4  # path segments kept for the message
    stack: list[tuple[object, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, Mapping):
            children = [(child, f"{path}.{key}") for key, child in item.items()]
        elif isinstance(item, list | tuple):
            children = [(child, f"{path}[{index}]") for index, child in enumerate(item)]
        else:
            continue
        if depth >= limit:
            field = path.lstrip(".") + ("..." if depth > shown else "")
            raise InvalidResource(field, f"nests deeper than {limit} levels, the limit")
        for child, child_path in children:
            if isinstance(child, Mapping | list | tuple):
                stack.append((child, depth + 1, child_path if depth < shown else path))


def check_process_text(value: str, field: str) -> str:
    """Text handed to the OS to start a process (command, args, env, workingDir) has no NUL:
    the OS cannot take it, and the process would fail to start long after the apply."""
    if "\0" in value:
        raise InvalidResource(field, "must not contain a NUL character")
    return value


def metadata_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj["metadata"]`` (absent or null: a new empty one), or InvalidResource if not a map."""
    metadata = obj.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidResource("metadata", f"must be an object, got {_type_name(metadata)}")
    return metadata


def _require_mapping(value: object, field: str, what: str = "an object") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidResource(field, f"must be {what}, got {_type_name(value)}")
    return value


def _require_string(value: object, field: str, what: str = "") -> str:
    if value is None or value == "":
        raise InvalidResource(field, f"is required{what}")
    if not isinstance(value, str):
        raise InvalidResource(field, f"must be a string, got {_type_name(value)} {value!r}")
    return value


# --- names --------------------------------------------------------------------------------------


def check_subdomain_name(name: str, field: str) -> None:
    """A DNS-1123 subdomain: lower-case alphanumerics, '-' and '.', at most 253 characters."""
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
        raise InvalidResource(
            field,
            f"{name!r} is not a valid name: use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )


def check_label_name(name: str, field: str) -> None:
    """A DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters."""
    if len(name) > 63 or not _DNS1123_LABEL.fullmatch(name):
        raise InvalidResource(
            field,
            f"{name!r} is not a valid name: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters",
        )


def _check_qualified_key(key: object, field: str) -> None:
    """A label or annotation key: optional ``prefix/`` (DNS subdomain) then a name <= 63."""
    if not isinstance(key, str) or not key:
        raise InvalidResource(field, "keys must be non-empty strings")
    prefix, slash, name = key.rpartition("/")
    valid = len(name) <= 63 and bool(_QUALIFIED_NAME.fullmatch(name))
    if slash:
        valid = valid and len(prefix) <= 253 and bool(_DNS1123_SUBDOMAIN.fullmatch(prefix))
    if not valid:
        raise InvalidResource(
            field,
            f"invalid key {key!r}: an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit",
        )


def _string_map(value: object, field: str, *, labels: bool) -> dict[str, str]:
    if value is None:
        return {}
    mapping = _require_mapping(value, field, "a map of string keys to string values")
    result: dict[str, str] = {}
    for key, item in mapping.items():
        _check_qualified_key(key, field)
        if not isinstance(item, str):
            raise InvalidResource(
                f"{field}[{key}]", f"must be a string, got {_type_name(item)} {item!r}; quote it"
            )
        if labels and (len(item) > 63 or not _LABEL_VALUE.fullmatch(item)):
            raise InvalidResource(
                f"{field}[{key}]",
                f"invalid label value {item!r}: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (or empty)",
            )
        result[key] = item
    return result


def _admit_metadata(
    value: object, namespace: str | None, check_name: Callable[[str, str], None]
) -> dict[str, Any]:
    raw = _require_mapping({} if value is None else value, "metadata")
    name = raw.get("name")
    if name in (None, "") and raw.get("generateName"):
        raise InvalidResource(
            "metadata.name", "is required (generateName is not supported: give the object a name)"
        )
    name = _require_string(name, "metadata.name")
    check_name(name, "metadata.name")
    own = raw.get("namespace")
    if own is not None and not isinstance(own, str):
        raise InvalidResource("metadata.namespace", f"must be a string, got {_type_name(own)}")
    if own and namespace and own != namespace:
        raise InvalidResource(
            "metadata.namespace",
            f"{own!r} does not match the namespace of the request ({namespace!r}); "
            "leave it out or make them equal",
        )
    resolved = own or namespace or DEFAULT_NAMESPACE
    check_label_name(resolved, "metadata.namespace")
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": resolved,
        "labels": _string_map(raw.get("labels"), "metadata.labels", labels=True),
        "annotations": _string_map(raw.get("annotations"), "metadata.annotations", labels=False),
    }
    owners = raw.get("ownerReferences")
    if owners:  # objects cemesh creates for a Channel (and later flows) name their owner
        if not isinstance(owners, list) or not all(isinstance(o, Mapping) for o in owners):
            raise InvalidResource("metadata.ownerReferences", "must be a list of objects")
        metadata["ownerReferences"] = [dict(owner) for owner in owners]
    return metadata


# --- shared shapes: KReference, Destination, DeliverySpec ----------------------------------------


def admit_reference(
    value: object, field: str, *, namespace: str, same_namespace: bool = False
) -> dict[str, Any]:
    """A KReference (K162): apiVersion, kind, name required; namespace defaults to the referrer."""
    ref = dict(_require_mapping(value, field, "an object reference (apiVersion, kind, name)"))
    for key in ("apiVersion", "kind", "name"):
        _require_string(ref.get(key), f"{field}.{key}")
    ref_namespace = ref.get("namespace")
    if ref_namespace in (None, ""):
        ref["namespace"] = namespace
    elif not isinstance(ref_namespace, str):
        raise InvalidResource(
            f"{field}.namespace", f"must be a string, got {_type_name(ref_namespace)}"
        )
    elif same_namespace and ref_namespace != namespace:
        raise InvalidResource(
            f"{field}.namespace",
            f"must be empty or this object's namespace {namespace!r}, not {ref_namespace!r}",
        )
    return ref


def parse_url(value: object, field: str) -> SplitResult:
    """``value`` split as a URI reference; InvalidResource naming ``field`` if it is not one.

    The one URL rule of admission: a string without whitespace or control characters that
    ``urlsplit`` takes, with a numeric port in range if it has one (``http://[::1`` and
    ``http://h:99999`` are refused here, not found by a delivery later).
    """
    if not isinstance(value, str):
        raise InvalidResource(field, f"must be a string, got {_type_name(value)}")
    if any(char.isspace() or not char.isprintable() for char in value):
        raise InvalidResource(
            field, f"{value!r} is not a valid URI: it contains a space or control"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check (ValueError when invalid)
    except ValueError as exc:
        raise InvalidResource(field, f"{value!r} is not a valid URI: {exc}") from exc
    return parts


def check_http_url(value: object, field: str) -> SplitResult:
    """An absolute ``http://`` or ``https://`` URL with a host, else InvalidResource."""
    parts = parse_url(value, field)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidResource(field, f"{value!r} must be an http:// or https:// URL with a host")
    return parts


def admit_destination(value: object, field: str, *, namespace: str) -> dict[str, Any]:
    """A Destination (K159): ``ref`` and/or ``uri``; absolute uri alone, relative uri with ref.

    Also Knative's ``CACerts`` (PEM certificates that https deliveries to it trust) and
    ``audience`` (of the tokens cemesh sends it). Under the outbound guard in force
    (:func:`broker.outbound.guarding`), a uri at a link-local or metadata address or at
    cemesh's own management API is refused.
    """
    destination = dict(_require_mapping(value, field, "an object with 'ref' and/or 'uri'"))
    _admit_destination_tls_and_audience(destination, field)
    guard = active_guard()
    ref = destination.get("ref")
    uri = destination.get("uri")
    if ref is None and uri in (None, ""):
        raise InvalidResource(
            field, "needs 'ref' (an object reference) and/or 'uri'; neither is set"
        )
    if uri not in (None, ""):
        parts = parse_url(uri, f"{field}.uri")
        if parts.scheme:
            if ref is not None:
                raise InvalidResource(
                    f"{field}.uri",
                    "an absolute uri cannot be combined with ref; drop ref, or give a relative "
                    "uri (such as /path) to resolve against the ref's address",
                )
            check_http_url(uri, f"{field}.uri")
            why = None if guard is None else refusal(uri, guard)
            if why is not None:
                raise InvalidResource(f"{field}.uri", f"{uri!r} is refused: {why}")
        elif ref is None:
            raise InvalidResource(
                f"{field}.uri",
                f"{uri!r} is relative and there is no ref to resolve it against; "
                "give an absolute http(s) URL or add ref",
            )
        elif guard is not None and (why := relative_refusal(uri)) is not None:
            raise InvalidResource(f"{field}.uri", why)
    if ref is not None:
        destination["ref"] = admit_reference(ref, f"{field}.ref", namespace=namespace)
    return destination


def _admit_destination_tls_and_audience(destination: dict[str, Any], field: str) -> None:
    """``CACerts``: one or more PEM certificates; ``audience``: a non-empty string."""
    audience = destination.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience.strip()):
        raise InvalidResource(f"{field}.audience", f"must be a non-empty string, got {audience!r}")
    ca_certs = destination.get("CACerts")
    if ca_certs is None:
        return
    if not isinstance(ca_certs, str):
        raise InvalidResource(
            f"{field}.CACerts", f"must be a string of PEM certificates, got {_type_name(ca_certs)}"
        )
    try:
        x509.load_pem_x509_certificates(ca_certs.encode())
    except ValueError as exc:
        raise InvalidResource(
            f"{field}.CACerts",
            f"is not PEM certificates (-----BEGIN CERTIFICATE----- ...): {exc}",
        ) from exc


_DELIVERY_FIELDS = (
    "deadLetterSink",
    "retry",
    "backoffPolicy",
    "backoffDelay",
    "timeout",
    "retryAfterMax",
    "format",
)


def admit_delivery(value: object, field: str, *, namespace: str) -> dict[str, Any]:
    """A DeliverySpec (K112, K114, K120, K121)."""
    delivery = dict(_require_mapping(value, field))
    for key in delivery:
        if key not in _DELIVERY_FIELDS:
            raise InvalidResource(
                f"{field}.{key}",
                f"unknown field; a delivery spec has {', '.join(_DELIVERY_FIELDS)}",
            )
    retry = delivery.get("retry")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 0):
        raise InvalidResource(f"{field}.retry", f"must be an integer >= 0, got {retry!r}")
    policy = delivery.get("backoffPolicy")
    if policy is not None and policy not in ("linear", "exponential"):
        raise InvalidResource(
            f"{field}.backoffPolicy", f"must be 'linear' or 'exponential', got {policy!r}"
        )
    for key in ("backoffDelay", "retryAfterMax"):
        if delivery.get(key) is not None:
            parse_duration(delivery[key], f"{field}.{key}")
    timeout = delivery.get("timeout")
    if timeout is not None and parse_duration(timeout, f"{field}.timeout") <= 0:
        raise InvalidResource(f"{field}.timeout", "must be longer than zero (e.g. PT10S)")
    fmt = delivery.get("format")
    if fmt is not None and fmt not in ("json", "binary"):
        raise InvalidResource(f"{field}.format", f"must be 'json' or 'binary', got {fmt!r}")
    if delivery.get("deadLetterSink") is not None:
        delivery["deadLetterSink"] = admit_destination(
            delivery["deadLetterSink"], f"{field}.deadLetterSink", namespace=namespace
        )
    return delivery


def _admit_spec_delivery(spec: dict[str, Any], namespace: str) -> None:
    if spec.get("delivery") is not None:
        spec["delivery"] = admit_delivery(spec["delivery"], "spec.delivery", namespace=namespace)


def _immutable(
    old: Mapping[str, Any] | None, new_value: object, old_value: object, field: str
) -> None:
    if old is not None and new_value != old_value:
        raise InvalidResource(
            field, f"is immutable: it cannot change from {old_value!r} to {new_value!r}"
        )


def _old_spec(old: Mapping[str, Any] | None) -> Mapping[str, Any]:
    spec = (old or {}).get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _old_annotations(old: Mapping[str, Any] | None) -> Mapping[str, Any]:
    annotations = ((old or {}).get("metadata") or {}).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


# --- per kind -----------------------------------------------------------------------------------


def _admit_broker(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    annotations = obj["metadata"]["annotations"]
    field = f"metadata.annotations[{BROKER_CLASS_ANNOTATION}]"
    old_class = _old_annotations(old).get(BROKER_CLASS_ANNOTATION)
    if not annotations.get(BROKER_CLASS_ANNOTATION):  # K59: default on create, keep on update
        annotations[BROKER_CLASS_ANNOTATION] = old_class or DEFAULT_BROKER_CLASS
    spec = obj["spec"]
    if spec.get("config") is not None:
        _require_mapping(spec["config"], "spec.config", "an object reference")
    _admit_spec_delivery(spec, obj["metadata"]["namespace"])
    if old is not None:
        _immutable(old, annotations[BROKER_CLASS_ANNOTATION], old_class, field)
        _immutable(old, spec.get("config"), _old_spec(old).get("config"), "spec.config")


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
        ref = _require_mapping(broker_ref, "spec.brokerRef", "an object reference to a Broker")
        field = "spec.brokerRef.name"
        name = _require_string(ref.get("name"), field)
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
        name = _require_string(broker, field, ": the name of a Broker in the Trigger's namespace")
    check_subdomain_name(name, field)
    if old is not None:  # K54
        _immutable(old, name, trigger_broker(_old_spec(old)), field)

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
    _admit_spec_delivery(spec, namespace)
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
    ref = _require_mapping(ref, field, "a JSON object reference (kind, name, apiVersion)")
    for key in ("kind", "name", "apiVersion"):
        _require_string(ref.get(key), f"{field}.{key}")
    if ref.get("namespace") not in (None, "", namespace):
        raise InvalidResource(
            f"{field}.namespace", f"must be empty or the Trigger's namespace {namespace!r}"
        )


def _admit_channel(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    template = spec.get("channelTemplate")
    old_template = _old_spec(old).get("channelTemplate")
    if template is None and old_template is not None:
        # An update that leaves the template out keeps it (as the Broker class, K59): Channels
        # stored when admission still defaulted it re-apply from the same YAML.
        template = spec["channelTemplate"] = copy.deepcopy(old_template)
    # No template: the configured default channel kind backs it (CEMESH_DEFAULT_CHANNEL, K140);
    # that is decided at reconcile time, where the setting is known.
    if template is not None:
        template = _require_mapping(template, "spec.channelTemplate")
        api_version = _require_string(template.get("apiVersion"), "spec.channelTemplate.apiVersion")
        kind = _require_string(template.get("kind"), "spec.channelTemplate.kind")
        if not any(
            t.kind == kind and api_version == t.api_version for t in CHANNEL_IMPLEMENTATIONS
        ):
            available = ", ".join(f"{t.kind} ({t.api_version})" for t in CHANNEL_IMPLEMENTATIONS)
            raise InvalidResource(
                "spec.channelTemplate.kind",
                f"{kind} ({api_version}) is not available in this version; "
                f"available channel kinds: {available}",
            )
    _admit_spec_delivery(spec, obj["metadata"]["namespace"])
    if old is not None:  # K140: immutable
        _immutable(old, spec.get("channelTemplate"), old_template, "spec.channelTemplate")


def _admit_backing_channel(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    _admit_spec_delivery(obj["spec"], obj["metadata"]["namespace"])


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
            _immutable(old, value, _old_spec(old).get(key), f"spec.{key}")
    if spec.get("retentionDuration") is not None:
        parse_duration(spec["retentionDuration"], "spec.retentionDuration")
    _admit_spec_delivery(spec, obj["metadata"]["namespace"])


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
            _immutable(old, obj.get(field) or {}, old.get(field) or {}, field)
        _immutable(old, immutable, True, "immutable")


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
        old_channel = _old_spec(old).get("channel")
        if isinstance(old_channel, Mapping):
            old_channel = {"namespace": namespace, **old_channel}
        _immutable(old, spec["channel"], old_channel, "spec.channel")
    if spec.get("subscriber") is None:  # K154
        raise InvalidResource("spec.subscriber", "is required: where the channel's events are sent")
    spec["subscriber"] = admit_destination(
        spec["subscriber"], "spec.subscriber", namespace=namespace
    )
    if spec.get("reply") is not None:
        spec["reply"] = admit_destination(spec["reply"], "spec.reply", namespace=namespace)
    _admit_spec_delivery(spec, namespace)


def _admit_secret(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    secret_type = obj.setdefault("type", "Opaque")
    if secret_type is None:
        secret_type = obj["type"] = "Opaque"
    _require_string(secret_type, "type")
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
        _immutable(old, obj["type"], old.get("type") or "Opaque", "type")
        if old.get("immutable") is True:
            _immutable(old, obj["data"], old.get("data") or {}, "data")
            _immutable(old, immutable, True, "immutable")


def _secret_items(value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    mapping = _require_mapping(value, field, "a map of key to string value")
    items: dict[str, str] = {}
    for key, item in mapping.items():
        if not isinstance(key, str) or len(key) > 253 or not _SECRET_KEY.fullmatch(key):
            raise InvalidResource(
                field, f"invalid key {key!r}: use letters, digits, '-', '_' or '.' (<= 253)"
            )
        if not isinstance(item, str):
            raise InvalidResource(f"{field}.{key}", f"must be a string, got {_type_name(item)}")
        items[key] = item
    return items


Admitter = Callable[[dict[str, Any], Mapping[str, Any] | None], None]


def _no_checks(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Kinds without rules of their own: the shared metadata checks are all they get."""


@dataclass(frozen=True, slots=True)
class Admission:
    """How one kind is admitted.

    ``check`` validates and defaults the normalized object in place (``old`` is the stored object
    on update, else None); ``content`` lists the top-level fields carrying the desired state
    (``spec``, or a Secret's own fields); ``check_name`` checks ``metadata.name``.
    """

    check: Admitter = _no_checks
    content: tuple[str, ...] = ("spec",)
    check_name: Callable[[str, str], None] = check_subdomain_name


ADMISSIONS: dict[ResourceType, Admission] = {
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


def register_kind(resource_type: ResourceType, admission: Admission | None = None) -> None:
    """Serve ``resource_type`` (REST API, CLI, ``apply``), admitted by ``admission``."""
    if any(t.kind == resource_type.kind and t.group == resource_type.group for t in TYPES):
        raise ValueError(f"{resource_type.kind} ({resource_type.group}) is registered already")
    TYPES.append(resource_type)
    ADMISSIONS[resource_type] = admission or Admission()


def admit(
    obj: dict[str, Any],
    *,
    namespace: str | None = None,
    old: dict[str, Any] | None = None,
    guard: OutboundGuard | None = None,
) -> dict[str, Any]:
    """Validate and default ``obj`` before it is created (``old`` None) or replaces ``old``.

    Returns a normalized copy: apiVersion, kind, metadata (name, namespace, labels, annotations)
    and the kind's content fields. Server-set metadata and ``status`` are dropped; unknown
    fields inside ``spec`` are kept so Knative YAML applies unchanged. Raises InvalidResource
    naming the bad field. ``guard``: the outbound guard every destination is checked against
    (None: unguarded, for objects cemesh makes itself).
    """
    if not isinstance(obj, Mapping):
        raise InvalidResource("", f"a resource must be an object, got {_type_name(obj)}")
    check_depth(obj)
    api_version = _require_string(
        obj.get("apiVersion"), "apiVersion", " (e.g. eventing.knative.dev/v1)"
    )
    kind = _require_string(obj.get("kind"), "kind", " (e.g. Broker, Trigger, Channel)")
    resource_type = type_for_kind(api_version, kind)
    admission = ADMISSIONS.get(resource_type, Admission())
    metadata = _admit_metadata(obj.get("metadata"), namespace, admission.check_name)
    result: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    for field in admission.content:
        if field in obj:
            result[field] = copy.deepcopy(obj[field])
    if "spec" in admission.content:
        spec = result.get("spec")
        result["spec"] = {} if spec is None else dict(_require_mapping(spec, "spec"))
    if old is not None:
        old_metadata = old.get("metadata") or {}
        if old.get("kind") not in (None, kind):
            raise InvalidResource("kind", f"cannot change from {old['kind']!r} to {kind!r}")
        for key in ("name", "namespace"):
            if old_metadata.get(key) not in (None, metadata[key]):
                raise InvalidResource(
                    f"metadata.{key}",
                    f"cannot change from {old_metadata[key]!r} to {metadata[key]!r}",
                )
    with guarding(guard):
        admission.check(result, old)
    return result


# Kinds that live with their feature register themselves here, after everything above exists
# (they use the admission helpers of this module).
from broker.eventpolicy import kinds as _eventpolicy_kinds  # noqa: E402, F401
from broker.flows import kinds as _flow_kinds  # noqa: E402, F401
from broker.serving import kinds as _serving_kinds  # noqa: E402, F401
from broker.sources import kinds as _source_kinds  # noqa: E402, F401
