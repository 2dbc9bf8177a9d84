"""The one list of features cemesh is built from, and the catalog made of it.

cemesh serves a kind because a feature listed here names it; nothing registers itself on import.
:func:`default_features` is the list the app (``broker.server.app.create_app``) and the CLI use;
:data:`CATALOG` is its :class:`~broker.controlplane.catalog.Catalog`. An embedding application that
adds a source kind of its own passes ``default_features(extra_sources=[...])`` to ``create_app``.

:func:`admit`, :func:`reconcile`, :func:`type_for_name` and :func:`type_for_kind` are the
catalog-taking functions with :data:`CATALOG` filled in, for tests and tools that want cemesh's
own kinds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from broker.controlplane import admission
from broker.controlplane import reconcile as reconciling
from broker.controlplane.catalog import Catalog, ResourceType
from broker.controlplane.eventing.kinds import EVENTING_KINDS
from broker.controlplane.eventing.reconcile import EVENTING_ADDRESSES, EVENTING_RECONCILERS
from broker.controlplane.outbound import OutboundGuard
from broker.features.archive.feature import ARCHIVE_FEATURE
from broker.features.eventpolicy.feature import EVENTPOLICY_FEATURE
from broker.features.feature import Feature, build_catalog
from broker.features.flows.feature import FLOWS_FEATURE
from broker.features.serving.feature import SERVING_FEATURE
from broker.features.sources.base import SourceKind
from broker.features.sources.feature import BUILTIN_SOURCE_KINDS, sources_feature

# Brokers, Triggers, channels, Subscriptions, Secrets and ConfigMaps: cemesh's core.
EVENTING_FEATURE = Feature(
    name="eventing",
    kinds=EVENTING_KINDS,
    reconcilers=EVENTING_RECONCILERS,
    address_resolvers=EVENTING_ADDRESSES,
)


def default_features(extra_sources: Iterable[SourceKind] = ()) -> tuple[Feature, ...]:
    """cemesh's features, in reconcile phase order; ``extra_sources``: source kinds of an
    embedding application, served and run like the built-in ones."""
    return (
        EVENTING_FEATURE,  # first: every other kind may reference Brokers and channels
        EVENTPOLICY_FEATURE,
        FLOWS_FEATURE,
        SERVING_FEATURE,
        sources_feature((*BUILTIN_SOURCE_KINDS, *extra_sources)),
        ARCHIVE_FEATURE,  # after the Brokers and Triggers its Archives and Replays read
    )


FEATURES: tuple[Feature, ...] = default_features()
CATALOG: Catalog = build_catalog(FEATURES)


def admit(
    obj: dict[str, Any],
    *,
    namespace: str | None = None,
    old: dict[str, Any] | None = None,
    guard: OutboundGuard | None = None,
) -> dict[str, Any]:
    """:func:`broker.controlplane.admission.admit` against :data:`CATALOG`."""
    return admission.admit(obj, namespace=namespace, old=old, guard=guard, catalog=CATALOG)


def reconcile(objects: Sequence[Mapping[str, Any]], **options: Any) -> reconciling.Reconciled:
    """:func:`broker.controlplane.reconcile.reconcile` with :data:`CATALOG`'s reconcilers."""
    return reconciling.reconcile(objects, catalog=CATALOG, **options)


def type_for_name(name: str) -> ResourceType:
    """The kind a CLI user names, among :data:`CATALOG`'s."""
    return CATALOG.type_for_name(name)


def type_for_kind(api_version: str, kind: str) -> ResourceType:
    """The kind named by ``apiVersion`` and ``kind``, among :data:`CATALOG`'s."""
    return CATALOG.type_for_kind(api_version, kind)
