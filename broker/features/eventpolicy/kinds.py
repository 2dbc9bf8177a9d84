"""The EventPolicy kind (``eventing.knative.dev/v1alpha1``) and its admission, as Knative's.

``spec.to`` (optional: empty means every Broker and Channel of the namespace): each entry is a
``ref`` (apiVersion, kind, name of a Broker or channel kind in the policy's namespace) or a
``selector`` (apiVersion, kind and a label selector), never both. ``spec.from``: each entry is a
``ref`` to the sending object (apiVersion, kind, name, optional namespace) or a ``sub`` (an OIDC
subject; ``*`` only as the last character, matching any suffix), never both. ``spec.filters``:
the Trigger filter dialects, checked and compiled by :mod:`broker.dataplane.dispatch.filters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.controlplane.resources import (
    BROKER,
    CHANNEL,
    CHANNEL_BUSES,
    EVENTING,
    Admission,
    ResourceType,
    check_subdomain_name,
)
from broker.controlplane.shapes import (
    one_of,
    optional_list,
    require_mapping,
    require_string,
    type_name,
)
from broker.core.errors import InvalidResource
from broker.core.labels import check_label_selector
from broker.dataplane.dispatch.filters import validate_trigger_filters

EVENT_POLICY = ResourceType(
    EVENTING, ("v1alpha1",), "EventPolicy", "eventpolicies", ("eventpolicy",)
)

# The kinds an EventPolicy can be applied to: those with an ingress here.
TARGET_KINDS: tuple[ResourceType, ...] = (BROKER, CHANNEL, *CHANNEL_BUSES)


def _target_kind(entry: Mapping[str, Any], field: str) -> ResourceType:
    api_version = require_string(
        entry.get("apiVersion"), f"{field}.apiVersion", "e.g. eventing.knative.dev/v1"
    )
    kind = require_string(entry.get("kind"), f"{field}.kind", "Broker, Channel or a channel kind")
    group = api_version.rpartition("/")[0].lower()
    for target in TARGET_KINDS:  # Knative matches group and kind ignoring case
        if target.kind.lower() == kind.lower() and target.group == group:
            return target
    served = ", ".join(f"{t.kind} ({t.api_version})" for t in TARGET_KINDS)
    raise InvalidResource(
        f"{field}.kind",
        f"{kind} ({api_version}) cannot be the target of an EventPolicy; targets are: {served}",
    )


def _admit_to(value: object, namespace: str) -> list[dict[str, Any]]:
    admitted = []
    for index, raw in enumerate(optional_list(value, "spec.to", "targets (ref or selector)")):
        field = f"spec.to[{index}]"
        entry = dict(require_mapping(raw, field, "an object with 'ref' or 'selector'"))
        which = one_of(entry, field, ("ref", "selector"))
        where = f"{field}.{which}"
        target = dict(require_mapping(entry[which], where, "an object"))
        _target_kind(target, where)
        if which == "ref":
            check_subdomain_name(
                require_string(target.get("name"), f"{where}.name", "the target's name"),
                f"{where}.name",
            )
            if target.get("namespace") not in (None, "", namespace):
                raise InvalidResource(
                    f"{where}.namespace",
                    f"must be empty or the EventPolicy's namespace {namespace!r}: a policy "
                    "applies to resources of its own namespace",
                )
            target.pop("namespace", None)
        else:
            selector = {k: v for k, v in target.items() if k not in ("apiVersion", "kind")}
            check_label_selector(selector, where)
        entry[which] = target
        admitted.append(entry)
    return admitted


def check_subject_pattern(sub: str, field: str) -> None:
    """A ``from.sub``: ``*`` is allowed only as its last character (Knative's rule)."""
    star = sub.find("*")
    if 0 <= star < len(sub) - 1:
        raise InvalidResource(
            field,
            f"{sub!r}: '*' is only allowed as the last character (a prefix match, such as "
            "system:serviceaccount:my-ns:*)",
        )


def _admit_from(value: object, namespace: str) -> list[dict[str, Any]]:
    admitted = []
    for index, raw in enumerate(optional_list(value, "spec.from", "senders (ref or sub)")):
        field = f"spec.from[{index}]"
        entry = dict(require_mapping(raw, field, "an object with 'ref' or 'sub'"))
        which = one_of(entry, field, ("ref", "sub"))
        if which == "sub":
            check_subject_pattern(
                require_string(entry["sub"], f"{field}.sub", "an OIDC subject"), f"{field}.sub"
            )
        else:
            ref = dict(require_mapping(entry["ref"], f"{field}.ref", "an object reference"))
            for key in ("apiVersion", "kind", "name"):
                require_string(ref.get(key), f"{field}.ref.{key}", "of the sending object")
            ref_namespace = ref.get("namespace")
            if ref_namespace in (None, ""):
                ref["namespace"] = namespace
            elif not isinstance(ref_namespace, str):
                raise InvalidResource(
                    f"{field}.ref.namespace", f"must be a string, got {type_name(ref_namespace)}"
                )
            entry["ref"] = ref
        admitted.append(entry)
    return admitted


def _admit_event_policy(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    namespace = obj["metadata"]["namespace"]
    spec = obj["spec"]
    if spec.get("to") is not None:
        spec["to"] = _admit_to(spec["to"], namespace)
    if spec.get("from") is not None:
        spec["from"] = _admit_from(spec["from"], namespace)
    if spec.get("filters") is not None:
        validate_trigger_filters({"filters": spec["filters"]})


# The kind this feature serves, with its admission (listed in broker.features.eventpolicy.feature).
EVENTPOLICY_KINDS: dict[ResourceType, Admission] = {EVENT_POLICY: Admission(_admit_event_policy)}
