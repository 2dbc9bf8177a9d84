"""The durable buses the crash and replica tests run on: channel kind, server, settings.

One row per durable adapter. ``settings`` turns the started server into the ``CEMESH_*``
settings of a cemesh process (short redelivery timeouts, so that what a killed process held
comes back within seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DurableBus:
    name: str
    channel_kind: str
    server_fixture: str
    settings: Callable[[Any], dict[str, str]]


DURABLE_BUSES: dict[str, DurableBus] = {
    bus.name: bus
    for bus in (
        DurableBus(
            "kafka",
            "KafkaChannel",
            "kafka_server",
            lambda server: {
                "kafka_bootstrap_servers": server.bootstrap_servers,
                "kafka_session_timeout_ms": "2000",
            },
        ),
        DurableBus(
            "nats",
            "NatsJetStreamChannel",
            "nats_server",
            lambda server: {"nats_url": server.url, "nats_ack_wait": "2"},
        ),
        DurableBus(
            "redis",
            "RedisStreamChannel",
            "redis_server",
            lambda server: {"redis_url": server.url, "redis_visibility_timeout": "2"},
        ),
        # The emulator is slow to hand back what a killed client held (20-50 s), so the crash
        # test waits for distinct ids with a long timeout.
        DurableBus(
            "pubsub",
            "PubSubChannel",
            "pubsub_emulator",
            lambda server: {"pubsub_emulator_host": server.host, "pubsub_ack_deadline": "10"},
        ),
    )
}
