"""Admission: the checks and defaults every kind shares, and :func:`admit`, which runs them.

``admit`` does what every kind shares (apiVersion/kind, metadata, dropping server-set fields and
status) and then calls the kind's :class:`~broker.controlplane.catalog.Admission` from the catalog
it is given. The helpers here (names, label maps, object references, Destinations, DeliverySpecs,
URLs, nesting depth) are the one home of those rules; every kind's admission uses them. Every
failure is an InvalidResource naming the dotted path of the bad field and saying what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from broker.controlplane.catalog import Catalog, check_label_name
from broker.controlplane.outbound import (
    OutboundGuard,
    active_guard,
    guarding,
    refusal,
    relative_refusal,
)
from broker.core.durations import parse_duration
from broker.core.errors import InvalidResource
from broker.core.labels import is_label_key, is_label_value

DEFAULT_NAMESPACE = "default"


def type_name(value: object) -> str:
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
        raise InvalidResource("metadata", f"must be an object, got {type_name(metadata)}")
    return metadata


def require_mapping(value: object, field: str, what: str = "an object") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidResource(field, f"must be {what}, got {type_name(value)}")
    return value


def require_string(value: object, field: str, what: str = "") -> str:
    if value is None or value == "":
        raise InvalidResource(field, f"is required{what}")
    if not isinstance(value, str):
        raise InvalidResource(field, f"must be a string, got {type_name(value)} {value!r}")
    return value


# --- names --------------------------------------------------------------------------------------


def _check_qualified_key(key: object, field: str) -> None:
    """A label or annotation key: optional ``prefix/`` (DNS subdomain) then a name <= 63."""
    if not isinstance(key, str) or not key:
        raise InvalidResource(field, "keys must be non-empty strings")
    if not is_label_key(key):
        raise InvalidResource(
            field,
            f"invalid key {key!r}: an optional DNS prefix and '/', then at most 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit",
        )


def _string_map(value: object, field: str, *, labels: bool) -> dict[str, str]:
    if value is None:
        return {}
    mapping = require_mapping(value, field, "a map of string keys to string values")
    result: dict[str, str] = {}
    for key, item in mapping.items():
        _check_qualified_key(key, field)
        if not isinstance(item, str):
            raise InvalidResource(
                f"{field}[{key}]", f"must be a string, got {type_name(item)} {item!r}; quote it"
            )
        if labels and not is_label_value(item):
            raise InvalidResource(
                f"{field}[{key}]",
                f"invalid label value {item!r}: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (or empty)",
            )
        result[key] = item
    return result


def admit_metadata(
    value: object, namespace: str | None, check_name: Callable[[str, str], None]
) -> dict[str, Any]:
    raw = require_mapping({} if value is None else value, "metadata")
    name = raw.get("name")
    if name in (None, "") and raw.get("generateName"):
        raise InvalidResource(
            "metadata.name", "is required (generateName is not supported: give the object a name)"
        )
    name = require_string(name, "metadata.name")
    check_name(name, "metadata.name")
    own = raw.get("namespace")
    if own is not None and not isinstance(own, str):
        raise InvalidResource("metadata.namespace", f"must be a string, got {type_name(own)}")
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
    ref = dict(require_mapping(value, field, "an object reference (apiVersion, kind, name)"))
    for key in ("apiVersion", "kind", "name"):
        require_string(ref.get(key), f"{field}.{key}")
    ref_namespace = ref.get("namespace")
    if ref_namespace in (None, ""):
        ref["namespace"] = namespace
    elif not isinstance(ref_namespace, str):
        raise InvalidResource(
            f"{field}.namespace", f"must be a string, got {type_name(ref_namespace)}"
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
        raise InvalidResource(field, f"must be a string, got {type_name(value)}")
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
    (:func:`broker.controlplane.outbound.guarding`), a uri at a link-local or metadata address or at
    cemesh's own management API is refused.
    """
    destination = dict(require_mapping(value, field, "an object with 'ref' and/or 'uri'"))
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
            f"{field}.CACerts", f"must be a string of PEM certificates, got {type_name(ca_certs)}"
        )
    # Imported here, not with the module: cryptography's x509 costs a start ~0.05 s (issue 14),
    # and only a destination with CACerts needs it.
    from cryptography import x509

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
    delivery = dict(require_mapping(value, field))
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


def admit_spec_delivery(spec: dict[str, Any], namespace: str) -> None:
    if spec.get("delivery") is not None:
        spec["delivery"] = admit_delivery(spec["delivery"], "spec.delivery", namespace=namespace)


def check_immutable(
    old: Mapping[str, Any] | None, new_value: object, old_value: object, field: str
) -> None:
    if old is not None and new_value != old_value:
        raise InvalidResource(
            field, f"is immutable: it cannot change from {old_value!r} to {new_value!r}"
        )


def old_spec(old: Mapping[str, Any] | None) -> Mapping[str, Any]:
    spec = (old or {}).get("spec")
    return spec if isinstance(spec, Mapping) else {}


def old_annotations(old: Mapping[str, Any] | None) -> Mapping[str, Any]:
    annotations = ((old or {}).get("metadata") or {}).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


# --- per kind -----------------------------------------------------------------------------------


def admit(
    obj: dict[str, Any],
    *,
    namespace: str | None = None,
    old: dict[str, Any] | None = None,
    catalog: Catalog,
    guard: OutboundGuard | None = None,
) -> dict[str, Any]:
    """Validate and default ``obj`` before it is created (``old`` None) or replaces ``old``.

    Returns a normalized copy: apiVersion, kind, metadata (name, namespace, labels, annotations)
    and the kind's content fields. Server-set metadata and ``status`` are dropped; unknown
    fields inside ``spec`` are kept so Knative YAML applies unchanged. Raises InvalidResource
    naming the bad field. ``guard``: the outbound guard every destination is checked against
    (None: unguarded, for objects cemesh makes itself). ``catalog``: the kinds served.
    """
    if not isinstance(obj, Mapping):
        raise InvalidResource("", f"a resource must be an object, got {type_name(obj)}")
    check_depth(obj)
    api_version = require_string(
        obj.get("apiVersion"), "apiVersion", " (e.g. eventing.knative.dev/v1)"
    )
    kind = require_string(obj.get("kind"), "kind", " (e.g. Broker, Trigger, Channel)")
    resource_type = catalog.type_for_kind(api_version, kind)
    admission = catalog.admission(resource_type)
    metadata = admit_metadata(obj.get("metadata"), namespace, admission.check_name)
    result: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    for field in admission.content:
        if field in obj:
            result[field] = copy.deepcopy(obj[field])
    if "spec" in admission.content:
        spec = result.get("spec")
        result["spec"] = {} if spec is None else dict(require_mapping(spec, "spec"))
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
