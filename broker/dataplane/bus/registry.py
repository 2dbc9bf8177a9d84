"""The registry of bus adapters: finds an adapter by name and builds it from its options.

Adapters are found through the ``cemesh.buses`` entry-point group (the built-in ones also by the
table below, so a source checkout works without installing). An adapter whose client library is
not installed is reported as :class:`~broker.core.errors.BusClientMissing`, naming the extra to
install.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from broker.core.errors import BusClientMissing, CemeshError
from broker.dataplane.bus.contract import Bus, BusFactory

ENTRY_POINT_GROUP = "cemesh.buses"

# Built-in adapters, so a plain source checkout finds them without installed entry points.
BUILTIN_ADAPTERS: dict[str, str] = {
    "memory": "adapters.memory:MemoryBus",
    "kafka": "adapters.kafka:KafkaBus",
    "nats": "adapters.nats:NatsBus",
    "pubsub": "adapters.pubsub:PubSubBus",
    "redis": "adapters.redis_streams:RedisStreamsBus",
}


class UnknownBus(CemeshError):
    """No adapter is registered under the requested name."""


def _load(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _client_missing(name: str, exc: ImportError) -> BusClientMissing:
    """The error for an adapter whose module (or its client library) cannot be imported."""
    if name in BUILTIN_ADAPTERS:  # each optional client is the extra of the same name
        return BusClientMissing(
            f"the {name} bus needs its client library, which is not installed: "
            f"pip install 'cemesh[{name}]' ({exc})"
        )
    return BusClientMissing(f"the adapter of bus {name!r} cannot be imported: {exc}")


def bus_factory(name: str) -> BusFactory:
    """Find the adapter registered as ``name`` (entry point first, then the built-in table).

    Raises :class:`~broker.core.errors.BusClientMissing` when the adapter's client library is not
    installed, and :class:`UnknownBus` when no adapter has that name.
    """
    try:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP, name=name):
            factory: BusFactory = entry_point.load()
            return factory
        if name in BUILTIN_ADAPTERS:
            factory = _load(BUILTIN_ADAPTERS[name])
            return factory
    except ImportError as exc:
        raise _client_missing(name, exc) from exc
    known = sorted({*BUILTIN_ADAPTERS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise UnknownBus(f"unknown bus {name!r}; known buses: {', '.join(known)}")


def create_bus(name: str, options: Mapping[str, Any] | None = None) -> Bus:
    """Build the adapter ``name`` from ``options`` (adapter-specific keyword settings)."""
    return bus_factory(name)(options or {})
