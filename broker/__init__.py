"""cemesh: a CloudEvents event mesh with the Knative Eventing model.

The embeddable entry point is :func:`create_app`, which returns the ASGI application with its
background work (store, bus, dispatcher) tied to the ASGI lifespan::

    from broker import Settings, create_app
    app = create_app(Settings(database_url="sqlite+aiosqlite:///./cemesh.db"))
"""

from broker.config import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None):  # type: ignore[no-untyped-def]
    """Build the cemesh ASGI app (ingress + management API) for ``settings``."""
    from broker.app import create_app as _create_app

    return _create_app(settings)
