"""Ingress authorization: may this sender put these events into this Broker or Channel? Pure.

The decision Knative's EventPolicy makes, over data compiled once per snapshot by the EventPolicy
reconciler (:mod:`broker.policies.reconcile`), so that nothing is parsed or compiled per event:

- when EventPolicies apply to the target, the sender's ``sub`` must match a subject of one of
  them (:func:`subject_matches`) and every event must pass all of that policy's filters;
- when none applies, the default mode decides (Knative's ``default-authorization-mode``):
  ``allow-all``; ``deny-all``; ``allow-same-namespace``, where the ``sub`` must be a Kubernetes
  service account of the target's namespace (``system:serviceaccount:<namespace>:...``).

A policy whose subjects do not resolve still applies (with the subjects it has), so a broken
reference denies rather than falling back to the default mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from broker.core.events import CloudEvent, EventFilter, match_all

AuthorizationMode = Literal["allow-same-namespace", "allow-all", "deny-all"]
AUTHORIZATION_MODES: tuple[AuthorizationMode, ...] = (
    "allow-same-namespace",
    "allow-all",
    "deny-all",
)

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def subject_matches(pattern: str, sub: str) -> bool:
    """Whether ``sub`` matches a policy subject ``pattern``, as Knative's ``SubjectContained``.

    A pattern ending in ``*`` matches every ``sub`` that starts with the rest (case-sensitive);
    any other pattern matches a ``sub`` equal to it ignoring case (Knative compares with
    ``EqualFold``).
    """
    if pattern.endswith("*") and sub.startswith(pattern[:-1]):
        return True
    return pattern.casefold() == sub.casefold()


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One EventPolicy as the ingress runs it: its resolved subjects and compiled filters."""

    namespace: str
    name: str
    subjects: tuple[str, ...]  # patterns (``*`` suffix) and resolved subjects, as status.from
    filter: EventFilter = field(default=match_all, compare=False)
    filter_source: str = ""  # canonical text of spec.filters, so equality sees filter changes
    # subject_matches, precomputed: every pattern case-folded, and the prefixes of ``*`` ones.
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_exact", frozenset(s.casefold() for s in self.subjects))
        prefixes = tuple(s[:-1] for s in self.subjects if s.endswith("*"))
        object.__setattr__(self, "_prefixes", prefixes)

    def admits(self, sub: str, folded: str | None = None) -> bool:
        """Whether ``sub`` matches one of the subjects (``folded``: ``sub.casefold()``)."""
        if sub.startswith(self._prefixes):  # str.startswith takes a tuple; () matches nothing
            return True
        return (sub.casefold() if folded is None else folded) in self._exact


@dataclass(frozen=True, slots=True)
class IngressAuthorization:
    """What the ingress checks for one Broker or Channel when OIDC is on."""

    audience: str  # the aud a sender's token must carry (status.address.audience)
    namespace: str
    policies: tuple[CompiledPolicy, ...] = ()
    default_mode: AuthorizationMode = "allow-same-namespace"

    def refusal(self, sub: str, events: Sequence[CloudEvent]) -> str | None:
        """None when ``sub`` may send every one of ``events``; else why not (for a 403)."""
        policies = self.policies
        if not policies:
            return self._default_refusal(sub)
        if len(policies) == 1:  # the usual case: no list, no generator per event
            only = policies[0]
            if only.admits(sub):
                check = only.filter
                for event in events:
                    if not check(event):
                        return _filtered_out(event, sub, policies)
                return None
        folded = sub.casefold()
        admitting = [policy for policy in self.policies if policy.admits(sub, folded)]
        if not admitting:
            names = ", ".join(policy.name for policy in self.policies)
            return f"subject {sub!r} is not allowed by any EventPolicy that applies here ({names})"
        if len(admitting) == 1:  # one loop, no generator per event
            check = admitting[0].filter
            for event in events:
                if not check(event):
                    return _filtered_out(event, sub, admitting)
            return None
        for event in events:
            if not any(policy.filter(event) for policy in admitting):
                return _filtered_out(event, sub, admitting)
        return None

    def _default_refusal(self, sub: str) -> str | None:
        mode = self.default_mode
        if mode == "allow-all":
            return None
        if mode == "deny-all":
            return "no EventPolicy applies here and the default authorization mode is deny-all"
        if sub.startswith(f"{SERVICE_ACCOUNT_PREFIX}{self.namespace}:"):
            return None
        return (
            f"no EventPolicy applies here and the default authorization mode is "
            f"allow-same-namespace: subject {sub!r} is not a service account of namespace "
            f"{self.namespace!r} ({SERVICE_ACCOUNT_PREFIX}{self.namespace}:...)"
        )


def _filtered_out(event: CloudEvent, sub: str, admitting: Sequence[CompiledPolicy]) -> str:
    names = ", ".join(policy.name for policy in admitting)
    return (
        f"event {event.attributes.get('id')!r} (type {event.attributes.get('type')!r}) does not "
        f"pass the filters of the EventPolicies that allow subject {sub!r} ({names})"
    )
