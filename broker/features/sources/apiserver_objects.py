"""ApiServerSource's pure rules: its spec, and Kubernetes objects as CloudEvents (K187-K193).

Owns, without I/O:

- admission of the resource's spec (:func:`admit_api_server_source`, Knative's Validate) and
  the event types a source produces (:func:`event_types`);
- the event mapping (:func:`to_cloudevent`): types ``dev.knative.apiserver.resource.*``
  (``Resource`` mode, data = the object) and ``dev.knative.apiserver.ref.*`` (``Reference``
  mode, data = ``{kind, namespace, name, apiVersion}``); ``source`` = the API server URL;
  ``subject`` = Knative's guessed self link ``/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>``;
  extensions ``kind``, ``name``, ``namespace``, ``apiversion`` for Trigger filters;
- the ``spec.owner`` filter (:func:`controlled_by`) and the relist diff (:func:`diff_states`).

The watcher that feeds them (:mod:`broker.features.sources.apiserver`) does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from broker.controlplane.kube.store import guess_plural
from broker.core.errors import InvalidResource
from broker.core.events import CloudEvent, new_event
from broker.core.labels import check_label_selector

REFERENCE_MODE = "Reference"
RESOURCE_MODE = "Resource"
MODES = (REFERENCE_MODE, RESOURCE_MODE)

# eventing:pkg/apis/sources/constants.go (K187, K188)
ADD, UPDATE, DELETE = "add", "update", "delete"
RESOURCE_EVENT_TYPES = {c: f"dev.knative.apiserver.resource.{c}" for c in (ADD, UPDATE, DELETE)}
REF_EVENT_TYPES = {c: f"dev.knative.apiserver.ref.{c}" for c in (ADD, UPDATE, DELETE)}


# -- The event mapping (pure) ---------------------------------------------------------------


def self_link(api_version: str, kind: str, namespace: str, name: str) -> str:
    """Knative's ``createSelfLink`` (K190): core objects get ``/apis/v1/...`` too."""
    version = api_version
    # A group with no version (no "/") but dotted gets "/versionUnknown", as in Knative.
    if "." in version and "/" not in version:
        version += "/versionUnknown"
    return f"/apis/{version}/namespaces/{namespace}/{guess_plural(kind)}/{name}"


def object_meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def object_reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """Reference-mode data (K188): a corev1.ObjectReference, Go's field order and omitempty."""
    meta = object_meta(obj)
    fields = (
        ("kind", obj.get("kind")),
        ("namespace", meta.get("namespace")),
        ("name", meta.get("name")),
        ("apiVersion", obj.get("apiVersion")),
    )
    return {key: str(value) for key, value in fields if value}


def to_cloudevent(change: str, obj: Mapping[str, Any], *, mode: str, source: str) -> CloudEvent:
    """The CloudEvent Knative's ApiServerSource sends for ``change`` (add|update|delete) of ``obj``.

    ``mode`` is ``Resource`` (data = the whole object, K187) or ``Reference`` (data = its
    reference, K188). ``id`` is a new UUID and ``time`` now (K186, K189).
    """
    if change not in RESOURCE_EVENT_TYPES:
        raise ValueError(f"unknown change {change!r}: expected add, update or delete")
    meta = object_meta(obj)
    kind = str(obj.get("kind") or "")
    api_version = str(obj.get("apiVersion") or "")
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    if mode == RESOURCE_MODE:
        event_type = RESOURCE_EVENT_TYPES[change]
        # Go's json.Marshal of an unstructured object writes map keys sorted.
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    else:
        event_type = REF_EVENT_TYPES[change]
        data = orjson.dumps(object_reference(obj))
    # K191: copied for Trigger filters. Empty values (a cluster-scoped object's namespace) are
    # left out: an empty extension value says nothing a filter could use.
    attributes = {
        key: value
        for key, value in (
            ("subject", self_link(api_version, kind, namespace, name)),  # K190
            ("kind", kind),
            ("name", name),
            ("namespace", namespace),
            ("apiversion", api_version),
        )
        if value
    }
    return new_event(
        type=event_type,
        source=source,
        data=data,
        datacontenttype="application/json",
        extensions=attributes,
    )


# -- The owner filter (pure) ----------------------------------------------------------------


def controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any] | None) -> bool:
    """Whether ``obj`` passes the ``spec.owner`` filter (Knative's ``controller`` store).

    With an owner set, only objects whose *controller* owner reference matches the owner's
    apiVersion and kind (each compared only when given) pass.
    """
    if not owner:
        return True
    api_version, kind = owner.get("apiVersion") or "", owner.get("kind") or ""
    for ref in object_meta(obj).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return (not api_version or ref.get("apiVersion") == api_version) and (
                not kind or ref.get("kind") == kind
            )
    return False


# -- Admission (pure) -----------------------------------------------------------------------

_GROUP_VERSION = re.compile(r"[^/\s]+(/[^/\s]+)?")


def _check_api_version(value: object, field_: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidResource(field_, "is required (for example 'v1' or 'apps/v1')")
    if not _GROUP_VERSION.fullmatch(value):
        raise InvalidResource(
            field_, f"invalid value {value!r}: expected 'version' or 'group/version'"
        )


def _check_kind(value: object, field_: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidResource(field_, "is required (for example 'Pod')")


def admit_api_server_source(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Default and validate an ApiServerSource's spec in place (K192; Knative's Validate).

    ``mode`` defaults to ``Reference``. ``sink`` and ``ceOverrides`` are the framework's.
    Raises :class:`~broker.core.errors.InvalidResource` naming the bad field.
    """
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidResource("spec", "is required")
    mode = spec.setdefault("mode", REFERENCE_MODE)
    if mode not in MODES:
        raise InvalidResource("spec.mode", f"invalid value {mode!r}: Reference or Resource")
    resources = spec.get("resources")
    if not isinstance(resources, list) or not resources:
        raise InvalidResource("spec.resources", "is required: at least one {apiVersion, kind}")
    for i, resource in enumerate(resources):
        where = f"spec.resources[{i}]"
        if not isinstance(resource, Mapping):
            raise InvalidResource(where, "must be {apiVersion, kind, selector}")
        _check_api_version(resource.get("apiVersion"), f"{where}.apiVersion")
        _check_kind(resource.get("kind"), f"{where}.kind")
        check_label_selector(resource.get("selector"), f"{where}.selector")
    owner = spec.get("owner")
    if owner is not None:
        if not isinstance(owner, Mapping):
            raise InvalidResource("spec.owner", "must be {apiVersion, kind}")
        _check_api_version(owner.get("apiVersion"), "spec.owner.apiVersion")
        _check_kind(owner.get("kind"), "spec.owner.kind")
    check_label_selector(spec.get("namespaceSelector"), "spec.namespaceSelector")
    account = spec.get("serviceAccountName")
    if account is not None and not isinstance(account, str):
        raise InvalidResource("spec.serviceAccountName", "must be a string")


def event_types(obj: Mapping[str, Any]) -> list[str]:
    """The event types a source produces, for its mode (EventType registry, K184)."""
    spec = obj.get("spec") or {}
    table = RESOURCE_EVENT_TYPES if spec.get("mode") == RESOURCE_MODE else REF_EVENT_TYPES
    return [table[c] for c in (ADD, UPDATE, DELETE)]
