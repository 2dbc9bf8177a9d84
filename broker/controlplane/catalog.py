"""The kind catalog: which kinds cemesh serves, how each is admitted and reconciled.

A :class:`Catalog` is a value, built once from the explicit list of features
(:mod:`broker.server.features`) and handed to whatever needs the kinds: the REST API and its OpenAPI
document, admission, reconcile, the controller and the CLI. Nothing registers into it at import
time; a kind is served because a listed feature names it.

This module also owns :class:`ResourceType` (group, versions, plural, short names of one kind)
and the name rules every kind's ``metadata.name`` is checked against by default.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.core.errors import InvalidResource, NotFound


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


# --- names --------------------------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


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


def is_subdomain(text: str) -> bool:
    """Whether ``text`` is a DNS-1123 subdomain (label and annotation key prefixes)."""
    return bool(_DNS1123_SUBDOMAIN.fullmatch(text))


# --- admission and reconcile entries --------------------------------------------------------------

Admitter = Callable[[dict[str, Any], Mapping[str, Any] | None], None]


def _no_checks(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Kinds without rules of their own: the shared metadata checks are all they get."""


# The stored object at (API group, kind, namespace, name), or None: what a reference check reads.
Lookup = Callable[[str, str, str, str], Awaitable[Mapping[str, Any] | None]]
# Checks, when an object is created through the API, that the objects it names exist now;
# raises InvalidResource naming the field otherwise.
ReferenceCheck = Callable[[Mapping[str, Any], Lookup], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Admission:
    """How one kind is admitted.

    ``check`` validates and defaults the normalized object in place (``old`` is the stored object
    on update, else None); ``content`` lists the top-level fields carrying the desired state
    (``spec``, or a Secret's own fields); ``check_name`` checks ``metadata.name``.
    ``check_references`` (optional) runs on create through the API, after ``check``: for kinds
    that act once on what exists (a Replay), where a missing reference is the caller's mistake
    rather than something applied in the same manifest and not there yet.
    """

    check: Admitter = _no_checks
    content: tuple[str, ...] = ("spec",)
    check_name: Callable[[str, str], None] = check_subdomain_name
    check_references: ReferenceCheck | None = None


# A reconciler reads one object and the pass's world (broker.controlplane.world.World) and records
# what it decided in the world. The world is typed loosely here so that the catalog, which the
# resource model needs, does not depend on the reconcile machinery.
Reconciler = Callable[[Mapping[str, Any], Any], None]
# The keys (API group, kind, namespace, name) of the objects one object's reconcile reads.
References = Callable[[Mapping[str, Any]], tuple[tuple[str, str, str, str], ...]]
# How a referenced object of one kind turns into a URL (a Destination's ref), from the world.
AddressResolver = Callable[[Mapping[str, Any], Any], str]


@dataclass(frozen=True, slots=True)
class KindReconciler:
    """The reconciler of one kind. ``owns_children``: it adds owned objects to
    ``world.children``, which the controller keeps in the store (and deletes when unwanted).

    ``references`` (optional): the keys (API group, kind, namespace, name) of every object
    whose state reconciling an object of this kind reads. A kind that gives it lets a pass
    reuse an object's outcome from the previous pass when neither the object nor what it
    references changed (:mod:`broker.controlplane.incremental`); its reconciler must then
    record nothing but the object's own status, its runtime spec under its uid
    (``world.triggers`` or ``world.subscriptions``) and forward look-ups.
    """

    group: str
    kind: str
    reconcile: Reconciler
    owns_children: bool = False
    references: References | None = None


@dataclass(frozen=True)
class Catalog:
    """Every kind served, with its admission, reconciler (in phase order) and address resolver.

    Build one with :meth:`of`; lookups raise the API's errors (NotFound, InvalidResource).
    """

    kinds: tuple[ResourceType, ...] = ()
    admissions: Mapping[ResourceType, Admission] = field(default_factory=dict)
    # In phase order: every kind's reconciler sees the statuses of the kinds before it.
    reconcilers: tuple[KindReconciler, ...] = ()
    # (API group, kind) -> how a Destination's ref to such an object resolves to a URL.
    address_resolvers: Mapping[tuple[str, str], AddressResolver] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        kinds: Iterable[tuple[ResourceType, Admission]],
        reconcilers: Iterable[KindReconciler] = (),
        address_resolvers: Mapping[tuple[str, str], AddressResolver] | None = None,
    ) -> Catalog:
        """A catalog of ``kinds``; ValueError when two share a (group, kind)."""
        admissions: dict[ResourceType, Admission] = {}
        seen: set[tuple[str, str]] = set()
        for resource_type, admission in kinds:
            key = (resource_type.group, resource_type.kind)
            if key in seen:
                raise ValueError(f"{resource_type.kind} ({resource_type.group}) is listed twice")
            seen.add(key)
            admissions[resource_type] = admission
        return cls(
            kinds=tuple(admissions),
            admissions=admissions,
            reconcilers=tuple(reconcilers),
            address_resolvers=dict(address_resolvers or {}),
        )

    @property
    def owner_kinds(self) -> frozenset[str]:
        """Kinds whose owned objects (controller ownerReferences) the controller manages."""
        return frozenset(entry.kind for entry in self.reconcilers if entry.owns_children)

    def admission(self, resource_type: ResourceType) -> Admission:
        return self.admissions.get(resource_type) or Admission()

    def type_for_path(self, group: str, version: str, plural: str) -> ResourceType:
        """The kind served at ``/apis/{group}/{version}/.../{plural}`` (group "" for ``/api``)."""
        for resource_type in self.kinds:
            if (
                resource_type.group == group
                and resource_type.plural == plural
                and version in resource_type.versions
            ):
                return resource_type
        where = f"{group}/{version}" if group else version
        raise NotFound(f"the server does not serve {plural!r} in {where}")

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType:
        """The kind named by an object's ``apiVersion`` and ``kind`` (for ``cemesh apply``)."""
        group, _, version = api_version.rpartition("/")
        for resource_type in self.kinds:
            if resource_type.kind == kind and resource_type.group == group:
                if version not in resource_type.versions:
                    raise InvalidResource(
                        "apiVersion",
                        f"{kind} is served as {', '.join(resource_type.versions)} of "
                        f"{group or 'core'}, not {version!r}",
                    )
                return resource_type
        known = ", ".join(f"{t.kind} ({t.api_version})" for t in self.kinds)
        raise InvalidResource("kind", f"unknown kind {kind!r} in {api_version!r}; known: {known}")

    def type_for_name(self, name: str) -> ResourceType:
        """The kind a CLI user names: kind, plural, short name, or ``plural.group``; any case."""
        wanted = name.lower()
        for resource_type in self.kinds:
            names = {
                resource_type.kind.lower(),
                resource_type.plural,
                *resource_type.short_names,
                f"{resource_type.plural}.{resource_type.group}".rstrip("."),
            }
            if wanted in names:
                return resource_type
        known = ", ".join(t.plural for t in self.kinds)
        raise NotFound(f"unknown resource kind {name!r}; known kinds: {known}")

    def plural_of(self, group: str, kind: str) -> str | None:
        """The plural of (``group``, ``kind``) when served."""
        return next((t.plural for t in self.kinds if t.group == group and t.kind == kind), None)
