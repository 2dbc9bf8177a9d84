"""Kubernetes-style REST for cemesh resources.

    /apis/{group}/{version}/namespaces/{namespace}/{plural}[/{name}]   (Knative kinds)
    /apis/{group}/{version}/{plural}                                  (list, all namespaces)
    /api/v1/namespaces/{namespace}/secrets[/{name}]                   (core v1 Secret)

Create (POST), get, list (with ``labelSelector``), replace (PUT), patch (PATCH with a JSON
merge patch, ``application/merge-patch+json``) and delete. Every write is
admitted (validated and defaulted) by :func:`broker.controlplane.resources.admit` and followed by a
controller sync, so that when the call returns the data plane already serves the change and the
returned object carries its status.

Every call is authorized (:func:`broker.auth.rbac.authorize`) for the principal the
:class:`~broker.controlplane.api.guard.ManagementGuard` authenticated: 403 names the verb, resource
and namespace. A write of an object that runs a local process (:mod:`broker.auth.processes`) also
needs the ``processes`` permission, and is refused for everyone when processes are switched
off. Every written object is stamped with who applied it (``cemesh.dev/applied-by``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from broker.auth.principal import Principal
from broker.auth.processes import APPLIED_BY, process_command
from broker.auth.rbac import PROCESSES, Resource, authorize
from broker.auth.setup import Access
from broker.controlplane.admission import admit, metadata_of
from broker.controlplane.api.bodies import MERGE_PATCH, media_type, merge_patch, parse_object
from broker.controlplane.api.guard import principal_of
from broker.controlplane.catalog import Catalog, ResourceType
from broker.controlplane.controller import Controller
from broker.controlplane.outbound import OutboundGuard
from broker.controlplane.resource_store import ResourceStore
from broker.core.errors import Forbidden, InvalidResource, NotFound, UnsupportedMediaType

log = logging.getLogger(__name__)


def parse_label_selector(selector: str | None) -> list[tuple[str, str, str | None]]:
    """``a=b,c!=d,e`` -> [(key, op, value)] with op in ``=``, ``!=``, ``exists``."""
    terms: list[tuple[str, str, str | None]] = []
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.split("=", 1)
            terms.append((key.strip(), "=", value.strip().lstrip("=")))
        else:
            terms.append((term, "exists", None))
    return terms


def selector_matches(labels: dict[str, str], terms: list[tuple[str, str, str | None]]) -> bool:
    for key, op, value in terms:
        if op == "exists" and key not in labels:
            return False
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
    return True


def _group(group: str | None) -> str:
    return group or ""


class ResourceApi:
    """The handlers, bound to one store and one controller."""

    def __init__(
        self,
        store: ResourceStore,
        controller: Controller,
        access: Access,
        catalog: Catalog,
        guard: OutboundGuard | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog  # the kinds served (broker.server.features)
        self.controller = controller
        self.access = access
        self.guard = guard  # destinations of every write are checked against it

    async def _body(self, request: Request) -> dict[str, Any]:
        """The request's object, its metadata checked before any handler reads a field of it.

        Size (413) and media type (415) were checked by the guard
        (broker/controlplane/api/guard.py).
        """
        body = parse_object(await request.body(), request.headers.get("content-type"))
        metadata = body["metadata"] = metadata_of(body)
        version = metadata.get("resourceVersion")
        if isinstance(version, bool) or not isinstance(version, str | int | None):
            raise InvalidResource(
                "metadata.resourceVersion", f"must be a string, got {type(version).__name__}"
            )
        return body

    def _authorize(
        self, request: Request, verb: str, rtype: ResourceType, namespace: str | None
    ) -> Principal:
        """The caller, when it may ``verb`` ``rtype`` in ``namespace``; Forbidden (403) else."""
        principal = principal_of(request)
        resource = Resource(rtype.group, rtype.plural)
        decision = authorize(principal, verb, resource, namespace, self.access.bindings)
        if not decision.allowed:
            log.info(
                "forbidden",
                extra={"subject": principal.name, "verb": verb, "resource": rtype.plural},
            )
            raise Forbidden(decision.reason)
        return principal

    def _admit_write(
        self, principal: Principal, verb: str, obj: dict[str, Any], namespace: str
    ) -> None:
        """Process rules for an admitted ``obj``, then stamp it with its applier."""
        command = process_command(obj, self.access.invoker_backend)
        if command is not None:
            what = f"{obj['kind']} {obj['metadata']['name']!r} runs {command!r} as a local process"
            if not self.access.allow_processes:
                raise Forbidden(
                    f"{what}, and starting processes is switched off on this cemesh "
                    "(CEMESH_ALLOW_PROCESSES=false)"
                )
            decision = authorize(principal, verb, PROCESSES, namespace, self.access.bindings)
            if not decision.allowed:
                raise Forbidden(f"{decision.reason}: {what}")
        obj["metadata"].setdefault("annotations", {})[APPLIED_BY] = principal.name

    async def list(
        self,
        request: Request,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: str | None,
    ) -> dict[str, Any]:
        self._authorize(request, "list", rtype, namespace)
        terms = parse_label_selector(label_selector)
        items = [
            obj
            for obj in await self.store.list(rtype.group, rtype.kind, namespace)
            if selector_matches(obj["metadata"].get("labels") or {}, terms)
        ]
        return {
            "apiVersion": rtype.api_version,
            "kind": f"{rtype.kind}List",
            "metadata": {"resourceVersion": str(await self.store.revision())},
            "items": items,
        }

    async def create(self, rtype: ResourceType, namespace: str, request: Request) -> JSONResponse:
        principal = self._authorize(request, "create", rtype, namespace)
        body = await self._body(request)
        self._check_kind(rtype, body)
        obj = admit(body, namespace=namespace, guard=self.guard, catalog=self.catalog)
        self._admit_write(principal, "create", obj, namespace)
        check_references = self.catalog.admission(rtype).check_references
        if check_references is not None:
            await check_references(obj, self._lookup)
        with self.controller.writing() as ticket:
            created = await self.store.create(obj)
        await self.controller.sync(ticket)
        meta = created["metadata"]
        try:
            fresh = await self.store.get(rtype.group, rtype.kind, meta["namespace"], meta["name"])
        except NotFound:  # created, then collected by the sync (a Revision without its Service)
            fresh = created
        return JSONResponse(fresh, status_code=201)

    async def get(
        self, request: Request, rtype: ResourceType, namespace: str, name: str
    ) -> dict[str, Any]:
        self._authorize(request, "get", rtype, namespace)
        return await self.store.get(rtype.group, rtype.kind, namespace, name)

    async def replace(
        self, rtype: ResourceType, namespace: str, name: str, request: Request
    ) -> dict[str, Any]:
        principal = self._authorize(request, "update", rtype, namespace)
        body = await self._body(request)
        self._check_kind(rtype, body)
        metadata = body["metadata"]
        body_name = metadata.get("name")
        if body_name is not None and body_name != name:
            raise InvalidResource(
                "metadata.name",
                f"the name in the body ({body_name!r}) differs from the URL ({name!r})",
            )
        metadata["name"] = name
        version = metadata.get("resourceVersion")
        old = await self.store.get(rtype.group, rtype.kind, namespace, name)
        obj = admit(body, namespace=namespace, old=old, guard=self.guard, catalog=self.catalog)
        self._admit_write(principal, "update", obj, namespace)
        version = (body.get("metadata") or {}).get("resourceVersion")
        if version:
            obj["metadata"]["resourceVersion"] = str(version)
        with self.controller.writing() as ticket:
            await self.store.replace(obj)
        await self.controller.sync(ticket)
        return await self.store.get(rtype.group, rtype.kind, namespace, name)

    async def patch(
        self, rtype: ResourceType, namespace: str, name: str, request: Request
    ) -> dict[str, Any]:
        """Apply a JSON merge patch to the stored object, then admit it as a replacement."""
        principal = self._authorize(request, "patch", rtype, namespace)
        if media_type(request.headers.get("content-type")) != MERGE_PATCH:
            raise UnsupportedMediaType(f"PATCH takes {MERGE_PATCH} (a JSON merge patch)")
        patch = await self._body(request)
        old = await self.store.get(rtype.group, rtype.kind, namespace, name)
        patched = merge_patch({k: v for k, v in old.items() if k != "status"}, patch)
        self._check_kind(rtype, patched)
        metadata = patched.get("metadata") or {}
        if metadata.get("name") != name:
            raise InvalidResource("metadata.name", f"cannot change from {name!r}")
        obj = admit(patched, namespace=namespace, old=old, guard=self.guard, catalog=self.catalog)
        self._admit_write(principal, "patch", obj, namespace)
        version = (patch.get("metadata") or {}).get("resourceVersion")
        obj["metadata"]["resourceVersion"] = version or old["metadata"].get("resourceVersion")
        with self.controller.writing() as ticket:
            await self.store.replace(obj)
        await self.controller.sync(ticket)
        return await self.store.get(rtype.group, rtype.kind, namespace, name)

    async def delete(
        self, request: Request, rtype: ResourceType, namespace: str, name: str
    ) -> dict[str, Any]:
        self._authorize(request, "delete", rtype, namespace)
        with self.controller.writing() as ticket:
            deleted = await self.store.delete(rtype.group, rtype.kind, namespace, name)
        # A deleted Trigger's or Subscription's consumer group goes once the sync below has
        # stopped its consumer (a failure there is logged, not this request's).
        self.controller.deleted(deleted)
        await self.controller.sync(ticket)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": rtype.group,
                "kind": rtype.plural,
                "uid": deleted["metadata"].get("uid"),
            },
        }

    async def _lookup(
        self, api_group: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        """The stored object, or None (for reference checks)."""
        try:
            return await self.store.get(api_group, kind, namespace, name)
        except NotFound:
            return None

    @staticmethod
    def _check_kind(rtype: ResourceType, body: dict[str, Any]) -> None:
        kind = body.get("kind")
        if kind is not None and kind != rtype.kind:
            raise InvalidResource(
                "kind", f"this endpoint serves {rtype.kind}, the body says {kind!r}"
            )
        body.setdefault("kind", rtype.kind)
        body.setdefault("apiVersion", rtype.api_version)


def install_resource_routes(app: FastAPI, api: ResourceApi) -> None:
    """Register the Kubernetes-style paths for every kind in the resource table."""
    router = APIRouter(
        include_in_schema=False
    )  # broker/controlplane/api/openapi.py describes each kind
    _register(router, api, "/apis/{group}/{version}", core=False)
    _register(router, api, "/api/{version}", core=True)  # the core group: v1 Secret
    app.include_router(router)


def _register(router: APIRouter, api: ResourceApi, prefix: str, *, core: bool) -> None:
    """One set of handlers under ``prefix``; ``core`` paths carry no group segment."""

    def rtype(version: str, plural: str, group: str | None) -> ResourceType:
        return api.catalog.type_for_path("" if core else _group(group), version, plural)

    @router.get(prefix + "/namespaces/{namespace}/{plural}")
    async def list_namespaced(
        version: str,
        namespace: str,
        plural: str,
        request: Request,
        group: str | None = None,
        labelSelector: str | None = None,  # noqa: N803 - Kubernetes query parameter name
    ) -> dict[str, Any]:
        return await api.list(request, rtype(version, plural, group), namespace, labelSelector)

    @router.get(prefix + "/{plural}")
    async def list_all(
        version: str,
        plural: str,
        request: Request,
        group: str | None = None,
        labelSelector: str | None = None,  # noqa: N803
    ) -> dict[str, Any]:
        return await api.list(request, rtype(version, plural, group), None, labelSelector)

    @router.post(prefix + "/namespaces/{namespace}/{plural}", status_code=201)
    async def create(
        version: str, namespace: str, plural: str, request: Request, group: str | None = None
    ) -> JSONResponse:
        return await api.create(rtype(version, plural, group), namespace, request)

    @router.get(prefix + "/namespaces/{namespace}/{plural}/{name}")
    async def get(
        version: str,
        namespace: str,
        plural: str,
        name: str,
        request: Request,
        group: str | None = None,
    ) -> dict[str, Any]:
        return await api.get(request, rtype(version, plural, group), namespace, name)

    @router.put(prefix + "/namespaces/{namespace}/{plural}/{name}")
    async def replace(
        version: str,
        namespace: str,
        plural: str,
        name: str,
        request: Request,
        group: str | None = None,
    ) -> dict[str, Any]:
        return await api.replace(rtype(version, plural, group), namespace, name, request)

    @router.patch(prefix + "/namespaces/{namespace}/{plural}/{name}")
    async def patch(
        version: str,
        namespace: str,
        plural: str,
        name: str,
        request: Request,
        group: str | None = None,
    ) -> dict[str, Any]:
        return await api.patch(rtype(version, plural, group), namespace, name, request)

    @router.delete(prefix + "/namespaces/{namespace}/{plural}/{name}")
    async def delete(
        version: str,
        namespace: str,
        plural: str,
        name: str,
        request: Request,
        group: str | None = None,
    ) -> dict[str, Any]:
        return await api.delete(request, rtype(version, plural, group), namespace, name)
