"""``GET /apis/cemesh.dev/v1alpha1/namespaces/{ns}/topology``: the mesh of a namespace as a graph.

What the web console draws. The answer is :func:`broker.controlplane.topology.topology` of the
namespace's objects, for the kinds the caller may ``list`` there (RBAC of
:mod:`broker.auth.rbac`); kinds it may not list are left out and named in ``hidden``, and a caller
who may list none of them gets 403. Secrets, ConfigMaps, EventPolicies and EventTypes are not
drawn: nothing flows through them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from broker.auth.rbac import Resource, authorize
from broker.auth.setup import Access
from broker.controlplane.api.guard import principal_of
from broker.controlplane.catalog import Catalog, ResourceType
from broker.controlplane.resource_store import ResourceStore
from broker.controlplane.topology import topology
from broker.core.errors import Forbidden

PATH = "/apis/cemesh.dev/v1alpha1/namespaces/{namespace}/topology"
NOT_DRAWN = frozenset({"EventPolicy", "EventType"})


def drawn_kinds(catalog: Catalog) -> list[ResourceType]:
    """The kinds a topology shows: every served kind but the core group's and NOT_DRAWN."""
    return [t for t in catalog.kinds if t.group and t.kind not in NOT_DRAWN]


def install_topology_routes(
    app: FastAPI, *, store: ResourceStore, catalog: Catalog, access: Access
) -> None:
    """Serve :data:`PATH` (before the resource routes, whose ``{plural}`` would match it)."""

    @app.get(PATH, include_in_schema=False)
    async def namespace_topology(request: Request, namespace: str) -> dict[str, Any]:
        principal = principal_of(request)
        objects: list[tuple[ResourceType, dict[str, Any]]] = []
        hidden: list[str] = []
        refusal = ""
        for rtype in drawn_kinds(catalog):
            resource = Resource(rtype.group, rtype.plural)
            decision = authorize(principal, "list", resource, namespace, access.bindings)
            if not decision.allowed:
                hidden.append(rtype.kind)
                refusal = refusal or decision.reason
                continue
            for obj in await store.list(rtype.group, rtype.kind, namespace):
                objects.append((rtype, obj))
        if len(hidden) == len(drawn_kinds(catalog)):
            raise Forbidden(refusal)
        return {"namespace": namespace, **topology(objects), "hidden": hidden}
