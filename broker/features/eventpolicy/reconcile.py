"""EventPolicy status and the policies the ingress runs. Pure, like
:mod:`broker.controlplane.reconcile`.

For each EventPolicy (reconciled after every Broker and channel of the pass):

- ``status.from``: the subjects it allows: its ``sub`` patterns as written, and each ``from.ref``
  resolved to the subject Knative gives that object's OIDC service account
  (``system:serviceaccount:<namespace>:<name>-oidc-<group>-<kind>``, lower case);
- ``status.appliesTo``: the Brokers and channels of its namespace it applies to (every one when
  ``spec.to`` is empty; else those named by ``ref`` or matched by ``selector``, by group and kind
  ignoring case, as Knative); each of those lists the policy in its own ``status.policies``
  (Knative's applied-policies status);
- conditions ``AuthenticationEnabled`` (False while ingress OIDC is off: the policy is not
  enforced then) and ``SubjectsResolved`` (False when a ``from.ref`` names no object), giving
  ``Ready``.

With ingress OIDC on, the policy's subjects and compiled ``spec.filters`` (the Trigger filter
compiler of :mod:`broker.dataplane.dispatch.filters`) go to ``world.route_policies`` for every
ingress route it applies to; a generic Channel's route is its backing channel's, so a policy on
either covers it. A policy applies even when a reference does not resolve, so it denies rather than
opens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from broker.controlplane.resources import BROKER
from broker.controlplane.world import Conditions, Obj, World, base_status
from broker.core.errors import InvalidResource
from broker.core.ingress_authorization import CompiledPolicy
from broker.core.labels import label_selector_matches
from broker.dataplane.dispatch.filters import compile_trigger_filter
from broker.features.eventpolicy.kinds import EVENT_POLICY, TARGET_KINDS

_LONGEST_NAME = 63  # a Kubernetes object name (DNS label)


def oidc_service_account_subject(group: str, kind: str, namespace: str, name: str) -> str:
    """The ``sub`` of the OIDC service account Knative creates for an object (lower case).

    Knative names it ``<name>-oidc-<group>-<kind>``; a name too long for that keeps a prefix of
    the object's name and an MD5 of the whole, as ``kmeta.ChildName`` does.
    """
    suffix = f"-oidc-{group}-{kind}"
    account = name + suffix
    if len(account) > _LONGEST_NAME:
        digest = hashlib.md5(account.encode(), usedforsecurity=False).hexdigest()
        account = f"{name[: max(_LONGEST_NAME - len(digest) - 1, 1)]}-{digest}"
    return f"system:serviceaccount:{namespace}:{account.lower()}"


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _route(obj: Obj) -> tuple[str, str, str]:
    """The ingress route of a Broker or channel; a generic Channel shares its backing one's."""
    metadata = obj["metadata"]
    kind = "broker" if obj["kind"] == BROKER.kind else "channel"
    return (kind, metadata["namespace"], metadata["name"])


def _targets_in(namespace: str, world: World) -> list[Obj]:
    """The Brokers and channels of ``namespace``, in a stable order."""
    kinds = {(t.group, t.kind) for t in TARGET_KINDS}
    found = [
        obj
        for (group, kind, ns, _), obj in world.objects.items()
        if ns == namespace and (group, kind) in kinds
    ]
    return sorted(found, key=lambda o: (o["kind"], o["metadata"]["name"]))


def _applies_to(spec: Mapping[str, Any], target: Obj) -> bool:
    """Whether a policy's ``spec.to`` covers ``target`` (Knative: group and kind ignore case)."""
    entries = spec.get("to") or []
    if not entries:
        return True
    group, kind = _group(target["apiVersion"]).lower(), target["kind"].lower()
    name = target["metadata"]["name"]
    labels = target["metadata"].get("labels") or {}
    for entry in entries:
        ref, selector = entry.get("ref"), entry.get("selector")
        chosen = ref if isinstance(ref, Mapping) else selector
        if not isinstance(chosen, Mapping):
            continue
        if _group(str(chosen.get("apiVersion", ""))).lower() != group:
            continue
        if str(chosen.get("kind", "")).lower() != kind:
            continue
        if chosen is ref and str(ref.get("name", "")).lower() == name.lower():
            return True
        if chosen is selector and label_selector_matches(selector, labels):
            return True
    return False


def _subjects(spec: Mapping[str, Any], world: World) -> tuple[list[str], list[str]]:
    """The subjects ``spec.from`` allows, and messages for the references that do not resolve."""
    subjects: list[str] = []
    unresolved: list[str] = []
    for entry in spec.get("from") or []:
        sub, ref = entry.get("sub"), entry.get("ref")
        if isinstance(sub, str) and sub:
            subjects.append(sub)
        elif isinstance(ref, Mapping):
            group, kind = _group(str(ref.get("apiVersion", ""))), str(ref.get("kind", ""))
            namespace, name = str(ref.get("namespace", "")), str(ref.get("name", ""))
            if world.find((group, kind, namespace, name)) is None:
                unresolved.append(f'{kind} "{namespace}/{name}" does not exist')
            else:
                subjects.append(oidc_service_account_subject(group, kind, namespace, name))
    return subjects, unresolved


def reconcile_event_policy(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    spec = obj.get("spec") or {}
    conditions = Conditions(obj, world.now)
    if world.ingress_oidc:
        conditions.set("AuthenticationEnabled", "True")
    else:
        conditions.set(
            "AuthenticationEnabled",
            "False",
            "OIDCAuthenticationDisabled",
            "ingress OIDC is off (CEMESH_INGRESS_OIDC): EventPolicies are not enforced",
        )
    subjects, unresolved = _subjects(spec, world)
    if unresolved:
        conditions.set("SubjectsResolved", "False", "SubjectsNotResolved", "; ".join(unresolved))
    else:
        conditions.set("SubjectsResolved", "True")

    compiled: CompiledPolicy | None = None
    if world.ingress_oidc:
        try:
            predicate, text = compile_trigger_filter({"filters": spec.get("filters") or []})
        except InvalidResource as exc:  # stored before a rule tightened: deny, and say why
            conditions.set("FiltersValid", "False", "InvalidFilters", str(exc))
            subjects = []
            predicate, text = (lambda _event: False), "invalid"
        compiled = CompiledPolicy(
            namespace=namespace,
            name=name,
            subjects=tuple(subjects),
            filter=predicate,
            filter_source=text,
        )

    applied_to: list[dict[str, str]] = []
    for target in _targets_in(namespace, world):
        if not _applies_to(spec, target):
            continue
        applied_to.append(
            {
                "apiVersion": target["apiVersion"],
                "kind": target["kind"],
                "name": target["metadata"]["name"],
            }
        )
        if compiled is None:
            continue
        target_status = world.statuses.get(target["metadata"]["uid"])
        if target_status is not None:
            applied = target_status.setdefault("policies", [])
            applied.append({"apiVersion": EVENT_POLICY.api_version, "name": name})
            applied.sort(key=lambda ref: ref["name"])  # stable whatever the store's order
        world.route_policies.setdefault(_route(target), {})[name] = compiled

    status = base_status(obj, conditions)
    status["from"] = subjects
    status["appliesTo"] = applied_to
    world.statuses[metadata["uid"]] = status
