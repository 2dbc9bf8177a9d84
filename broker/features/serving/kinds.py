"""The serving kinds (Knative ``serving.knative.dev/v1`` Service and Revision) and their admission.

Owns the resource types, the subset of the Service spec cemesh runs (module docs of
:mod:`broker.features.serving.reconcile` say how it runs), the Service and tag URLs, and the labels
a Revision carries. Admission errors name the field, as every kind's do:

- ``spec.template.spec.containers``: exactly one container with ``image`` and/or ``command``
  (the ``process`` backend runs ``command`` + ``args``; ``image`` alone runs only on the
  ``kubernetes`` backend; the process backend reports it on the Revision's status as
  ``runtimeError``, naming ``containers[0].command``), ``env`` as name/value pairs,
  at most one port;
- ``containerConcurrency`` 0 (unlimited) .. 1000, ``timeoutSeconds`` 1 .. 600 (Knative's
  defaults: 0 and 300);
- ``autoscaling.knative.dev/*`` annotations, checked by the autoscaler's own parser;
  ``serving.knative.dev/progress-deadline`` a Go duration above 0 (default
  :data:`DEFAULT_PROGRESS_DEADLINE`: how long a Revision's replica may take to listen before the
  Revision is not Ready);
- ``env`` may not set :data:`RESERVED_ENV` (Knative's runtime contract: cemesh sets them);
- ``spec.traffic``: each row names ``revisionName`` or ``latestRevision: true`` (Knative's
  default when no revision is named), percents 0..100 summing to 100, tags unique DNS labels;
  absent, it is ``[{latestRevision: true, percent: 100}]``;
- ``spec.template.metadata.name``, when given, starts with ``{service}-`` and must change when
  the template changes (a Revision is immutable).

Revisions are written by reconcile only (they carry the Service as controller owner); their
``spec`` never changes once stored.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from broker.controlplane.resources import (
    Admission,
    ResourceType,
    check_label_name,
    check_process_text,
)
from broker.controlplane.shapes import require_mapping, type_name
from broker.core.errors import InvalidResource
from broker.features.serving.autoscaler import (
    AutoscalerDefaults,
    parse_go_duration,
    policy_from_annotations,
)

SERVING = "serving.knative.dev"
SERVICE = ResourceType(SERVING, ("v1",), "Service", "services", ("service", "ksvc", "kservice"))
REVISION = ResourceType(SERVING, ("v1",), "Revision", "revisions", ("revision", "rev"))

# Labels Knative puts on a Revision (cemesh sets the same ones).
SERVICE_LABEL = "serving.knative.dev/service"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
GENERATION_LABEL = "serving.knative.dev/configurationGeneration"

PROGRESS_DEADLINE_ANNOTATION = "serving.knative.dev/progress-deadline"
# Knative's default is 600 s for pods that pull images and get scheduled; a local process starts
# in well under a second, so a minute already means it will not listen.
DEFAULT_PROGRESS_DEADLINE = 60.0
RESERVED_ENV = ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")

DEFAULT_TIMEOUT_SECONDS = 300  # Knative's revision-timeout-seconds
MAX_TIMEOUT_SECONDS = 600  # Knative's max-revision-timeout-seconds
MAX_CONTAINER_CONCURRENCY = 1000  # Knative's container-concurrency-target-max
TEMPLATE = "spec.template"
_LENIENT = AutoscalerDefaults(allow_zero_initial_scale=True)


def service_url(base_url: str, namespace: str, name: str) -> str:
    """The address of a Service: path-based, on cemesh's own host (the invoker's route)."""
    return f"{base_url.rstrip('/')}/services/{namespace}/{name}"


def tag_url(base_url: str, namespace: str, name: str, tag: str) -> str:
    """The address of one traffic tag of a Service: only that tag's Revision answers it."""
    return f"{service_url(base_url, namespace, name)}/tags/{tag}"


def progress_deadline(annotations: Mapping[str, str], field: str) -> float:
    """Seconds of ``serving.knative.dev/progress-deadline`` (default when absent);
    InvalidResource naming ``field[annotation]`` when it is not a positive Go duration."""
    text = annotations.get(PROGRESS_DEADLINE_ANNOTATION)
    if text is None:
        return DEFAULT_PROGRESS_DEADLINE
    where = f"{field}[{PROGRESS_DEADLINE_ANNOTATION}]"
    seconds = parse_go_duration(text, where)
    if not 0 < seconds <= 24 * 3600:
        raise InvalidResource(where, f"must be above 0s and at most 24h, was {text!r}")
    return seconds


def _int(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidResource(field, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def _strings(value: object, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidResource(field, f"must be a list of strings, got {value!r}")
    for index, item in enumerate(value):
        check_process_text(item, f"{field}[{index}]")
    return value


def _admit_container(container: object, field: str) -> None:
    container = require_mapping(container, field)
    image, command = container.get("image"), container.get("command")
    if image in (None, "") and not command:
        raise InvalidResource(
            field,
            "needs 'command' (run as a local process) and/or 'image' (run on the kubernetes "
            "backend); neither is set",
        )
    if image not in (None, "") and not isinstance(image, str):
        raise InvalidResource(f"{field}.image", f"must be a string, got {type_name(image)}")
    for key in ("command", "args"):
        if container.get(key) is not None:
            _strings(container[key], f"{field}.{key}")
    if command is not None and not command:
        raise InvalidResource(f"{field}.command", "must not be empty")
    if container.get("workingDir") is not None and not isinstance(container["workingDir"], str):
        raise InvalidResource(f"{field}.workingDir", "must be a string")
    check_process_text(container.get("workingDir") or "", f"{field}.workingDir")
    env = container.get("env")
    if env is not None:
        if not isinstance(env, list):
            raise InvalidResource(f"{field}.env", f"must be a list, got {type_name(env)}")
        for index, item in enumerate(env):
            where = f"{field}.env[{index}]"
            item = require_mapping(item, where)
            name = item.get("name")
            if not isinstance(name, str) or not name or "=" in name:
                raise InvalidResource(f"{where}.name", "is required: a variable name without '='")
            if name in RESERVED_ENV:
                raise InvalidResource(
                    f"{where}.name", f"{name} is reserved: cemesh sets it for every replica"
                )
            if item.get("valueFrom") is not None:
                raise InvalidResource(
                    f"{where}.valueFrom", "is not supported in this version; give 'value'"
                )
            if item.get("value") is not None and not isinstance(item["value"], str):
                raise InvalidResource(f"{where}.value", "must be a string; quote it")
            check_process_text(name, f"{where}.name")
            check_process_text(item.get("value") or "", f"{where}.value")
    ports = container.get("ports")
    if ports is not None:
        if not isinstance(ports, list) or len(ports) > 1:
            raise InvalidResource(f"{field}.ports", "must be a list of at most one port")
        for index, port in enumerate(ports):
            port = require_mapping(port, f"{field}.ports[{index}]")
            if port.get("containerPort") is not None:
                _int(port["containerPort"], f"{field}.ports[{index}].containerPort", 1, 65535)


def admit_revision_spec(
    spec: dict[str, Any], annotations: Mapping[str, str], field: str, annotations_field: str
) -> None:
    """Check (and default) a Revision spec, the Service's ``spec.template.spec``, in place."""
    containers = spec.get("containers")
    if not isinstance(containers, list) or len(containers) != 1:
        raise InvalidResource(
            f"{field}.containers", "must list exactly one container (the function)"
        )
    _admit_container(containers[0], f"{field}.containers[0]")
    concurrency = spec.setdefault("containerConcurrency", 0)
    if concurrency is None:
        concurrency = spec["containerConcurrency"] = 0
    _int(concurrency, f"{field}.containerConcurrency", 0, MAX_CONTAINER_CONCURRENCY)
    timeout = spec.setdefault("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    if timeout is None:
        timeout = spec["timeoutSeconds"] = DEFAULT_TIMEOUT_SECONDS
    _int(timeout, f"{field}.timeoutSeconds", 1, MAX_TIMEOUT_SECONDS)
    # The annotations' own rules live with the autoscaler; it names the annotation at fault.
    # config-autoscaler is not known here (reconcile reads it), so admission allows what some
    # config allows (initial-scale 0); reconcile then checks against the real one.
    policy_from_annotations(
        annotations,
        container_concurrency=concurrency,
        defaults=_LENIENT,
        field=annotations_field,
    )
    progress_deadline(annotations, annotations_field)


def _string_map(value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    mapping = require_mapping(value, field)
    for key, item in mapping.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidResource(f"{field}[{key}]", "must map strings to strings; quote it")
    return dict(mapping)


def _admit_traffic(spec: dict[str, Any]) -> None:
    traffic = spec.get("traffic")
    if traffic is None:
        spec["traffic"] = [{"latestRevision": True, "percent": 100}]
        return
    if not isinstance(traffic, list) or not traffic:
        raise InvalidResource("spec.traffic", "must be a non-empty list of traffic targets")
    total = 0
    tags: set[str] = set()
    rows = []
    for index, raw in enumerate(traffic):
        field = f"spec.traffic[{index}]"
        row = dict(require_mapping(raw, field))
        if row.get("configurationName") not in (None, ""):
            raise InvalidResource(
                f"{field}.configurationName", "is not allowed in a Service; use latestRevision"
            )
        name = row.get("revisionName")
        if name not in (None, "") and not isinstance(name, str):
            raise InvalidResource(f"{field}.revisionName", "must be a string")
        latest = row.get("latestRevision")
        if latest is None:  # Knative's default: latest unless a revision is named
            latest = row["latestRevision"] = name in (None, "")
        if not isinstance(latest, bool):
            raise InvalidResource(f"{field}.latestRevision", "must be true or false")
        if latest and name not in (None, ""):
            raise InvalidResource(
                f"{field}.revisionName", "may not be set when latestRevision is true"
            )
        if not latest and name in (None, ""):
            raise InvalidResource(
                f"{field}.revisionName", "is required when latestRevision is false"
            )
        percent = row.get("percent")
        if percent is None:
            percent = 0
        total += _int(percent, f"{field}.percent", 0, 100)
        tag = row.get("tag")
        if tag not in (None, ""):
            if not isinstance(tag, str):
                raise InvalidResource(f"{field}.tag", "must be a string")
            check_label_name(tag, f"{field}.tag")
            if tag in tags:
                raise InvalidResource(f"{field}.tag", f"{tag!r} is used by more than one target")
            tags.add(tag)
        rows.append(row)
    if total != 100:
        raise InvalidResource("spec.traffic", f"traffic targets sum to {total}, want 100")
    spec["traffic"] = rows


def _admit_service(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    name = obj["metadata"]["name"]
    if spec.get("template") is None:
        raise InvalidResource(TEMPLATE, "is required: the function's container and settings")
    template = spec["template"] = dict(require_mapping(spec["template"], TEMPLATE))
    metadata = template["metadata"] = dict(
        require_mapping(template.get("metadata") or {}, f"{TEMPLATE}.metadata")
    )
    annotations = metadata["annotations"] = _string_map(
        metadata.get("annotations"), f"{TEMPLATE}.metadata.annotations"
    )
    if metadata.get("labels") is not None:
        metadata["labels"] = _string_map(metadata["labels"], f"{TEMPLATE}.metadata.labels")
    revision_name = metadata.get("name")
    if revision_name not in (None, ""):
        if not isinstance(revision_name, str) or not revision_name.startswith(f"{name}-"):
            raise InvalidResource(
                f"{TEMPLATE}.metadata.name", f"must start with the Service name: {name}-..."
            )
        check_label_name(revision_name, f"{TEMPLATE}.metadata.name")
    template_spec = template["spec"] = dict(
        require_mapping(template.get("spec"), f"{TEMPLATE}.spec")
    )
    admit_revision_spec(
        template_spec, annotations, f"{TEMPLATE}.spec", f"{TEMPLATE}.metadata.annotations"
    )
    _admit_traffic(spec)
    if old is not None and revision_name not in (None, ""):
        old_template = (old.get("spec") or {}).get("template") or {}
        old_name = (old_template.get("metadata") or {}).get("name")
        if old_name == revision_name and _content(old_template) != _content(template):
            raise InvalidResource(
                f"{TEMPLATE}.metadata.name",
                f"the template changed but its name {revision_name!r} did not: a Revision is "
                "immutable, give the new template a new name (or leave the name out)",
            )


def _content(template: Mapping[str, Any]) -> Any:
    """What makes a Revision: the template's spec and annotations (and labels)."""
    metadata = template.get("metadata") or {}
    return (
        template.get("spec") or {},
        metadata.get("annotations") or {},
        metadata.get("labels") or {},
    )


def _admit_revision(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    owners = obj["metadata"].get("ownerReferences") or []
    if not any(o.get("kind") == SERVICE.kind and o.get("controller") for o in owners):
        raise InvalidResource(
            "metadata.ownerReferences",
            "Revisions are made by their Service: change the Service's spec.template instead",
        )
    obj["spec"] = spec = copy.deepcopy(obj["spec"])
    admit_revision_spec(spec, obj["metadata"]["annotations"], "spec", "metadata.annotations")
    if old is not None and (old.get("spec") or {}) != spec:
        raise InvalidResource("spec", "a Revision is immutable")


# The kinds this feature serves, with their admission (listed in broker.features.serving.feature).
SERVING_KINDS: dict[ResourceType, Admission] = {
    SERVICE: Admission(_admit_service),
    REVISION: Admission(_admit_revision),
}
