"""The one interface every feature contributes through: :class:`Feature`.

A feature (the eventing kinds, sources, serving, flows, EventPolicy) is a value naming its kinds
with their admission, its reconcilers in phase order (with ``owns_children``), how references to
its kinds resolve to URLs, and the runtime component it runs beside the dispatcher (built from
the app's :class:`~broker.features.components.RuntimeContext`; the component's ``routes`` are the
feature's HTTP routes). The app lists its features once (:mod:`broker.server.features`);
:func:`build_catalog` turns that list into the :class:`~broker.controlplane.catalog.Catalog` the
API, admission, reconcile, controller and CLI are given. Nothing registers itself on import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from broker.controlplane.catalog import (
    AddressResolver,
    Admission,
    Catalog,
    KindReconciler,
    ResourceType,
)
from broker.features.components import Component, RuntimeContext

ComponentFactory = Callable[[RuntimeContext], Component]


@dataclass(frozen=True)
class Feature:
    """What one feature adds to cemesh."""

    name: str
    # The kinds it serves, each with its admission (validation + defaults).
    kinds: Mapping[ResourceType, Admission] = field(default_factory=dict)
    # Its kinds' reconcilers, in phase order; they run after those of the features listed before.
    reconcilers: tuple[KindReconciler, ...] = ()
    # (API group, kind) -> how a Destination's ref to an object of that kind resolves to a URL.
    address_resolvers: Mapping[tuple[str, str], AddressResolver] = field(default_factory=dict)
    # Its runtime component (fed its part of every snapshot; serves its HTTP routes), if any.
    component: ComponentFactory | None = None


def build_catalog(features: Iterable[Feature]) -> Catalog:
    """The catalog of ``features``, in their order; ValueError when two serve the same kind."""
    listed = list(features)
    resolvers: dict[tuple[str, str], AddressResolver] = {}
    for feature in listed:
        resolvers.update(feature.address_resolvers)
    return Catalog.of(
        ((t, a) for feature in listed for t, a in feature.kinds.items()),
        (entry for feature in listed for entry in feature.reconcilers),
        resolvers,
    )


def build_components(features: Sequence[Feature], context: RuntimeContext) -> list[Component]:
    """The runtime components of ``features``, built from the app's ``context``, in order."""
    return [feature.component(context) for feature in features if feature.component is not None]
