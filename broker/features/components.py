"""Runtime components: features that run beside the dispatcher (sources, the function invoker).

A component is handed its part of each :class:`~broker.core.spec.Snapshot` (``snapshot.components[
name]``, built by the pure reconcilers) and may serve HTTP paths under its own prefixes, reached
through the raw ASGI entry before the management API. The app builds the components from one
:class:`RuntimeContext`, starts them with the first snapshot and stops them before the
dispatcher drains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.controlplane.archive_store import ArchiveStore
from broker.controlplane.resource_store import ResourceStore
from broker.core.asgi import HttpHandler
from broker.core.config import Settings
from broker.core.events import CloudEvent
from broker.core.metrics import Metrics
from broker.dataplane.bus import Bus
from broker.dataplane.dispatch.delivery import TokenSource
from broker.dataplane.dispatch.http import LocalRoutingClient

# Deliver an event to one Trigger (by uid) through the dispatcher's normal path, as if its group
# had received it: broker.dataplane.dispatch.dispatcher.Dispatcher.redeliver.
Redeliver = Callable[[str, CloudEvent], Awaitable[None]]

# Components answer HTTP with the raw ASGI names of broker/core/asgi.py (their one home).


@dataclass(frozen=True, slots=True)
class RuntimeContext:
    """What a component may use of the app it runs in."""

    settings: Settings
    store: ResourceStore  # the control plane's storage seam (broker/controlplane/resource_store.py)
    metrics: Metrics
    client: LocalRoutingClient  # outbound HTTP (the dispatcher's pooled client)
    tokens: TokenSource | None = None  # cemesh's delivery tokens, when delivery OIDC is on
    # The open buses by name (the live map: buses open as Brokers need them).
    buses: Mapping[str, Bus] = field(default_factory=dict)
    redeliver: Redeliver | None = None  # the dispatcher's, for replays
    archive: ArchiveStore | None = None  # archived events and replay progress


class Component(Protocol):
    """A feature's data plane, driven by snapshots."""

    name: str  # its key in Snapshot.components

    @property
    def routes(self) -> Mapping[str, HttpHandler]:
        """HTTP path prefixes (``/sources/github/``) this component answers, and how."""
        ...

    async def apply(self, specs: Mapping[str, Any]) -> None:
        """Run exactly ``specs`` (this component's part of the new snapshot) from now on."""
        ...

    async def stop(self) -> None:
        """Stop everything started; idempotent."""
        ...
