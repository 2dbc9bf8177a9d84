"""Statuses and runtime specs of Services and Revisions. Pure, like
:mod:`broker.controlplane.reconcile`.

A Service owns its Revisions (controller ownerReferences, so the controller creates and garbage
collects them). Each pass:

- the Service's template is compared with its latest Revision (spec and annotations); when it
  differs, a new Revision is wanted, named ``{service}-{generation:05d}`` as Knative names them
  (or ``spec.template.metadata.name``), labelled with the service, configuration and
  configuration generation;
- Revisions stay while traffic names them, plus the latest and the :data:`HISTORY` before it
  (so a rollback or blue/green by name works); older ones are deleted;
- traffic resolves with :func:`~broker.features.serving.traffic.resolve_traffic` (``latestRevision:
  true`` is the latest *Ready* Revision; a row that does not resolve makes RoutesReady not True
  and the route keeps serving its last good rows); what the route serves is the Service's
  ``status.traffic`` and its :class:`~broker.features.serving.specs.RouteSpec`, emitted for every
  Service (an empty one answers 503, not 404). The Service has an address while its route serves;
- a Revision is Ready only once it can serve: its autoscaling policy resolves against
  ``config-autoscaler`` (ConfigMap ``knative-serving/config-autoscaler``, Knative's defaults
  when absent), a replica listened at least once (``replicaReadyOnce``, from the invoker; not
  needed at initial-scale 0) and the invoker reports no ``runtimeError``: an image-only
  container on the process backend, a replica that exited before listening (``ExitCode``, with
  its exit code and last output lines), replicas that keep exiting (``CrashLoopBackOff``), or
  none listening within ``serving.knative.dev/progress-deadline``
  (``ProgressDeadlineExceeded``). Until then ResourcesAvailable / ContainerHealthy are Unknown
  (``Deploying``). Every Revision with a valid policy is in the snapshot, Ready or not, so that
  the invoker can scale it and clear its error.

What the invoker writes into a Revision's status (:data:`~broker.features.serving.specs.
RUNTIME_STATUS_KEYS`) is kept, and summed up on the Service as ``status.autoscaler``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from broker.auth.processes import applied_by
from broker.controlplane.resources import CONFIG_MAP
from broker.controlplane.world import (
    Conditions,
    Obj,
    Unresolvable,
    World,
    base_status,
    owner_reference,
    ready_condition,
)
from broker.core.errors import InvalidResource
from broker.features.serving.autoscaler import (
    AutoscalerDefaults,
    defaults_from_config_map,
    initial_replicas,
    policy_from_annotations,
)
from broker.features.serving.kinds import (
    CONFIGURATION_LABEL,
    GENERATION_LABEL,
    REVISION,
    SERVICE,
    SERVICE_LABEL,
    SERVING,
    progress_deadline,
    service_url,
    tag_url,
)
from broker.features.serving.specs import (
    APPLIED_BY,
    BINDING_ENV,
    COMPONENT,
    PROGRESS_DEADLINE,
    RUNTIME_STATUS_KEYS,
    RevisionSpec,
    RouteSpec,
    revision_key,
    route_key,
)
from broker.features.serving.traffic import (
    ResolvedTraffic,
    RouteProblem,
    TrafficTarget,
    latest_ready_revision,
    resolve_traffic,
)
from broker.features.sinkbinding import SINK_BINDING_GROUP, SINK_BINDING_KIND, binding_env, binds

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


def sink_binding_env(world: World, namespace: str, service_name: str) -> dict[str, str]:
    """K_SINK and K_CE_OVERRIDES for a Service's replicas, from a SinkBinding whose subject it
    is (K185): what Knative's SinkBinding injects into the pods it binds."""
    service = world.find((SERVING, SERVICE.kind, namespace, service_name))
    if service is None:
        return {}
    for key, binding in sorted(world.objects.items()):
        if key[:3] != (SINK_BINDING_GROUP, SINK_BINDING_KIND, namespace) or not binds(
            binding, SERVICE.api_version, SERVICE.kind, service
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
    """A Revision is Ready only once it can serve (Knative's rule, module docstring)."""
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    stored = obj.get("status") or {}
    annotations = metadata.get("annotations") or {}
    conditions = Conditions(obj, world.now)
    concurrency = int(spec.get("containerConcurrency") or 0)
    revision_spec: RevisionSpec | None = None
    proven = stored.get("replicaReadyOnce") is True
    error = stored.get("runtimeError")
    if not isinstance(error, Mapping):
        error = None
    try:
        policy = policy_from_annotations(
            annotations,
            container_concurrency=concurrency,
            defaults=_autoscaler_defaults(world),
            field="metadata.annotations",
        )
        deadline = progress_deadline(annotations, "metadata.annotations")
    except InvalidResource as exc:
        conditions.set("ResourcesAvailable", "False", "InvalidAutoscaling", str(exc))
    else:
        if error is not None and error.get("reason") == PROGRESS_DEADLINE:
            conditions.set(
                "ResourcesAvailable", "False", PROGRESS_DEADLINE, str(error.get("message") or "")
            )
        elif proven or initial_replicas(policy) == 0:
            conditions.set("ResourcesAvailable", "True")
        else:
            conditions.set(
                "ResourcesAvailable",
                "Unknown",
                "Deploying",
                f"waiting for a replica to listen (progress deadline {deadline:g}s)",
            )
        service = (metadata.get("labels") or {}).get(SERVICE_LABEL, "")
        revision_spec = RevisionSpec(
            namespace=namespace,
            service=service,
            name=name,
            uid=uid,
            template={
                **spec,
                "annotations": dict(annotations),
                BINDING_ENV: sink_binding_env(world, namespace, service),
                APPLIED_BY: _service_applier(world, namespace, service),
            },
            container_concurrency=concurrency,
            timeout=float(spec.get("timeoutSeconds") or 300),
            policy=policy,
            progress_deadline=deadline,
            proven=proven,
        )
    nothing_to_run = revision_spec is not None and initial_replicas(revision_spec.policy) == 0
    if error is not None and error.get("reason") != PROGRESS_DEADLINE:
        conditions.set(
            "ContainerHealthy",
            "False",
            str(error.get("reason") or "RuntimeError"),
            str(error.get("message") or ""),
        )
    elif proven or (nothing_to_run and error is None):
        conditions.set("ContainerHealthy", "True")
    else:
        conditions.set("ContainerHealthy", "Unknown", "Deploying", "no replica has listened yet")
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


def _ready_status(world: World, revision: Obj) -> str:
    """ "True", "False" or "Unknown": the Revision's Ready condition in this pass."""
    status = world.statuses.get(revision["metadata"]["uid"]) or {}
    return str((ready_condition(status) or {}).get("status") or "Unknown")


def _ready_reason(world: World, revision: Obj) -> tuple[str, str]:
    status = world.statuses.get(revision["metadata"]["uid"]) or {}
    ready = ready_condition(status) or {}
    return str(ready.get("reason") or "RevisionNotReady"), str(ready.get("message") or "")


def reconcile_service(obj: Obj, world: World) -> None:
    """A Service's Revisions, route and status: Knative's Configuration and Route in one.

    Creates a Revision when the template changed (``ConfigurationsReady``), resolves the
    traffic over Ready Revisions (``RoutesReady``, keeping the last good route meanwhile),
    keeps the Revisions in use or in recent history, and hands the invoker the route.
    """
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    conditions = Conditions(obj, world.now)
    url = service_url(world.base_url, namespace, name)

    owned = _owned_revisions(world, namespace, uid)
    latest_name = _configure(obj, world, owned, conditions)
    readiness = {o["metadata"]["name"]: world.is_ready(o) for o in owned}
    stored_status = obj.get("status") or {}
    latest_ready = latest_ready_revision(
        [o["metadata"]["name"] for o in owned],
        readiness,
        stored_status.get("latestReadyRevisionName"),
    )
    resolved = _route(spec, readiness, latest_ready, stored_status, conditions)
    targets = list(resolved.serving)

    # Revisions to keep: the latest, HISTORY before it, and every one traffic names.
    keep = {o["metadata"]["name"] for o in owned[-(HISTORY + 1) :]}
    keep |= {t.revision for t in targets} | {t.revision for t in resolved.targets}
    keep |= {
        str(row["revisionName"]) for row in spec.get("traffic") or () if row.get("revisionName")
    }
    world.children.extend(_existing_child(o) for o in owned if o["metadata"]["name"] in keep)

    status = base_status(obj, conditions)
    status["url"] = url
    status["latestCreatedRevisionName"] = latest_name
    if latest_ready is not None:
        status["latestReadyRevisionName"] = latest_ready
    status["traffic"] = _traffic_rows(world.base_url, namespace, name, targets)
    status["autoscaler"] = _scaling_rows(owned, keep, targets)
    if targets:  # the route serves (its last good rows, maybe): the Service has an address
        address = {"name": "http", "url": url}
        status["address"] = address
        status["addresses"] = [dict(address)]
    problem = resolved.problem
    _hand_route_to_invoker(
        world,
        RouteSpec(
            namespace=namespace,
            name=name,
            url=url,
            targets=tuple(targets),
            why="" if problem is None else problem.message,
        ),
    )
    world.statuses[uid] = status


def _owned_revisions(world: World, namespace: str, uid: str) -> list[Obj]:
    """The Revisions the Service ``uid`` controls, oldest generation first."""
    return sorted(
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


def _configure(obj: Obj, world: World, owned: list[Obj], conditions: Conditions) -> str:
    """``ConfigurationsReady``: the latest template has a Ready Revision; creates the Revision
    of a new template. Returns the latest created Revision's name."""
    name = obj["metadata"]["name"]
    template = (obj.get("spec") or {}).get("template") or {}
    latest = owned[-1] if owned else None
    if latest is not None and _same_template(latest, template):
        latest_name = str(latest["metadata"]["name"])
        state = _ready_status(world, latest)
        if state == "True":
            conditions.set("ConfigurationsReady", "True")
        else:
            reason, message = _ready_reason(world, latest)
            conditions.set(
                "ConfigurationsReady",
                "False" if state == "False" else "Unknown",
                reason,
                f'Revision "{latest_name}" is not Ready: {message}',
            )
        return latest_name
    generation = (_generation(latest) if latest is not None else 0) + 1
    latest_name = (template.get("metadata") or {}).get("name") or f"{name}-{generation:05d}"
    if latest_name in {o["metadata"]["name"] for o in owned}:
        conditions.set(
            "ConfigurationsReady",
            "False",
            "RevisionNameTaken",
            f"spec.template.metadata.name: Revision {latest_name!r} exists with another "
            "template; give the new template a new name",
        )
        return str(latest["metadata"]["name"]) if latest is not None else str(latest_name)
    world.children.append(_revision_child(obj, latest_name, generation, template))
    conditions.set("ConfigurationsReady", "Unknown", "RevisionCreating", f"creating {latest_name}")
    return str(latest_name)


def _route(
    spec: Mapping[str, Any],
    readiness: Mapping[str, bool | None],
    latest_ready: str | None,
    stored_status: Mapping[str, Any],
    conditions: Conditions,
) -> ResolvedTraffic:
    """``RoutesReady``: every traffic row names a Ready Revision; until then the last good
    route."""
    waiting = conditions.get("ConfigurationsReady")
    resolved = resolve_traffic(
        spec.get("traffic") or (),
        ready=readiness,
        latest_ready=latest_ready,
        latest_problem=RouteProblem(
            "False" if waiting["status"] == "False" else "Unknown",
            "RevisionMissing",
            "no Revision is Ready yet for latestRevision"
            + (f": {waiting['message']}" if waiting.get("message") else ""),
        ),
        last_good=_last_good(stored_status),
    )
    problem = resolved.problem
    if problem is None:
        conditions.set("RoutesReady", "True")
    else:
        conditions.set("RoutesReady", problem.status, problem.reason, problem.message)
    return resolved


def _traffic_rows(
    base_url: str, namespace: str, name: str, targets: list[TrafficTarget]
) -> list[dict[str, Any]]:
    """``status.traffic``: the rows the route serves now, tagged ones with their URL."""
    rows: list[dict[str, Any]] = []
    for target in targets:
        row: dict[str, Any] = {
            "revisionName": target.revision,
            "latestRevision": target.latest,
            "percent": target.percent,
        }
        if target.tag:
            row["tag"] = target.tag
            row["url"] = tag_url(base_url, namespace, name, target.tag)
        rows.append(row)
    return rows


def _scaling_rows(
    owned: list[Obj], keep: set[str], targets: list[TrafficTarget]
) -> list[dict[str, Any]]:
    """``status.autoscaler``: replicas of the kept Revisions that are routed or running."""
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
    return scaling


def _hand_route_to_invoker(world: World, route: RouteSpec) -> None:
    """The invoker's part of the snapshot: the route, and its Revisions marked routed."""
    invoker = world.components.setdefault(COMPONENT, {})
    invoker[route_key(route.namespace, route.name)] = route
    for target in route.targets:  # Revisions with traffic (or a tag) run even after a restart
        key = revision_key(route.namespace, target.revision)
        revision_spec = invoker.get(key)
        if isinstance(revision_spec, RevisionSpec) and not revision_spec.routed:
            invoker[key] = replace(revision_spec, routed=True)


def _last_good(status: Mapping[str, Any]) -> list[TrafficTarget]:
    """The rows a Service's route served at its last pass (its ``status.traffic``)."""
    rows = status.get("traffic") or ()
    return [
        TrafficTarget(
            str(row["revisionName"]),
            int(row.get("percent") or 0),
            row.get("tag") or None,
            bool(row.get("latestRevision")),
        )
        for row in rows
        if isinstance(row, Mapping) and row.get("revisionName")
    ]
