"""The ADAPTERS table the one bus conformance suite runs over, and the fixtures it needs.

Every test of ``test_bus_contract.py`` that takes the ``bus`` fixture runs once per row of
:data:`ADAPTERS`. A row names the fixture that yields an *open* bus of that adapter, and the
capabilities the adapter must declare (checked by ``test_declared_capabilities_match_table``, so
losing one is a failure, not a silent skip). Tests of optional behaviour skip on the adapters
that do not declare it.

Adding an adapter means adding one row here, its bus fixture, and (for a real server) a
session-scoped server fixture that starts the server on a free 127.0.0.1 port in a temporary
directory and stops it afterwards; when the server binary is missing or the server cannot start,
that fixture fails (never skips) with a message naming the binary and how to install it
(tests/support/servers/base.py). Each test uses fresh topic and group names, so all tests of
a run can share one server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.memory import MemoryBus
from broker.dataplane.bus import Bus, Capability, bus_factory
from tests.support.servers.kafka import KafkaServer
from tests.support.servers.nats import NatsServer
from tests.support.servers.pubsub import PubSubEmulator
from tests.support.servers.redis import RedisServer


@dataclass(frozen=True)
class AdapterCase:
    """One row of the table: how to get an open bus, and what it must declare."""

    name: str  # the adapter's registered name (``Bus.name``)
    fixture: str  # an async fixture yielding an open Bus (closed by the fixture afterwards)
    capabilities: frozenset[Capability]
    variant: str = ""  # a second configuration of the same adapter (e.g. another driver)

    @property
    def id(self) -> str:
        """The row's test id: the adapter's name, plus its variant."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def require(self, capability: Capability) -> None:
        """Skip the calling test unless this adapter declares ``capability``."""
        if capability not in self.capabilities:
            pytest.skip(f"{self.name} does not declare {capability.name}")


_KAFKA_CAPABILITIES = frozenset(
    {
        Capability.DURABLE,
        Capability.NACK_DELAY,
        Capability.REDELIVERY_COUNT,
        Capability.ORDERED_BY_KEY,
    }
)

ADAPTERS: dict[str, AdapterCase] = {
    case.id: case
    for case in (
        AdapterCase(
            "memory",
            "memory_bus",
            frozenset(
                {Capability.NACK_DELAY, Capability.REDELIVERY_COUNT, Capability.ORDERED_BY_KEY}
            ),
        ),
        AdapterCase(
            "nats",
            "nats_bus",
            frozenset(
                {
                    Capability.DURABLE,
                    Capability.NACK_DELAY,
                    Capability.REDELIVERY_COUNT,
                    Capability.ORDERED_BY_KEY,
                }
            ),
        ),
        AdapterCase(
            "pubsub",
            "pubsub_bus",
            frozenset({Capability.DURABLE, Capability.NACK_DELAY, Capability.ORDERED_BY_KEY}),
        ),
        AdapterCase("kafka", "kafka_bus", _KAFKA_CAPABILITIES),
        AdapterCase("kafka", "kafka_confluent_bus", _KAFKA_CAPABILITIES, variant="confluent"),
        AdapterCase(
            "redis",
            "redis_bus",
            frozenset({Capability.DURABLE, Capability.NACK_DELAY, Capability.REDELIVERY_COUNT}),
        ),
    )
}


@pytest.fixture
async def memory_bus() -> AsyncIterator[Bus]:
    bus = MemoryBus({})
    await bus.open()
    yield bus
    await bus.close()


@pytest.fixture
async def nats_bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A NatsBus on the session's NATS server; short ack_wait so that redelivery tests are quick."""
    from adapters.nats import NatsBus  # imported here: only this row needs nats-py

    bus = NatsBus({"url": nats_server.url, "ack_wait": 2.0, "connect_timeout": 5.0})
    await bus.open()
    yield bus
    await bus.close()


@pytest.fixture
async def pubsub_bus(pubsub_emulator: PubSubEmulator) -> AsyncIterator[Bus]:
    """A PubSubBus on the session's emulator; the shortest ack deadline Pub/Sub allows (10 s)."""
    from adapters.pubsub import PubSubBus  # imported here: only this row needs the client

    bus = PubSubBus(
        {"emulator_host": pubsub_emulator.host, "project": "cemesh-test", "ack_deadline": 10}
    )
    await bus.open()
    yield bus
    await bus.close()


async def _kafka_bus(server: KafkaServer, driver: str) -> AsyncIterator[Bus]:
    """A KafkaBus on the session's Tansu server; short session timeout so that joins are quick."""
    from adapters.kafka import KafkaBus  # imported here: only these rows need the Kafka clients

    bus = KafkaBus(
        {
            "driver": driver,
            "bootstrap_servers": server.bootstrap_servers,
            "session_timeout_ms": 1000,
            "heartbeat_interval_ms": 100,
            "request_timeout_ms": 10_000,
        }
    )
    await bus.open()
    yield bus
    await bus.close()


@pytest.fixture
async def kafka_bus(kafka_server: KafkaServer) -> AsyncIterator[Bus]:
    """The Kafka bus with the aiokafka driver."""
    async for bus in _kafka_bus(kafka_server, "aiokafka"):
        yield bus


@pytest.fixture
async def kafka_confluent_bus(kafka_server: KafkaServer) -> AsyncIterator[Bus]:
    """The Kafka bus with the librdkafka (confluent-kafka) driver."""
    async for bus in _kafka_bus(kafka_server, "confluent"):
        yield bus


@pytest.fixture
async def redis_bus(redis_server: RedisServer) -> AsyncIterator[Bus]:
    """A RedisStreamsBus on the session's Redis; short visibility timeout for redelivery tests."""
    from adapters.redis_streams import RedisStreamsBus  # imported here: only this row needs redis

    bus = RedisStreamsBus({"url": redis_server.url, "visibility_timeout": 2.0})
    await bus.open()
    yield bus
    await bus.close()


@pytest.fixture
async def bus_without_server(
    adapter: AdapterCase, request: pytest.FixtureRequest
) -> AsyncIterator[Bus]:
    """An open bus of the current adapter whose server (its own, started for this test) is then
    stopped: for the unhappy paths. Short timeouts, so that giving up is quick. The memory bus
    has no server: the tests using this skip it."""
    if adapter.name == "memory":
        pytest.skip("the memory bus has no server to stop")
    server = request.getfixturevalue(_RESTARTABLE[adapter.name])
    options = _stopped_server_options(adapter.name, server)
    bus = bus_factory(adapter.name)(options)
    await bus.open()
    await asyncio.to_thread(server.stop)
    yield bus
    await bus.close()


_RESTARTABLE = {
    "nats": "restartable_nats_server",
    "pubsub": "restartable_pubsub_emulator",
    "kafka": "restartable_kafka_server",
    "redis": "restartable_redis_server",
}


def _stopped_server_options(name: str, server: Any) -> dict[str, Any]:
    if name == "nats":
        return {"url": server.url, "connect_timeout": 5.0, "request_timeout": 2.0}
    if name == "pubsub":
        return {"emulator_host": server.host, "project": "cemesh-test", "rpc_timeout": 3.0}
    if name == "kafka":
        return {"bootstrap_servers": server.bootstrap_servers, "request_timeout_ms": 3000}
    return {"url": server.url, "socket_timeout": 2.0, "connect_timeout": 2.0}


@pytest.fixture(params=list(ADAPTERS), ids=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> AdapterCase:
    """The table row the current test runs against."""
    return ADAPTERS[request.param]


@pytest.fixture
def bus(adapter: AdapterCase, request: pytest.FixtureRequest) -> Bus:
    """An open bus of the current adapter (closed after the test by its own fixture)."""
    bus: Bus = request.getfixturevalue(adapter.fixture)
    return bus


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Fresh names (topics, groups), so that tests sharing one real server never interfere."""

    def make(prefix: str) -> str:
        return f"conformance-{prefix}-{uuid.uuid4().hex}"

    return make


@pytest.fixture
def topic(unique: Callable[[str], str]) -> str:
    return unique("topic")
