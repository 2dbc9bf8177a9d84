"""The NATS JetStream bus (``bus: nats``): see :mod:`.bus` for the model.

Rooms: ``options.py`` (its options model), ``names.py`` (streams, consumers, subjects and
de-duplication ids, pure), ``failures.py`` (nats-py's errors: retryable or not), ``consumer.py``
(one subscription: pull loop, handlers, keep-alives), ``bus.py`` (the adapter: connection,
streams, publishing, durable consumers).
"""

from typing import TYPE_CHECKING

from adapters import lazy_exports

if TYPE_CHECKING:
    from adapters.nats.bus import NatsBus
    from adapters.nats.options import NatsOptions

__all__ = ["NatsBus", "NatsOptions"]
__getattr__ = lazy_exports(__name__, {"NatsBus": "bus", "NatsOptions": "options"})
