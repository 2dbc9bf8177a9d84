"""The source kinds cemesh serves: their resource types and admission, in one table.

Each kind's own module (``github``, ``ping``, ``apiserver``, ``container``) describes it as a
:class:`~broker.sources.base.SourceKind` and calls :func:`register_source_kind`; this module
adds what every source shares to the admission (``spec.sink`` required and a valid Destination,
``spec.ceOverrides``) and registers the resource type with the API. The per-kind modules are
imported at the bottom, so importing this module serves every kind.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from broker.errors import InvalidResource
from broker.resources import Admission, ResourceType, admit_destination, register_kind
from broker.sources.base import SOURCES_GROUP, SourceKind, check_ce_overrides

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

# By kind name: every source kind registered so far.
SOURCE_KINDS: dict[str, SourceKind] = {}


def _admission(kind: SourceKind) -> Admission:
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


def register_source_kind(kind: SourceKind) -> None:
    """Serve ``kind``: its resource type with the shared source admission plus its own."""
    SOURCE_KINDS[kind.resource.kind] = kind
    register_kind(kind.resource, _admission(kind))
    # The reconcilers of the kinds known when broker.sources.reconcile is imported are registered
    # there; a kind registered later (a custom source) is added now.
    reconciling = sys.modules.get("broker.sources.reconcile")
    if reconciling is not None:
        reconciling.register_source_reconciler(kind)


def source_kind(group: str, kind: str) -> SourceKind | None:
    """The registered source kind named by an object's API group and kind, if any."""
    found = SOURCE_KINDS.get(kind)
    return found if found is not None and found.resource.group == group else None


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


register_kind(EVENT_TYPE, Admission(_admit_event_type))
from broker.sources import apiserver as _apiserver  # noqa: E402, F401
from broker.sources import container as _container  # noqa: E402, F401
from broker.sources import github as _github  # noqa: E402, F401
from broker.sources import ping as _ping  # noqa: E402, F401
