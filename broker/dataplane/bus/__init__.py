"""The bus layer: the adapter contract, the registry of adapters, and the adapters' toolkit.

- :mod:`~broker.dataplane.bus.contract`: THE contract every adapter implements (:class:`Bus`,
  :class:`Message`, :class:`Nack`, :class:`Capability`, :func:`run_handler` (and
  :func:`redelivery_delay`, its failure rule), the optional
  :class:`ReportsBacklog`, :class:`SelectsGroups` and :class:`PublishesBatch`); read it first.
- :mod:`~broker.dataplane.bus.registry`: finds an adapter by name and builds it
  (:func:`create_bus`).
- :mod:`~broker.dataplane.bus.options`: parses an adapter's option mapping with its typed model.
- :mod:`~broker.dataplane.bus.arguments`: the checks of ``subscribe()``'s arguments.
- :mod:`~broker.dataplane.bus.handoff`: the hand-off queue between a fetch loop and handler tasks,
  with per-key lanes and give-back on cancel.

The adapters themselves live in the top-level ``adapters`` package, one package per driver.
"""

from broker.dataplane.bus.contract import (
    Bus,
    BusFactory,
    Capability,
    GroupSelector,
    Handler,
    Message,
    Nack,
    PublishesBatch,
    ReportsBacklog,
    SelectsGroups,
    Subscription,
    redelivery_delay,
    run_handler,
)
from broker.dataplane.bus.registry import (
    BUILTIN_ADAPTERS,
    ENTRY_POINT_GROUP,
    UnknownBus,
    bus_factory,
    create_bus,
)

__all__ = [
    "BUILTIN_ADAPTERS",
    "ENTRY_POINT_GROUP",
    "Bus",
    "BusFactory",
    "Capability",
    "GroupSelector",
    "Handler",
    "Message",
    "Nack",
    "PublishesBatch",
    "ReportsBacklog",
    "SelectsGroups",
    "Subscription",
    "UnknownBus",
    "bus_factory",
    "create_bus",
    "redelivery_delay",
    "run_handler",
]
