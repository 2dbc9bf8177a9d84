"""Statuses and runtime specs of sources and EventTypes. Pure, like
:mod:`broker.controlplane.reconcile`.

Every source kind is reconciled the same way: ``spec.sink`` resolves to ``status.sinkUri``
through the one rule every kind shares (:meth:`broker.controlplane.world.World.resolve`; condition
``SinkProvided``), the kind's ``prepare`` resolves what it needs (secrets, schedules; condition
``Deployed``), and a source whose sink and prepare succeed becomes a
:class:`~broker.features.sources.base.SourceSpec` in ``snapshot.components["sources"]``. What the
running source reported (:data:`~broker.features.sources.runner.RUNTIME_STATUS_KEYS`: a
``runtimeError`` such as a ContainerSource's crash loop or an unreachable API server, the
``sourceUri`` it learnt) is kept in its status; a ``runtimeError`` makes ``Deployed`` (so Ready)
False with its reason, while the source keeps running so it can recover. The event types a source
produces are listed in ``status.ceAttributes`` and kept as owned ``EventType`` objects (``cemesh get
eventtypes``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from broker.auth.identity import delivery_subject
from broker.auth.processes import applied_by
from broker.controlplane.world import (
    Address,
    Conditions,
    Obj,
    Unresolvable,
    World,
    base_status,
    owner_reference,
)
from broker.features.sources.base import PrepareContext, SourceKind, SourceNotReady, SourceSpec
from broker.features.sources.kinds import EVENT_TYPE
from broker.features.sources.runner import COMPONENT, RUNTIME_STATUS_KEYS


def event_type_name(source_name: str, event_type: str) -> str:
    """The name of the EventType a source owns for ``event_type`` (stable, DNS-safe)."""
    digest = hashlib.sha256(event_type.encode()).hexdigest()[:10]
    return f"{source_name[:50]}-{digest}"


def _event_types(
    obj: Obj, types: list[str], source_uri: str, sink: Mapping[str, Any]
) -> list[dict]:
    metadata = obj["metadata"]
    reference = sink.get("ref") if isinstance(sink, Mapping) else None
    children = []
    for type_ in types:
        spec: dict[str, Any] = {"type": type_, "source": source_uri}
        if isinstance(reference, Mapping):
            spec["reference"] = dict(reference)
        children.append(
            {
                "apiVersion": EVENT_TYPE.api_version,
                "kind": EVENT_TYPE.kind,
                "metadata": {
                    "name": event_type_name(metadata["name"], type_),
                    "namespace": metadata["namespace"],
                    "labels": {"eventing.knative.dev/sourceName": metadata["name"]},
                    "ownerReferences": [owner_reference(obj)],
                },
                "spec": spec,
            }
        )
    return children


def reconcile_source(obj: Obj, world: World, kind: SourceKind) -> None:
    """Status and runtime spec of a source ``obj`` of ``kind``."""
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    conditions = Conditions(obj, world.now)
    fields: dict[str, Any] = {}

    sink_uri = ""
    sink: Address | None = None
    if spec.get("sink") is not None:
        try:
            sink = world.resolve_address(spec["sink"], namespace, require_ready=True)
            sink_uri = sink.url
        except Unresolvable as exc:
            conditions.set("SinkProvided", "False", exc.reason, f"sink: {exc.message}")
        else:
            conditions.set("SinkProvided", "True")
            fields["sinkUri"] = sink_uri

    stored = obj.get("status") or {}
    runtime = {key: stored[key] for key in RUNTIME_STATUS_KEYS if stored.get(key) is not None}
    error = runtime.get("runtimeError")
    resolved: dict[str, Any] = {}
    prepared = False
    try:
        resolved = dict(kind.prepare(obj, PrepareContext(world.base_url, world.objects)))
    except SourceNotReady as exc:
        conditions.set("Deployed", "False", exc.reason, exc.message)
    else:
        prepared = True
        if isinstance(error, Mapping):
            conditions.set(
                "Deployed",
                "False",
                str(error.get("reason") or "RuntimeError"),
                str(error.get("message") or ""),
            )
        else:
            conditions.set("Deployed", "True")
        fields.update(resolved.pop("status", None) or {})

    types = kind.event_types(obj)
    source_uri = str(
        fields.get("sourceUri") or resolved.get("source") or runtime.get("sourceUri") or ""
    )
    if types:
        fields["ceAttributes"] = [{"type": t, "source": source_uri} for t in types]
        world.children.extend(_event_types(obj, types, source_uri, spec.get("sink") or {}))

    status = {**base_status(obj, conditions), **runtime, **fields}
    world.statuses[uid] = status
    # Runnable: everything but what the running source itself reports holds, so a source that
    # reported an error keeps running and can report that it works again.
    runnable = prepared and all(
        c["status"] == "True"
        for c in status["conditions"]
        if c["type"] not in ("Ready", "Deployed")
    )
    if runnable and kind.runner is not None:
        overrides = (spec.get("ceOverrides") or {}).get("extensions") or {}
        world.components.setdefault(COMPONENT, {})[uid] = SourceSpec(
            kind=obj["kind"],
            namespace=namespace,
            name=name,
            uid=uid,
            sink_uri=sink_uri,
            ce_overrides=dict(overrides),
            spec=spec,
            resolved=resolved,
            applied_by=applied_by(obj["metadata"]),
            sink_audience=None if sink is None else sink.audience,
            sink_ca_certs=None if sink is None else sink.ca_certs,
            identity=delivery_subject(
                obj["apiVersion"].rpartition("/")[0], obj["kind"], namespace, name
            ),
        )


def reconcile_event_type(obj: Obj, world: World) -> None:
    """An EventType is Ready when what it references (a Broker, Channel, ...) exists."""
    conditions = Conditions(obj, world.now)
    reference = (obj.get("spec") or {}).get("reference")
    if isinstance(reference, Mapping):
        key = (
            str(reference.get("apiVersion", "")).rpartition("/")[0],
            str(reference.get("kind", "")),
            str(reference.get("namespace") or obj["metadata"]["namespace"]),
            str(reference.get("name", "")),
        )
        if world.find(key) is None:
            conditions.set(
                "ReferenceExists",
                "False",
                "ResourceDoesNotExist",
                f"{key[1]} {key[2]}/{key[3]} not found",
            )
        else:
            conditions.set("ReferenceExists", "True")
    else:
        conditions.set("ReferenceExists", "True", "ReferenceNotSet", "no reference is set")
    world.statuses[obj["metadata"]["uid"]] = base_status(obj, conditions)


def source_reconciler(kind: SourceKind) -> Callable[[Obj, World], None]:
    """The reconciler of objects of source ``kind`` (it owns their EventTypes)."""

    def reconcile(obj: Obj, world: World) -> None:
        reconcile_source(obj, world, kind)

    return reconcile
