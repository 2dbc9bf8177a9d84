"""The Google Cloud Pub/Sub bus (``bus: pubsub``): see :mod:`.bus` for the model.

Rooms: ``options.py`` (its options model), ``names.py`` (topic and subscription IDs, pure),
``publisher.py`` (Publish RPCs shared by concurrent publishes), ``consumer.py`` (one
subscription: StreamingPull streams, handlers, leases, acks), ``bus.py`` (the adapter: clients,
topics, subscriptions).
"""

from typing import TYPE_CHECKING

from adapters import lazy_exports

if TYPE_CHECKING:
    from adapters.pubsub.bus import PubSubBus
    from adapters.pubsub.options import PubSubOptions

__all__ = ["PubSubBus", "PubSubOptions"]
__getattr__ = lazy_exports(__name__, {"PubSubBus": "bus", "PubSubOptions": "options"})
