"""The Kafka bus (``bus: kafka``): see :mod:`.bus` for the model.

Rooms: ``options.py`` (its options model), ``wire.py`` (topic names and the record format,
pure), ``client.py`` (aiokafka arguments and error classification), ``librdkafka.py``
(librdkafka's configuration and errors), ``librdkafka_producer.py`` and
``librdkafka_consumer.py`` (confluent-kafka bridged to asyncio: driver ``confluent``, the
default), ``consumer.py`` (one consumer-group member: fetch, hand-off, commit, rebalance, on
either driver), ``bus.py`` (the adapter: topics, publishing, subscribing, deleting groups).
"""

from typing import TYPE_CHECKING

from adapters import lazy_exports

if TYPE_CHECKING:
    from adapters.kafka.bus import KafkaBus
    from adapters.kafka.options import KafkaOptions

__all__ = ["KafkaBus", "KafkaOptions"]
__getattr__ = lazy_exports(__name__, {"KafkaBus": "bus", "KafkaOptions": "options"})
