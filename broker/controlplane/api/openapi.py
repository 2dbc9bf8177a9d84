"""The OpenAPI description of the REST API: a path per served kind, its bodies and its answers.

The REST routes are generic (``/apis/{group}/{version}/namespaces/{namespace}/{plural}``, one
handler for every kind, reading the body itself), so FastAPI alone would describe neither the
kinds nor the request bodies. :func:`install_openapi` replaces the generated document with one
built from the catalog of kinds the app serves (:class:`broker.controlplane.catalog.Catalog`, from
the feature list in :mod:`broker.server.features`):

- for each kind, its collection path (GET list, POST create) and item path (GET, PUT, DELETE);
- request bodies: the Kubernetes object shape (``apiVersion`` and ``kind`` of that kind,
  ``metadata`` with ``name``, labels and annotations, ``spec`` or a Secret's/ConfigMap's data);
  what a kind accepts inside ``spec`` is admission's to say (a 422 naming the field);
- every answer: the object (200, 201), a ``v1 Status`` (delete), and the 4xx each operation can
  give as ``Status`` bodies (400, 401, 403, 404, 409, 413, 415, 421, 422), plus 503 when the
  store is down.

Served at ``/openapi.json`` (and ``/docs``); schemathesis reads it (see the README, "Errors").
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from broker.controlplane.catalog import Catalog, ResourceType

# Kubernetes reads null as absent; so does admission (and the store answers with nulls kept).
_STRINGS = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
_FLAG = {"type": ["boolean", "null"]}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Kubernetes v1 Status: why a request failed (or that a delete succeeded).",
    "required": ["kind", "apiVersion", "status"],
    "properties": {
        "kind": {"type": "string", "enum": ["Status"]},
        "apiVersion": {"type": "string", "enum": ["v1"]},
        "metadata": {"type": "object"},
        "status": {"type": "string", "enum": ["Success", "Failure"]},
        "message": {"type": "string"},
        "reason": {"type": "string"},
        "code": {"type": "integer"},
        "details": {"type": "object"},
    },
}

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "description": "a DNS-1123 subdomain (some kinds allow only a label: no dots, <= 63)",
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
            "maxLength": 253,
        },
        "namespace": {
            "type": ["string", "null"],
            "description": "empty, or the namespace of the path",
            "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        },
        "labels": _STRINGS,
        "annotations": _STRINGS,
        "resourceVersion": {
            "type": ["string", "integer", "null"],
            "description": "for optimistic concurrency (replace); ignored by create",
        },
    },
}

# What each 4xx means for the REST API (README "Errors" says the same for users).
ERROR_ANSWERS: dict[int, str] = {
    400: "the body is not JSON, or a query parameter is malformed",
    401: "no bearer token, or one that does not verify",
    403: "the token's subject may not do this here (names verb, resource, namespace)",
    404: "no such kind at this path, or no such object",
    409: "the object exists already (create), or resourceVersion is stale (replace)",
    413: "the body is larger than CEMESH_MAX_API_BYTES",
    415: "the body is not JSON, YAML or (PATCH) a JSON merge patch (Content-Type)",
    421: "the Host is not one this cemesh answers to",
    422: "the object is invalid: the message and details.causes name the field",
    503: "the store is unavailable; try again",
}

_READ_ERRORS = (400, 401, 403, 404, 421, 503)
_WRITE_ERRORS = tuple(ERROR_ANSWERS)


def object_schema(resource_type: ResourceType, *, replace: bool = False) -> dict[str, Any]:
    """The Kubernetes object shape of ``resource_type`` (what POST takes; ``replace``: PUT,
    where the name may be left out or null: the path names the object)."""
    metadata = METADATA_SCHEMA
    if replace:
        name = {**METADATA_SCHEMA["properties"]["name"], "type": ["string", "null"]}
        metadata = {
            "type": ["object", "null"],
            "properties": {**METADATA_SCHEMA["properties"], "name": name},
        }
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "enum": [resource_type.api_version]},
        "kind": {"type": "string", "enum": [resource_type.kind]},
        "metadata": metadata,
    }
    if resource_type.kind == "Secret":
        properties |= {"type": {"type": ["string", "null"]}, "data": _STRINGS}
        properties |= {"stringData": _STRINGS, "immutable": _FLAG}
    elif resource_type.kind == "ConfigMap":
        properties |= {"data": _STRINGS, "binaryData": _STRINGS, "immutable": _FLAG}
    else:
        properties["spec"] = {
            "type": ["object", "null"],
            "description": f"the {resource_type.kind} spec",
        }
    return {
        "type": "object",
        "title": resource_type.kind,
        "required": [] if replace else ["metadata"],
        "properties": properties,
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(success: dict[int, tuple[str, dict[str, Any]]], errors: tuple[int, ...]) -> Any:
    answers: dict[str, Any] = {
        str(code): {"description": text, "content": _json(schema)}
        for code, (text, schema) in success.items()
    }
    for code in errors:
        answers[str(code)] = {"description": ERROR_ANSWERS[code], "content": _json(STATUS_SCHEMA)}
    return answers


def _parameter(name: str, where: str = "path", description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": {"type": "string"},
        "description": description,
    }


def kind_paths(resource_type: ResourceType) -> dict[str, Any]:
    """The OpenAPI path items of one kind: its collection and its objects."""
    kind = resource_type.kind
    obj = object_schema(resource_type)
    listing = {
        "type": "object",
        "required": ["items"],
        "properties": {"kind": {"type": "string"}, "items": {"type": "array", "items": obj}},
    }
    body = {"required": True, "content": _json(obj)}
    collection = resource_type.collection_path("{namespace}")
    namespace = _parameter("namespace", description="the namespace (a DNS-1123 label)")
    name = _parameter("name", description=f"the {kind}'s name")
    selector = _parameter("labelSelector", "query", "a=b,c!=d,e: only objects whose labels match")
    tag = [f"{resource_type.group or 'core'}/{resource_type.version}"]
    return {
        collection: {
            "parameters": [namespace],
            "get": {
                "operationId": f"list{kind}",
                "summary": f"List {resource_type.plural}",
                "tags": tag,
                "parameters": [selector],
                "responses": _responses({200: (f"the {kind}s", listing)}, _READ_ERRORS),
            },
            "post": {
                "operationId": f"create{kind}",
                "summary": f"Create a {kind}",
                "tags": tag,
                "requestBody": body,
                "responses": _responses({201: (f"the {kind} as stored", obj)}, _WRITE_ERRORS),
            },
        },
        f"{collection}/{{name}}": {
            "parameters": [namespace, name],
            "get": {
                "operationId": f"read{kind}",
                "summary": f"Read a {kind}",
                "tags": tag,
                "responses": _responses({200: (f"the {kind}", obj)}, _READ_ERRORS),
            },
            "put": {
                "operationId": f"replace{kind}",
                "summary": f"Replace a {kind}",
                "tags": tag,
                "requestBody": {
                    "required": True,
                    "content": _json(object_schema(resource_type, replace=True)),
                },
                "responses": _responses({200: (f"the {kind} as stored", obj)}, _WRITE_ERRORS),
            },
            "patch": {
                "operationId": f"patch{kind}",
                "summary": f"Change a {kind} with a JSON merge patch (RFC 7386)",
                "tags": tag,
                "requestBody": {
                    "required": True,
                    "content": {"application/merge-patch+json": {"schema": {"type": "object"}}},
                },
                "responses": _responses({200: (f"the {kind} as stored", obj)}, _WRITE_ERRORS),
            },
            "delete": {
                "operationId": f"delete{kind}",
                "summary": f"Delete a {kind}",
                "tags": tag,
                "responses": _responses({200: ("deleted", STATUS_SCHEMA)}, _READ_ERRORS),
            },
        },
    }


def build_openapi(app: FastAPI, catalog: Catalog) -> dict[str, Any]:
    """FastAPI's document for the routes it describes, plus a path item set per served kind."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description="The cemesh management API: Knative resources over Kubernetes-style REST.",
        routes=app.routes,
    )
    paths = document.setdefault("paths", {})
    for resource_type in catalog.kinds:
        paths.update(kind_paths(resource_type))
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components["Status"] = STATUS_SCHEMA
    return document


def install_openapi(app: FastAPI, catalog: Catalog) -> None:
    """Serve :func:`build_openapi`'s document as the app's OpenAPI (built once, when asked)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, catalog)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
