"""cemesh: a CloudEvents event mesh with the Knative Eventing model.

The packages, from the bottom up (each may import only those below it; pyproject.toml's
import-linter contracts check it):

- :mod:`broker.core`: the shared core (events, the HTTP binding, runtime specs, errors,
  settings, labels).
- :mod:`broker.cesql`: CloudEvents SQL, a self-contained language library.
- :mod:`broker.auth`: who is calling (tokens, OIDC, RBAC, the Host allow-list).
- :mod:`broker.dataplane`: ingress -> bus -> dispatcher -> delivery, run from a Snapshot.
- :mod:`broker.controlplane`: resources, admission, reconcile, the controller, the storage seam
  (SQL store, Kubernetes API) and the REST API.
- :mod:`broker.features`: sources, serving (functions), flows, EventPolicy.
- :mod:`broker.server`: the list of features and the app built from it; the listeners.
- :mod:`broker.cli`: the ``cemesh`` command.

The bus drivers are the top-level ``adapters`` package. The embeddable entry point is
:func:`create_app`, which returns the ASGI application with its background work (store, bus,
dispatcher) tied to the ASGI lifespan::

    from broker import Settings, create_app
    app = create_app(Settings(database_url="sqlite+aiosqlite:///./cemesh.db"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.core.config import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from broker.features.feature import Feature
    from broker.server.app import CemeshApp

__all__ = ["Settings", "create_app"]


def create_app(
    settings: Settings | None = None, features: Sequence[Feature] | None = None
) -> CemeshApp:
    """Build the cemesh ASGI app (ingress + management API) for ``settings``, serving
    ``features`` (default: :func:`broker.server.features.default_features`)."""
    # Imported here so that `import broker` stays light (the CLI imports it for every command).
    from broker.server.app import create_app as _create_app

    return _create_app(settings) if features is None else _create_app(settings, features)
