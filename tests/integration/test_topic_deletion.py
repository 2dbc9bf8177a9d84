"""Deleting a Broker or a Channel deletes its topic on the bus server (issue 13, item 4).

Through a real cemesh (``tests/support/cemesh.py``, SQL store) on each durable bus, with a real
HTTP subscriber; the topic is looked up with the server's own client, not through cemesh: the
Kafka topic (admin ``list_topics``), the JetStream stream (``stream_info``), the Redis stream key
(``EXISTS``), the Pub/Sub topic (``get_topic``). A Broker applied again under the same name
afterwards starts on a new, empty topic, and its surviving Trigger gets only what is sent then.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from broker.core.spec import broker_topic, channel_topic
from tests.durability.buses import DURABLE_BUSES, DurableBus
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.timeout(180)

TopicExists = Callable[[str], Awaitable[bool]]
BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
CHANNELS = "/apis/messaging.knative.dev/v1/namespaces/default/channels"


async def kafka_exists(server: Any, topic: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    from adapters.kafka.wire import kafka_topic

    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap_servers)
    await admin.start()
    try:
        return kafka_topic(topic) in await admin.list_topics()
    finally:
        await admin.close()


async def nats_exists(server: Any, topic: str) -> bool:
    import nats
    import nats.js.errors

    from adapters.nats.names import stream_name

    client = await nats.connect(server.url)
    try:
        await client.jetstream().stream_info(stream_name(topic))
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await client.close()
    return True


async def redis_exists(server: Any, topic: str) -> bool:
    import redis.asyncio as redis

    client = redis.Redis.from_url(server.url)
    try:
        return bool(await client.exists(topic))
    finally:
        await client.aclose()


async def pubsub_exists(server: Any, topic: str) -> bool:
    import grpc
    from google.api_core import exceptions
    from google.pubsub_v1.services.publisher.async_client import PublisherAsyncClient
    from google.pubsub_v1.services.publisher.transports.grpc_asyncio import (
        PublisherGrpcAsyncIOTransport,
    )

    from adapters.pubsub.names import topic_id

    channel = grpc.aio.insecure_channel(server.host)
    client = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))
    try:
        await client.get_topic(topic=f"projects/cemesh/topics/{topic_id(topic)}")
    except exceptions.NotFound:
        return False
    finally:
        await client.transport.close()
    return True


EXISTS: dict[str, Callable[[Any, str], Awaitable[bool]]] = {
    "kafka": kafka_exists,
    "nats": nats_exists,
    "redis": redis_exists,
    "pubsub": pubsub_exists,
}


def broker(name: str) -> dict[str, Any]:
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": name}}


def trigger(name: str, broker_name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": broker_name, "subscriber": {"uri": uri}},
    }


def channel(name: str) -> dict[str, Any]:
    """A generic Channel: backed by the default channel kind, i.e. the bus under test."""
    return {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "metadata": {"name": name}}


def ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def send(cemesh: RunningCemesh, path: str, event_id: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/topics",
               "ce-type": "dev.cemesh.test.topic"}  # fmt: skip
    response = await cemesh.post_event(path, headers)
    assert response.status_code == 202, response.text


async def is_ready(cemesh: RunningCemesh, path: str) -> bool:
    """Whether the object at ``path`` is Ready (an API write syncs before it answers)."""
    return ready((await cemesh.client.get(path)).json())


@pytest.mark.parametrize("bus", list(DURABLE_BUSES))
async def test_deleting_a_broker_or_channel_deletes_its_topic_on_the_server(
    bus: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The Broker's and the Channel's topics exist on the server while they do, and are gone
    once they are deleted; the Broker applied again starts on an empty topic, and its Trigger,
    which outlived it, gets what is sent then and nothing of before."""
    row: DurableBus = DURABLE_BUSES[bus]
    server = request.getfixturevalue(row.server_fixture)
    exists = EXISTS[bus]
    name = f"b-{uuid.uuid4().hex[:8]}"
    settings = {"default_channel": row.channel_kind, **row.settings(server)}
    async with RecordingSubscriber() as sub, running_cemesh(tmp_path, **settings) as cemesh:
        applied = await cemesh.apply(broker(name)) + await cemesh.apply(
            trigger(f"{name}-t", name, sub.url)
        )
        applied += await cemesh.apply(channel(f"{name}-ch"))
        assert all(ready(obj) for obj in applied[:2])
        assert await is_ready(cemesh, f"{CHANNELS}/{name}-ch")
        await send(cemesh, f"/default/{name}", "before")
        await send(cemesh, f"/channels/default/{name}-ch", "to-the-channel")
        await sub.wait_for(1)
        assert await exists(server, broker_topic("default", name))
        assert await exists(server, channel_topic("default", f"{name}-ch"))

        response = await cemesh.client.delete(f"{BROKERS}/{name}")
        assert response.status_code == 200, response.text
        assert not await exists(server, broker_topic("default", name))
        response = await cemesh.client.delete(f"{CHANNELS}/{name}-ch")
        assert response.status_code == 200, response.text
        async with asyncio.timeout(60):  # the backing channel goes by garbage collection
            while await exists(server, channel_topic("default", f"{name}-ch")):
                await cemesh.runtime.controller.sync()

        sub.received.clear()
        await cemesh.apply(broker(name))
        assert await is_ready(cemesh, f"{TRIGGERS}/{name}-t")
        await send(cemesh, f"/default/{name}", "after")
        [received] = await sub.wait_for(1)
        assert received.event is not None and received.event.id == "after"


async def test_a_deleted_brokers_topic_goes_only_once_the_data_plane_stopped_serving_it(
    tmp_path: Path,
) -> None:
    """Memory bus, white-box: the controller deletes the topic after the snapshot without the
    Broker was applied (the ingress no longer knows it), exactly once, on the bus the Broker's
    status records; deleting a Trigger deletes no topic."""
    async with RecordingSubscriber() as sub, running_cemesh(tmp_path) as cemesh:
        runtime = cemesh.runtime
        calls: list[tuple[str, str | None, bool]] = []
        delete = runtime.delete_topic

        async def spy(topic: str, bus: str | None) -> None:
            served = any(spec.topic == topic for spec in runtime.ingress.snapshot.brokers.values())
            calls.append((topic, bus, served))
            await delete(topic, bus)

        runtime.controller._delete_topic = spy  # white-box: watch the controller's callback
        await cemesh.apply(broker("b"))
        await cemesh.apply(trigger("t", "b", sub.url))
        await send(cemesh, "/default/b", "one")
        await sub.wait_for(1)
        assert broker_topic("default", "b") in runtime.buses["memory"]._topics

        response = await cemesh.client.delete(f"{TRIGGERS}/t")
        assert response.status_code == 200, response.text
        assert calls == []
        response = await cemesh.client.delete(f"{BROKERS}/b")
        assert response.status_code == 200, response.text
        assert calls == [(broker_topic("default", "b"), "memory", False)]


async def test_a_topic_another_replica_created_again_is_deleted_once_more(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Redis: after the Broker's stream was deleted, a replica still serving the Broker (until
    its next poll) re-creates it, as its consumer does on NOGROUP (here: a raw XGROUP CREATE
    MKSTREAM); the replica that saw the deletion deletes it once more a few resync intervals
    later, so nothing is left behind."""
    import redis.asyncio as redis

    row = DURABLE_BUSES["redis"]
    server = request.getfixturevalue(row.server_fixture)
    name = f"b-{uuid.uuid4().hex[:8]}"
    topic = broker_topic("default", name)
    settings = {"default_channel": row.channel_kind, "resync_interval": 0.5, **row.settings(server)}
    raw = redis.Redis.from_url(server.url)
    try:
        async with RecordingSubscriber() as sub, running_cemesh(tmp_path, **settings) as cemesh:
            await cemesh.apply(broker(name))
            await cemesh.apply(trigger(f"{name}-t", name, sub.url))
            assert await raw.exists(topic)
            response = await cemesh.client.delete(f"{BROKERS}/{name}")
            assert response.status_code == 200, response.text
            assert not await raw.exists(topic)

            await raw.xgroup_create(topic, "lagging-replica", id="$", mkstream=True)
            async with asyncio.timeout(30):  # two resync intervals, and room for the load
                while await raw.exists(topic):  # noqa: ASYNC110 (no event to await)
                    await asyncio.sleep(0.1)  # polling interval of a bounded wait on the server
    finally:
        await raw.aclose()
