"""The flow kinds, Sequence and Parallel (``flows.knative.dev/v1``): resource types and admission.

Admission follows Knative's validation (K164, K170): a Sequence needs at least one step, each a
Destination that may carry its own ``delivery``; a Parallel needs at least one branch, each with a
``subscriber`` and optionally a ``filter``, a ``reply`` and a ``delivery``. ``channelTemplate``
may be left out: as for a Channel, the configured default channel kind then backs the flow
(decided at reconcile time, where the setting is known). The names of the owned objects derive
from the flow's name, so a name too long for them is refused here, not discovered later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.controlplane.admission import admit
from broker.controlplane.eventing.kinds import EVENTING_CATALOG
from broker.controlplane.resources import (
    CHANNEL,
    CHANNEL_IMPLEMENTATIONS,
    Admission,
    ResourceType,
    admit_delivery,
    admit_destination,
    check_subdomain_name,
)
from broker.core.errors import InvalidResource

FLOWS = "flows.knative.dev"

SEQUENCE = ResourceType(FLOWS, ("v1",), "Sequence", "sequences", ("sequence",))
PARALLEL = ResourceType(FLOWS, ("v1",), "Parallel", "parallels", ("parallel",))

# The channel kinds a flow's channelTemplate may name: every implementation, and the generic
# Channel (which then owns a backing channel of its own default kind).
TEMPLATE_KINDS: tuple[ResourceType, ...] = (*CHANNEL_IMPLEMENTATIONS, CHANNEL)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _require_list(value: object, field: str, what: str) -> list[Any]:
    if value is None or value == []:
        raise InvalidResource(field, f"is required: at least one {what}")
    if not isinstance(value, list):
        raise InvalidResource(field, f"must be a list of {what}s, got {_type_name(value)}")
    return value


def admit_channel_template(spec: dict[str, Any], namespace: str) -> None:
    """``spec.channelTemplate``: a channel kind served here; its ``spec`` must admit as one."""
    template = spec.get("channelTemplate")
    if template is None:
        return
    field = "spec.channelTemplate"
    if not isinstance(template, Mapping):
        raise InvalidResource(field, f"must be an object, got {_type_name(template)}")
    api_version, kind = template.get("apiVersion"), template.get("kind")
    for key, value in (("apiVersion", api_version), ("kind", kind)):
        if not isinstance(value, str) or not value:
            raise InvalidResource(f"{field}.{key}", "is required (e.g. InMemoryChannel)")
    if not any(t.kind == kind and t.api_version == api_version for t in TEMPLATE_KINDS):
        available = ", ".join(f"{t.kind} ({t.api_version})" for t in TEMPLATE_KINDS)
        raise InvalidResource(
            f"{field}.kind",
            f"{kind} ({api_version}) is not available in this version; "
            f"available channel kinds: {available}",
        )
    # The template's spec becomes each owned channel's spec: check it as that kind would, so a
    # bad one is refused now rather than leaving the flow waiting for channels never created.
    probe = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "template", "namespace": namespace},
        "spec": template.get("spec") or {},
    }
    try:
        admitted = admit(probe, catalog=EVENTING_CATALOG)
    except InvalidResource as exc:
        raise InvalidResource(f"{field}.{exc.field}", exc.reason) from exc
    if template.get("spec") is not None:
        spec["channelTemplate"] = {**template, "spec": admitted["spec"]}


def _admit_step(value: object, field: str, namespace: str) -> dict[str, Any]:
    """A Sequence step: a Destination (``ref`` and/or ``uri``) plus an optional ``delivery``."""
    if not isinstance(value, Mapping):
        raise InvalidResource(field, f"must be an object with 'ref' and/or 'uri', got {value!r}")
    step = dict(value)
    delivery = step.pop("delivery", None)
    step = admit_destination(step, field, namespace=namespace)
    if delivery is not None:
        step["delivery"] = admit_delivery(delivery, f"{field}.delivery", namespace=namespace)
    return step


def _admit_reply(spec: dict[str, Any], namespace: str, field: str = "spec.reply") -> None:
    if spec.get("reply") is not None:
        spec["reply"] = admit_destination(spec["reply"], field, namespace=namespace)


def _check_owned_name(name: str) -> None:
    """The longest owned object's name (it carries the flow's name) must be a valid name."""
    try:
        check_subdomain_name(name, "metadata.name")
    except InvalidResource as exc:
        raise InvalidResource(
            "metadata.name", f"is too long: the owned object {name!r} would be invalid"
        ) from exc


def _admit_sequence(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    namespace = obj["metadata"]["namespace"]
    spec = obj["spec"]
    steps = _require_list(spec.get("steps"), "spec.steps", "step (a Destination)")
    spec["steps"] = [
        _admit_step(step, f"spec.steps[{i}]", namespace) for i, step in enumerate(steps)
    ]
    admit_channel_template(spec, namespace)
    _admit_reply(spec, namespace)
    _check_owned_name(f"{obj['metadata']['name']}-kn-sequence-{len(steps) - 1}")


def _admit_parallel(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    namespace = obj["metadata"]["namespace"]
    spec = obj["spec"]
    branches = _require_list(spec.get("branches"), "spec.branches", "branch")
    admitted = []
    for i, value in enumerate(branches):
        field = f"spec.branches[{i}]"
        if not isinstance(value, Mapping):
            raise InvalidResource(field, f"must be an object with a subscriber, got {value!r}")
        branch = dict(value)
        if branch.get("subscriber") is None:
            raise InvalidResource(f"{field}.subscriber", "is required: where the branch sends")
        for key in ("subscriber", "filter", "reply"):
            if branch.get(key) is not None:
                branch[key] = admit_destination(branch[key], f"{field}.{key}", namespace=namespace)
        if branch.get("delivery") is not None:
            branch["delivery"] = admit_delivery(
                branch["delivery"], f"{field}.delivery", namespace=namespace
            )
        admitted.append(branch)
    spec["branches"] = admitted
    admit_channel_template(spec, namespace)
    _admit_reply(spec, namespace)
    _check_owned_name(f"{obj['metadata']['name']}-kn-parallel-filter-{len(branches) - 1}")


# The kinds this feature serves, with their admission (listed in broker.features.flows.feature).
FLOWS_KINDS: dict[ResourceType, Admission] = {
    SEQUENCE: Admission(_admit_sequence),
    PARALLEL: Admission(_admit_parallel),
}
