"""The Redis Streams bus (``bus: redis``): see :mod:`.bus` for the model.

Rooms: ``options.py`` (its options model), ``policy.py`` (names, stream ids, trimming and
redelivery arithmetic, the entry format: pure), ``publisher.py`` (XADDs of concurrent publishes
in pipelines), ``settler.py`` (acks, releases and keep-alives in order), ``consumer.py`` (one
subscription: fetch and claim loop, handlers), ``bus.py`` (the adapter: connection, groups,
trimming).
"""

from typing import TYPE_CHECKING

from adapters import lazy_exports

if TYPE_CHECKING:
    from adapters.redis_streams.bus import RedisStreamsBus
    from adapters.redis_streams.options import RedisOptions

__all__ = ["RedisOptions", "RedisStreamsBus"]
__getattr__ = lazy_exports(__name__, {"RedisStreamsBus": "bus", "RedisOptions": "options"})
