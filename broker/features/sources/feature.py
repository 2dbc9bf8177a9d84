"""The sources feature: the source kinds served, EventType, and the runner component.

:data:`BUILTIN_SOURCE_KINDS` are cemesh's own; :func:`sources_feature` makes the feature of any
list of source kinds, so an embedding application serves a source kind of its own by listing it
(``broker.server.features.default_features(extra_sources=[...])``), never by registering it on
import.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.controlplane.catalog import Admission, KindReconciler, ResourceType
from broker.features.components import Component, RuntimeContext
from broker.features.feature import Feature
from broker.features.sources.apiserver import API_SERVER_SOURCE_KIND
from broker.features.sources.base import SourceKind
from broker.features.sources.container import CONTAINER_SOURCE_KIND, SINK_BINDING_KIND
from broker.features.sources.github import GITHUB_SOURCE_KIND
from broker.features.sources.kinds import EVENT_TYPE, EVENT_TYPE_ADMISSION, source_admission
from broker.features.sources.ping import PING_SOURCE_KIND
from broker.features.sources.reconcile import reconcile_event_type, source_reconciler
from broker.features.sources.runner import SourceRunner

BUILTIN_SOURCE_KINDS: tuple[SourceKind, ...] = (
    API_SERVER_SOURCE_KIND,
    CONTAINER_SOURCE_KIND,
    SINK_BINDING_KIND,
    GITHUB_SOURCE_KIND,
    PING_SOURCE_KIND,
)


def sources_feature(kinds: Iterable[SourceKind] = BUILTIN_SOURCE_KINDS) -> Feature:
    """The feature serving source ``kinds`` (each owns its EventTypes) and EventType."""
    listed = {kind.resource.kind: kind for kind in kinds}
    admissions: dict[ResourceType, Admission] = {
        kind.resource: source_admission(kind) for kind in listed.values()
    }
    admissions[EVENT_TYPE] = EVENT_TYPE_ADMISSION
    reconcilers = [
        KindReconciler(
            kind.resource.group, kind.resource.kind, source_reconciler(kind), owns_children=True
        )
        for kind in listed.values()
    ]
    reconcilers.append(KindReconciler(EVENT_TYPE.group, EVENT_TYPE.kind, reconcile_event_type))

    def runner(context: RuntimeContext) -> Component:
        return SourceRunner(context, listed)

    return Feature(
        name="sources", kinds=admissions, reconcilers=tuple(reconcilers), component=runner
    )
