"""Statuses and runtime specs of Services and Revisions. Pure, like :mod:`broker.reconcile`.

A Service owns its Revisions (controller ownerReferences, so the controller creates and garbage
collects them). Each pass:

- the Service's template is compared with its latest Revision (spec and annotations); when it
  differs, a new Revision is wanted, named ``{service}-{generation:05d}`` as Knative names them
  (or ``spec.template.metadata.name``), labelled with the service, configuration and
  configuration generation;
- Revisions stay while traffic names them, plus the latest and the :data:`HISTORY` before it
  (so a rollback or blue/green by name works); older ones are deleted;
- ``latestRevision: true`` rows route to the latest *Ready* Revision; the resolved rows are the
  Service's ``status.traffic`` and its :class:`~broker.serving.specs.RouteSpec`;
- a Revision is Ready when its autoscaling policy resolves against ``config-autoscaler``
  (ConfigMap ``knative-serving/config-autoscaler``, Knative's defaults when absent) and the
  invoker reported no ``runtimeError`` for it (e.g. the process backend cannot run an
  image-only container). Every Revision with a valid policy is in the snapshot, Ready or not, so
  that the invoker can scale it and clear its error.

What the invoker writes into a Revision's status (:data:`~broker.serving.specs.
RUNTIME_STATUS_KEYS`) is kept, and summed up on the Service as ``status.autoscaler``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from broker.auth.processes import applied_by
from broker.errors import InvalidResource
from broker.reconcile import (
    ADDRESS_RESOLVERS,
    Conditions,
    Obj,
    Unresolvable,
    World,
    base_status,
    owner_reference,
    ready_condition,
    register_reconciler,
)
from broker.resources import CONFIG_MAP
from broker.serving.autoscaler import (
    AutoscalerDefaults,
    defaults_from_config_map,
    policy_from_annotations,
)
from broker.serving.kinds import (
    CONFIGURATION_LABEL,
    GENERATION_LABEL,
    REVISION,
    SERVICE,
    SERVICE_LABEL,
    SERVING,
    service_url,
    tag_url,
)
from broker.serving.specs import (
    APPLIED_BY,
    BINDING_ENV,
    COMPONENT,
    RUNTIME_STATUS_KEYS,
    RevisionSpec,
    RouteSpec,
    revision_key,
    route_key,
)
from broker.serving.traffic import TrafficTarget
from broker.sources.container import binding_env
from broker.sources.kinds import SINK_BINDING

Status = Literal["True", "False", "Unknown"]
HISTORY = 3  # Revisions kept before the latest, besides those traffic names
AUTOSCALER_CONFIG = ("knative-serving", "config-autoscaler")


def _autoscaler_defaults(world: World) -> AutoscalerDefaults:
    """Knative's config-autoscaler, if stored; InvalidResource naming the bad key."""
    namespace, name = AUTOSCALER_CONFIG
    config = world.find((CONFIG_MAP.group, CONFIG_MAP.kind, namespace, name))
    if config is None:
        return AutoscalerDefaults()
    return defaults_from_config_map(
        config.get("data") or {}, field=f"ConfigMap {namespace}/{name} data"
    )


def _generation(revision: Obj) -> int:
    labels = revision["metadata"].get("labels") or {}
    try:
        return int(labels.get(GENERATION_LABEL, 0))
    except ValueError:
        return 0


def _binds(binding: Obj, service: Obj) -> bool:
    """Whether SinkBinding ``binding`` names ``service`` as its subject (by name or labels)."""
    subject = (binding.get("spec") or {}).get("subject") or {}
    if subject.get("kind") != SERVICE.kind or subject.get("apiVersion") != SERVICE.api_version:
        return False
    if subject.get("name"):
        return bool(subject["name"] == service["metadata"]["name"])
    wanted = ((subject.get("selector") or {}).get("matchLabels")) or {}
    labels = service["metadata"].get("labels") or {}
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def sink_binding_env(world: World, namespace: str, service_name: str) -> dict[str, str]:
    """K_SINK and K_CE_OVERRIDES for a Service's replicas, from a SinkBinding whose subject it
    is (K185): what Knative's SinkBinding injects into the pods it binds."""
    service = world.find((SERVING, SERVICE.kind, namespace, service_name))
    if service is None:
        return {}
    for key, binding in sorted(world.objects.items()):
        if key[:3] != (SINK_BINDING.group, SINK_BINDING.kind, namespace) or not _binds(
            binding, service
        ):
            continue
        spec = binding.get("spec") or {}
        try:
            sink = world.resolve(spec.get("sink") or {}, namespace, require_ready=False)
        except Unresolvable:
            continue  # the SinkBinding reports it; the replicas run without K_SINK meanwhile
        overrides = (spec.get("ceOverrides") or {}).get("extensions") or {}
        return binding_env(sink, overrides)
    return {}


def _service_applier(world: World, namespace: str, service_name: str) -> str:
    """Who applied the Service a Revision belongs to: its replicas' start logs name them."""
    service = world.find((SERVING, SERVICE.kind, namespace, service_name))
    return applied_by(service["metadata"]) if service is not None else ""


def reconcile_revision(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    stored = obj.get("status") or {}
    conditions = Conditions(obj, world.now)
    concurrency = int(spec.get("containerConcurrency") or 0)
    revision_spec: RevisionSpec | None = None
    try:
        policy = policy_from_annotations(
            metadata.get("annotations") or {},
            container_concurrency=concurrency,
            defaults=_autoscaler_defaults(world),
            field="metadata.annotations",
        )
    except InvalidResource as exc:
        conditions.set("ResourcesAvailable", "False", "InvalidAutoscaling", str(exc))
    else:
        conditions.set("ResourcesAvailable", "True")
        service = (metadata.get("labels") or {}).get(SERVICE_LABEL, "")
        revision_spec = RevisionSpec(
            namespace=namespace,
            service=service,
            name=name,
            uid=uid,
            template={
                **spec,
                "annotations": dict(metadata.get("annotations") or {}),
                BINDING_ENV: sink_binding_env(world, namespace, service),
                APPLIED_BY: _service_applier(world, namespace, service),
            },
            container_concurrency=concurrency,
            timeout=float(spec.get("timeoutSeconds") or 300),
            policy=policy,
        )
    error = stored.get("runtimeError")
    if isinstance(error, Mapping):
        conditions.set(
            "ContainerHealthy",
            "False",
            str(error.get("reason") or "RuntimeError"),
            str(error.get("message") or ""),
        )
    else:
        conditions.set("ContainerHealthy", "True")
    status = base_status(obj, conditions)
    status.update({key: stored[key] for key in RUNTIME_STATUS_KEYS if key in stored})
    world.statuses[uid] = status
    if revision_spec is not None:
        world.components.setdefault(COMPONENT, {})[revision_key(namespace, name)] = revision_spec


def _revision_child(
    service: Obj, name: str, generation: int, template: Mapping[str, Any]
) -> dict[str, Any]:
    metadata = template.get("metadata") or {}
    service_name = service["metadata"]["name"]
    return {
        "apiVersion": REVISION.api_version,
        "kind": REVISION.kind,
        "metadata": {
            "name": name,
            "namespace": service["metadata"]["namespace"],
            "labels": {
                **(metadata.get("labels") or {}),
                SERVICE_LABEL: service_name,
                CONFIGURATION_LABEL: service_name,
                GENERATION_LABEL: str(generation),
            },
            "annotations": dict(metadata.get("annotations") or {}),
            "ownerReferences": [owner_reference(service)],
        },
        "spec": dict(template.get("spec") or {}),
    }


def _existing_child(revision: Obj) -> dict[str, Any]:
    """A stored Revision as a wanted child, unchanged (Revisions are immutable)."""
    metadata = revision["metadata"]
    return {
        "apiVersion": revision["apiVersion"],
        "kind": revision["kind"],
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "labels", "annotations", "ownerReferences")
            if key in metadata
        },
        "spec": revision.get("spec") or {},
    }


def _same_template(revision: Obj, template: Mapping[str, Any]) -> bool:
    metadata = template.get("metadata") or {}
    wanted_name = metadata.get("name")
    if wanted_name and wanted_name != revision["metadata"]["name"]:
        return False
    return (revision.get("spec") or {}) == (template.get("spec") or {}) and (
        revision["metadata"].get("annotations") or {}
    ) == (metadata.get("annotations") or {})


def _ready_reason(world: World, revision: Obj) -> tuple[str, str]:
    status = world.statuses.get(revision["metadata"]["uid"]) or {}
    ready = ready_condition(status) or {}
    return str(ready.get("reason") or "RevisionNotReady"), str(ready.get("message") or "")


def reconcile_service(obj: Obj, world: World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    conditions = Conditions(obj, world.now)
    url = service_url(world.base_url, namespace, name)

    owned = sorted(
        (
            o
            for o in world.objects.values()
            if o["kind"] == REVISION.kind
            and o["apiVersion"].startswith(f"{SERVING}/")
            and o["metadata"]["namespace"] == namespace
            and any(
                r.get("uid") == uid and r.get("controller")
                for r in o["metadata"].get("ownerReferences") or ()
            )
        ),
        key=_generation,
    )
    by_name = {o["metadata"]["name"]: o for o in owned}
    latest = owned[-1] if owned else None

    # ConfigurationsReady: the latest template has a Ready Revision.
    creating = latest is None or not _same_template(latest, template)
    if creating:
        generation = (_generation(latest) if latest is not None else 0) + 1
        latest_name = (template.get("metadata") or {}).get("name") or f"{name}-{generation:05d}"
        if latest_name in by_name:
            conditions.set(
                "ConfigurationsReady",
                "False",
                "RevisionNameTaken",
                f"spec.template.metadata.name: Revision {latest_name!r} exists with another "
                "template; give the new template a new name",
            )
            latest_name = latest["metadata"]["name"] if latest is not None else latest_name
        else:
            world.children.append(_revision_child(obj, latest_name, generation, template))
            conditions.set(
                "ConfigurationsReady", "Unknown", "RevisionCreating", f"creating {latest_name}"
            )
    else:
        assert latest is not None
        latest_name = latest["metadata"]["name"]
        ready = world.is_ready(latest)
        if ready:
            conditions.set("ConfigurationsReady", "True")
        else:
            reason, message = _ready_reason(world, latest)
            conditions.set(
                "ConfigurationsReady",
                "False" if ready is False else "Unknown",
                reason,
                f'Revision "{latest_name}" is not Ready: {message}',
            )
    latest_ready = next((o["metadata"]["name"] for o in reversed(owned) if world.is_ready(o)), None)

    # RoutesReady: every traffic row names a Ready Revision.
    targets: list[TrafficTarget] = []
    rows: list[dict[str, Any]] = []
    problem: tuple[Status, str, str] | None = None  # (status, reason, message)
    for row in spec.get("traffic") or ():
        latest_row = bool(row.get("latestRevision"))
        revision_name = latest_ready if latest_row else row.get("revisionName")
        tag = row.get("tag") or None
        percent = int(row.get("percent") or 0)
        if revision_name is None:
            waiting = conditions.get("ConfigurationsReady")
            problem = problem or (
                "False" if waiting["status"] == "False" else "Unknown",
                "RevisionMissing",
                "no Revision is Ready yet for latestRevision",
            )
            continue
        revision = world.find((SERVING, REVISION.kind, namespace, revision_name))
        if revision is None:
            problem = problem or (
                "False",
                "RevisionMissing",
                f'Revision "{revision_name}" referenced in traffic not found',
            )
            continue
        if not world.is_ready(revision):
            problem = problem or (
                "False",
                "RevisionNotReady",
                f'Revision "{revision_name}" referenced in traffic is not Ready',
            )
        targets.append(TrafficTarget(revision_name, percent, tag, latest_row))
        status_row: dict[str, Any] = {
            "revisionName": revision_name,
            "latestRevision": latest_row,
            "percent": percent,
        }
        if tag:
            status_row["tag"] = tag
            status_row["url"] = tag_url(world.base_url, namespace, name, tag)
        rows.append(status_row)
    if problem is None:
        conditions.set("RoutesReady", "True")
    else:
        conditions.set("RoutesReady", *problem)

    # Revisions to keep: the latest, HISTORY before it, and every one traffic names.
    keep = {o["metadata"]["name"] for o in owned[-(HISTORY + 1) :]}
    keep |= {t.revision for t in targets}
    keep |= {
        str(row["revisionName"]) for row in spec.get("traffic") or () if row.get("revisionName")
    }
    world.children.extend(_existing_child(o) for o in owned if o["metadata"]["name"] in keep)

    status = base_status(obj, conditions)
    status["url"] = url
    status["latestCreatedRevisionName"] = latest_name
    if latest_ready is not None:
        status["latestReadyRevisionName"] = latest_ready
    status["traffic"] = rows
    scaling = []
    for revision in owned:
        revision_status = revision.get("status") or {}
        if revision["metadata"]["name"] not in keep:
            continue
        actual = int(revision_status.get("actualReplicas") or 0)
        desired = int(revision_status.get("desiredReplicas") or 0)
        routed = any(t.revision == revision["metadata"]["name"] for t in targets)
        if routed or actual or desired:
            scaling.append(
                {
                    "revisionName": revision["metadata"]["name"],
                    "actualReplicas": actual,
                    "desiredReplicas": desired,
                    "reason": str((revision_status.get("autoscaler") or {}).get("reason") or ""),
                }
            )
    status["autoscaler"] = scaling
    if problem is None:
        address = {"name": "http", "url": url}
        status["address"] = address
        status["addresses"] = [dict(address)]
        world.components.setdefault(COMPONENT, {})[route_key(namespace, name)] = RouteSpec(
            namespace=namespace, name=name, url=url, targets=tuple(targets)
        )
    world.statuses[uid] = status


def _register() -> None:
    # Revisions first: a Service reads its Revisions' readiness from the same pass.
    register_reconciler(REVISION.group, REVISION.kind, reconcile_revision)
    register_reconciler(SERVICE.group, SERVICE.kind, reconcile_service, owns_children=True)
    ADDRESS_RESOLVERS[(SERVICE.group, SERVICE.kind)] = lambda obj, world: service_url(
        world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
    )


_register()
