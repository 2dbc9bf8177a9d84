"""The source kinds' resource types, the admission every source shares, and EventType.

Each kind's own module (``github``, ``ping``, ``apiserver``, ``container``) describes it as a
:class:`~broker.features.sources.base.SourceKind`; :func:`source_admission` adds what every source
shares (``spec.sink`` required and a valid Destination, ``spec.ceOverrides``) to its own checks.
Which source kinds are served is decided by the list in :mod:`broker.features.sources.feature`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.controlplane.resources import Admission, ResourceType, admit_destination
from broker.core.errors import InvalidResource
from broker.features.sources.base import SOURCES_GROUP, SourceKind, check_ce_overrides

GITHUB_SOURCE = ResourceType(
    SOURCES_GROUP, ("v1alpha1",), "GitHubSource", "githubsources", ("githubsource",)
)
API_SERVER_SOURCE = ResourceType(
    SOURCES_GROUP, ("v1",), "ApiServerSource", "apiserversources", ("apiserversource",)
)
PING_SOURCE = ResourceType(SOURCES_GROUP, ("v1",), "PingSource", "pingsources", ("pingsource",))
CONTAINER_SOURCE = ResourceType(
    SOURCES_GROUP, ("v1",), "ContainerSource", "containersources", ("containersource",)
)
SINK_BINDING = ResourceType(SOURCES_GROUP, ("v1",), "SinkBinding", "sinkbindings", ("sinkbinding",))


def source_admission(kind: SourceKind) -> Admission:
    """The admission of a source kind: the checks every source shares, then the kind's own."""

    def check(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
        spec = obj["spec"]
        namespace = obj["metadata"]["namespace"]
        if kind.requires_sink and spec.get("sink") is None:
            raise InvalidResource("spec.sink", "is required: where the source sends its events")
        if spec.get("sink") is not None:
            spec["sink"] = admit_destination(spec["sink"], "spec.sink", namespace=namespace)
        check_ce_overrides(spec.get("ceOverrides"), "spec.ceOverrides")
        kind.check(obj, old)

    return Admission(check)


# --- EventType (eventing.knative.dev/v1beta2): what can be subscribed to -------------------------

EVENT_TYPE = ResourceType(
    "eventing.knative.dev", ("v1beta2",), "EventType", "eventtypes", ("eventtype", "et")
)


def _admit_event_type(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    if not isinstance(spec.get("type"), str) or not spec["type"]:
        raise InvalidResource(
            "spec.type", "is required: the CloudEvent type, e.g. dev.example.created"
        )
    for key in ("source", "schema", "description"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise InvalidResource(f"spec.{key}", "must be a string")


EVENT_TYPE_ADMISSION = Admission(_admit_event_type)
