"""Pure rules for resource dicts as the store sees them: keys, names in messages, versions.

No I/O here. The repository (:mod:`broker.controlplane.store.repository`) applies these inside
transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from broker.core.errors import InvalidResource

# Top-level fields that are not the object's desired state: changing them never bumps
# ``metadata.generation``. Everything else (``spec``, or ``data``/``type`` of a Secret) does.
_NOT_CONTENT = frozenset({"apiVersion", "kind", "metadata", "status"})

DEFAULT_NAMESPACE = "default"
# (API group, kind) -> the plural the API serves it under, None when not served.
PluralOf = Callable[[str, str], str | None]


@dataclass(frozen=True, slots=True)
class Key:
    """What identifies a stored resource. The version part of ``apiVersion`` is not in it."""

    api_group: str
    kind: str
    namespace: str
    name: str

    def describe(self, plural_of: PluralOf | None = None) -> str:
        """``brokers.eventing.knative.dev "default"``, the way Kubernetes names an object."""
        return f'{qualified_plural(self.api_group, self.kind, plural_of)} "{self.name}"'


def api_group(api_version: str) -> str:
    """The group of an ``apiVersion``: the part before "/", "" for the core group ("v1")."""
    group, _, _ = api_version.rpartition("/")
    return group


def qualified_plural(group: str, kind: str, plural_of: PluralOf | None = None) -> str:
    """``brokers.eventing.knative.dev`` for (eventing.knative.dev, Broker); ``secrets`` for core.

    ``plural_of``: the served kinds' plurals (the catalog's); kinds it does not know (or without
    one) still get a readable name.
    """
    plural = (plural_of(group, kind) if plural_of is not None else None) or f"{kind.lower()}s"
    return f"{plural}.{group}" if group else plural


def json_copy(value: dict[str, Any], field: str = "") -> dict[str, Any]:
    """A deep copy of ``value`` as JSON gives it back; InvalidResource if it is not a JSON object.

    Copying on the way in means callers may keep mutating what they passed, and what is
    returned is exactly what a later read returns.
    """
    if not isinstance(value, dict):
        raise InvalidResource(field, "must be a JSON object")
    try:
        copy: dict[str, Any] = orjson.loads(orjson.dumps(value))
    except TypeError as exc:
        raise InvalidResource(field, f"is not representable as JSON: {exc}") from exc
    return copy


def normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """A JSON copy of a resource, with a ``metadata`` object."""
    copy = json_copy(obj)
    metadata = copy.get("metadata")
    if metadata is None:
        copy["metadata"] = metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidResource("metadata", "must be an object")
    return copy


def key_of(obj: dict[str, Any]) -> Key:
    """The key of a (normalized) resource; fills in the default namespace if none is given."""
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    metadata = obj["metadata"]
    if not isinstance(api_version, str) or not api_version:
        raise InvalidResource("apiVersion", "is required")
    if not isinstance(kind, str) or not kind:
        raise InvalidResource("kind", "is required")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidResource("metadata.name", "is required")
    namespace = metadata.setdefault("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise InvalidResource("metadata.namespace", "must be a non-empty string")
    return Key(api_group(api_version), kind, namespace, name)


def content(obj: dict[str, Any]) -> dict[str, Any]:
    """The desired-state part of an object: what a generation counts changes of."""
    return {k: v for k, v in obj.items() if k not in _NOT_CONTENT}


def now_rfc3339() -> str:
    """The current time in UTC, RFC 3339 with whole seconds, as Kubernetes writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def prepare_new(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    """The object as first stored: fresh uid, generation 1, the given revision, a timestamp."""
    metadata = obj["metadata"]
    metadata["uid"] = str(uuid.uuid4())
    metadata["generation"] = 1
    metadata["resourceVersion"] = str(revision)
    metadata["creationTimestamp"] = now_rfc3339()
    if not isinstance(obj.get("status"), dict):
        obj["status"] = {}
    return obj


def prepare_replacement(
    stored: dict[str, Any], incoming: dict[str, Any], revision: int
) -> dict[str, Any]:
    """``incoming`` as it replaces ``stored``: server-owned fields and status kept from stored."""
    old_meta = stored["metadata"]
    metadata = incoming["metadata"]
    for field in ("uid", "creationTimestamp"):
        metadata[field] = old_meta[field]
    generation = int(old_meta.get("generation", 1))
    metadata["generation"] = generation + 1 if content(incoming) != content(stored) else generation
    metadata["resourceVersion"] = str(revision)
    incoming["status"] = stored.get("status", {})
    return incoming


def is_stale(incoming: dict[str, Any], stored: dict[str, Any]) -> bool:
    """True when the caller named a resourceVersion and it is not the stored one."""
    wanted = incoming["metadata"].get("resourceVersion")
    return wanted not in (None, "") and str(wanted) != stored["metadata"]["resourceVersion"]
