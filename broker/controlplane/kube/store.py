"""The Kubernetes API's operations: Knative objects read and written on the API server.

What this module owns: the Kubernetes-shaped requests the control plane needs on custom
resources (:mod:`broker.controlplane.kube.resource_store` builds the storage seam on them),
with the API server's answers translated into :mod:`broker.core.errors` at this boundary
(404 -> NotFound, 409 -> Conflict, 422/400 -> InvalidResource, anything else -> StoreError,
unreachable -> StoreError):

- :meth:`KubeStore.list` (with the list's resourceVersion) and :meth:`KubeStore.watch` (a
  :class:`~broker.controlplane.kube.watch.CollectionWatch`) over all namespaces or a configured set;
- :meth:`KubeStore.get`, :meth:`KubeStore.create`, :meth:`KubeStore.replace`,
  :meth:`KubeStore.delete`;
- :meth:`KubeStore.update_status`: a merge patch on the ``status`` subresource, guarded by the
  resourceVersion it was computed from; on 409 the object is read again and the patch retried
  while its generation is unchanged (a spec change instead means the status is stale: the
  caller reconciles again, from the watch). A status write never moves ``metadata.generation``;
- :meth:`KubeStore.add_finalizer` / :meth:`KubeStore.remove_finalizer`: merge patches of
  ``metadata.finalizers`` guarded by resourceVersion, retried on 409;
- :meth:`KubeStore.create_event`: a core v1 Event (:mod:`broker.controlplane.kube.events`);
- Leases (``coordination.k8s.io/v1``): :meth:`KubeStore.get_lease`, :meth:`create_lease`,
  :meth:`replace_lease` (409 when someone else renewed first), used by
  :mod:`broker.controlplane.kube.lease`.

Objects are plain dicts, as the API serves them (``apiVersion``/``kind`` filled in on list
items), so the pure reconcile reads them as it reads the SQL store's.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from broker.controlplane.kube.client import MERGE_PATCH, ApiUnreachable, KubeConnection
from broker.controlplane.kube.watch import (
    Backoff,
    CollectionWatch,
    OnChange,
    OnProblem,
    list_collection,
)
from broker.core.errors import CemeshError, Conflict, InvalidResource, NotFound, StoreError

CONFLICT_RETRIES = 5


def guess_plural(kind: str) -> str:
    """The resource name Kubernetes' ``UnsafeGuessKindToResource`` guesses from a kind."""
    singular = kind.lower()
    if not singular or singular.endswith("endpoints"):
        return singular
    if singular.endswith("s"):
        return singular + "es"
    if singular.endswith("y"):
        return singular[:-1] + "ies"
    return singular + "s"


@dataclass(frozen=True, slots=True)
class KubeKind:
    """A namespaced resource type on the API server."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str = ""
    ) -> str:
        """The collection (all namespaces when ``namespace`` is None), or one object's path."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            root += f"/namespaces/{quote(namespace, safe='')}"
        root += f"/{self.plural}"
        if name is not None:
            root += f"/{quote(name, safe='')}"
            if subresource:
                root += f"/{subresource}"
        return root


def kube_kind(api_version: str, kind: str) -> KubeKind:
    """The resource of ``kind`` in ``api_version``, its plural guessed from the kind."""
    group, _, version = api_version.rpartition("/")
    return KubeKind(group, version, guess_plural(kind), kind)


BROKERS = KubeKind("eventing.knative.dev", "v1", "brokers", "Broker")
TRIGGERS = KubeKind("eventing.knative.dev", "v1", "triggers", "Trigger")
LEASES = KubeKind("coordination.k8s.io", "v1", "leases", "Lease")
CONFIG_MAPS = KubeKind("", "v1", "configmaps", "ConfigMap")
SERVICES = KubeKind("", "v1", "services", "Service")
EVENTS = KubeKind("", "v1", "events", "Event")


def _message(document: Any) -> str:
    if isinstance(document, dict):
        return str(document.get("message") or document)[:300]
    return str(document)[:300]


def translate(status: int, document: Any, what: str) -> None:
    """Raise the project's error for an API answer that is not a success."""
    if 200 <= status < 300:
        return
    message = f"{what}: {_message(document)}"
    if status == 404:
        raise NotFound(message)
    if status == 409:
        raise Conflict(message)
    if status in (400, 422):
        raise InvalidResource(what, _message(document))
    raise StoreError(f"{message} (HTTP {status})")


def _typed(obj: dict[str, Any], kind: KubeKind) -> dict[str, Any]:
    obj.setdefault("apiVersion", kind.api_version)
    obj.setdefault("kind", kind.kind)
    return obj


class KubeStore:
    """Knative resources on one API server (module docstring).

    ``namespaces``: the namespaces served (None: all). ``connection`` is owned by the caller.
    """

    def __init__(
        self, connection: KubeConnection, *, namespaces: Sequence[str] | None = None
    ) -> None:
        self.connection = connection
        self.namespaces = None if namespaces is None else tuple(namespaces)

    def _scopes(self) -> tuple[str | None, ...]:
        return (None,) if self.namespaces is None else self.namespaces

    async def _call(
        self, method: str, path: str, what: str, body: Any = None, content_type: str = ""
    ) -> dict[str, Any]:
        try:
            status, document = await self.connection.request(
                method, path, body=body, content_type=content_type or "application/json"
            )
        except ApiUnreachable as exc:
            raise StoreError(exc.message) from exc
        translate(status, document, what)
        return document if isinstance(document, dict) else {}

    async def list(
        self, kind: KubeKind, *, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Every object of ``kind`` in ``namespace``, else in the served namespaces."""
        items: list[dict[str, Any]] = []
        for scope in self._scopes() if namespace is None else (namespace,):
            try:
                found, _ = await list_collection(self.connection, kind.path(scope), label_selector)
            except CemeshError:
                raise
            except Exception as exc:  # WatchFailed / Expired from the shared lister
                raise StoreError(f"LIST {kind.path(scope)}: {exc}") from exc
            items.extend(found)
        return items

    def watch(
        self,
        kind: KubeKind,
        on_change: OnChange,
        *,
        on_problem: OnProblem | None = None,
        backoff: Backoff | None = None,
        progress_bound: float = 150.0,
    ) -> builtins.list[CollectionWatch]:
        """One watch per served namespace (or one of all); the caller runs them."""
        return [
            CollectionWatch(
                self.connection,
                kind.path(namespace),
                on_change=on_change,
                on_problem=on_problem,
                backoff=backoff,
                progress_bound=progress_bound,
            )
            for namespace in self._scopes()
        ]

    async def get(self, kind: KubeKind, namespace: str, name: str) -> dict[str, Any]:
        """One object; NotFound when it does not exist."""
        obj = await self._call("GET", kind.path(namespace, name), f"{kind.kind} {namespace}/{name}")
        return _typed(obj, kind)

    async def create(self, kind: KubeKind, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` (POST to its namespace's collection); the object as created."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"].get("name")
        created = await self._call(
            "POST", kind.path(namespace), f"{kind.kind} {namespace}/{name}", obj
        )
        return _typed(created, kind)

    async def replace(self, kind: KubeKind, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace ``obj`` (PUT; the API server keeps the status, a subresource); Conflict when
        its ``metadata.resourceVersion`` is stale."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        replaced = await self._call(
            "PUT", kind.path(namespace, name), f"{kind.kind} {namespace}/{name}", obj
        )
        return _typed(replaced, kind)

    async def delete(self, kind: KubeKind, namespace: str, name: str) -> dict[str, Any]:
        """Delete one object (with finalizers it is only marked); the API server's answer."""
        return await self._call(
            "DELETE", kind.path(namespace, name), f"{kind.kind} {namespace}/{name}"
        )

    async def update_status(
        self, kind: KubeKind, obj: dict[str, Any], status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Write ``status`` of ``obj`` (as read: its resourceVersion and generation guard it).

        Returns the object as written, or None when its spec changed meanwhile (a new
        generation: the status computed from the old one is not written; the watch brings the
        new spec to reconcile). 409s from other writers are retried on a fresh read.
        """
        metadata = obj["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        what = f"status of {kind.kind} {namespace}/{name}"
        current = obj
        for _ in range(CONFLICT_RETRIES):
            patch = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "status": status,
            }
            try:
                return await self._call(
                    "PATCH", kind.path(namespace, name, "status"), what, patch, MERGE_PATCH
                )
            except Conflict:
                current = await self.get(kind, namespace, name)
                if current["metadata"].get("generation") != metadata.get("generation"):
                    return None
                if current.get("status") == status:
                    return current  # written already (by us, seen late by the watch): no-op
        raise Conflict(f"{what}: still conflicting after {CONFLICT_RETRIES} attempts")

    async def add_finalizer(
        self, kind: KubeKind, namespace: str, name: str, finalizer: str
    ) -> dict[str, Any]:
        """Add ``finalizer`` to the object (no-op when present); the object after."""
        return await self._edit_finalizers(kind, namespace, name, finalizer, present=True)

    async def remove_finalizer(
        self, kind: KubeKind, namespace: str, name: str, finalizer: str
    ) -> dict[str, Any] | None:
        """Remove ``finalizer``; the object after (None when that deleted it, or it is gone)."""
        try:
            return await self._edit_finalizers(kind, namespace, name, finalizer, present=False)
        except NotFound:
            return None

    async def _edit_finalizers(
        self, kind: KubeKind, namespace: str, name: str, finalizer: str, *, present: bool
    ) -> dict[str, Any]:
        what = f"finalizers of {kind.kind} {namespace}/{name}"
        for _ in range(CONFLICT_RETRIES):
            current = await self.get(kind, namespace, name)
            finalizers = list(current["metadata"].get("finalizers") or [])
            if (finalizer in finalizers) == present:
                return current
            if present:
                finalizers.append(finalizer)
            else:
                finalizers.remove(finalizer)
            patch = {
                "metadata": {
                    "resourceVersion": current["metadata"]["resourceVersion"],
                    "finalizers": finalizers,
                }
            }
            try:
                return await self._call(
                    "PATCH", kind.path(namespace, name), what, patch, MERGE_PATCH
                )
            except Conflict:
                continue
        raise Conflict(f"{what}: still conflicting after {CONFLICT_RETRIES} attempts")

    async def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Create a core v1 Event (its namespace from its metadata); the Event as created."""
        namespace = str(event["metadata"]["namespace"])
        involved = event.get("involvedObject") or {}
        what = f"Event about {involved.get('kind')} {namespace}/{involved.get('name')}"
        return await self._call("POST", EVENTS.path(namespace), what, event)

    # -- Leases ------------------------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.get(LEASES, namespace, name)
        except NotFound:
            return None

    async def create_lease(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease (Conflict when it exists already)."""
        body = {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        return await self._call("POST", LEASES.path(namespace), f"Lease {namespace}/{name}", body)

    async def replace_lease(self, lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """Replace the Lease's spec, guarded by its resourceVersion (Conflict when stale)."""
        metadata = lease["metadata"]
        body = {
            "apiVersion": LEASES.api_version,
            "kind": LEASES.kind,
            "metadata": {
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "resourceVersion": metadata["resourceVersion"],
            },
            "spec": spec,
        }
        namespace, name = metadata["namespace"], metadata["name"]
        return await self._call(
            "PUT", LEASES.path(namespace, name), f"Lease {namespace}/{name}", body
        )
