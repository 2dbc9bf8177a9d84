"""A deleted Trigger's consumer group is deleted on its bus; a Trigger not Ready keeps its group.

Through a real cemesh (``tests/support/cemesh.py``) with a real HTTP subscriber: on the memory
bus (checked white-box, the group being in-process state) and on Redis Streams (checked with a
raw client: XINFO GROUPS). Deleting a Trigger through the API must remove its group, so that
a durable bus does not keep collecting events for it forever (K61 is the reverse: a Trigger is
Ready only once its group is live). A Trigger that is merely not Ready (here: its subscriber is a
reference to a missing object) must keep its group, and get what it held once Ready again.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as redis

from adapters.memory import MemoryBus
from broker.core.spec import broker_topic, trigger_group
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.servers.redis import RedisServer
from tests.support.subscriber import Received, RecordingSubscriber, Reply

TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
TOPIC = broker_topic("default", "default")
MISSING = {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "missing"}}


def broker() -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "default"},
    }


def trigger(name: str, subscriber: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": "default", "subscriber": subscriber},
    }


def ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def post_event(cemesh: RunningCemesh, source: str, index: int) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"e-{index}",
        "ce-source": source,
        "ce-type": "dev.cemesh.test.retire",
    }
    response = await cemesh.post_event("/default/default", headers)
    assert response.status_code == 202, response.text


async def apply_all(cemesh: RunningCemesh, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [applied for obj in objects for applied in await cemesh.apply(obj)]


async def delete_trigger(cemesh: RunningCemesh, name: str) -> None:
    response = await cemesh.client.delete(f"{TRIGGERS}/{name}")
    assert response.status_code == 200, response.text


def memory_groups(cemesh: RunningCemesh) -> dict[str, Any]:
    bus = cemesh.runtime.buses["memory"]
    assert isinstance(bus, MemoryBus)
    return dict(bus._topics.get(TOPIC, {}))  # white-box: the memory bus's groups of the topic


async def test_memory_bus_deleted_trigger_group_goes_not_ready_trigger_group_stays(
    tmp_path: Path,
) -> None:
    """Memory bus: a Trigger deleted while its event is in flight leaves no group behind; one
    made not Ready keeps its group with the event it held, and gets it once Ready again."""
    release = asyncio.Event()

    async def respond(request: Received) -> Reply:
        if request.path.startswith("/hang/"):
            await release.wait()  # in flight until the test ends
        return (202, [], b"")

    async with RecordingSubscriber(respond) as sub, running_cemesh(tmp_path) as cemesh:
        try:
            applied = await apply_all(
                cemesh,
                [
                    broker(),
                    trigger("gone", {"uri": f"{sub.url}/hang/gone"}),
                    trigger("idle", {"uri": f"{sub.url}/hang/idle"}),
                ],
            )
            groups = {
                obj["metadata"]["name"]: trigger_group(obj["metadata"]["uid"])
                for obj in applied[1:]
            }
            assert all(ready(obj) for obj in applied)
            await post_event(cemesh, f"/retire/{uuid.uuid4().hex}", 1)
            await sub.wait_for(2)  # one delivery per Trigger, both hanging
            assert set(memory_groups(cemesh)) == set(groups.values())

            [idle] = await cemesh.apply(trigger("idle", MISSING))
            assert not ready(idle)
            await delete_trigger(cemesh, "gone")

            left = memory_groups(cemesh)
            assert set(left) == {groups["idle"]}, "the deleted Trigger's group is still there"
            assert left[groups["idle"]].held == 1  # the in-flight event went back to the group

            [idle] = await cemesh.apply(trigger("idle", {"uri": f"{sub.url}/ok/idle"}))
            assert ready(idle)
            [again] = [r for r in await sub.wait_for(3) if r.path == "/ok/idle"]
            assert again.event is not None and again.event.id == "e-1"
        finally:
            release.set()


async def redis_groups(client: redis.Redis) -> dict[str, dict[str, Any]]:
    return {group["name"].decode(): group for group in await client.xinfo_groups(TOPIC)}


async def test_redis_bus_deleted_trigger_group_is_destroyed_not_ready_trigger_group_stays(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Redis Streams: deleting a Trigger destroys its consumer group on the server (XINFO
    GROUPS); a Trigger that is not Ready keeps its group, which collects the events published
    meanwhile and delivers them once the Trigger is Ready again."""
    source = f"/retire/{uuid.uuid4().hex}"
    raw = redis.Redis.from_url(redis_server.url)
    await raw.delete(TOPIC)  # the session's server is shared: start from no stream
    settings = {
        "default_channel": "RedisStreamChannel",
        "redis_url": redis_server.url,
        "redis_visibility_timeout": 2.0,
    }
    try:
        async with RecordingSubscriber() as sub, running_cemesh(tmp_path, **settings) as cemesh:
            applied = await apply_all(
                cemesh,
                [
                    broker(),
                    trigger("gone", {"uri": f"{sub.url}/gone"}),
                    trigger("idle", {"uri": f"{sub.url}/idle"}),
                ],
            )
            assert all(ready(obj) for obj in applied)
            groups = {
                obj["metadata"]["name"]: trigger_group(obj["metadata"]["uid"])
                for obj in applied[1:]
            }
            for index in range(3):
                await post_event(cemesh, source, index)
            await sub.wait_for(6)
            assert set(await redis_groups(raw)) == set(groups.values())

            [idle] = await cemesh.apply(trigger("idle", MISSING))
            assert not ready(idle)
            await delete_trigger(cemesh, "gone")
            left = await redis_groups(raw)
            assert set(left) == {groups["idle"]}, "the deleted Trigger's group is still there"

            # Not Ready: nobody consumes the group, but it keeps collecting events.
            for index in range(3, 6):
                await post_event(cemesh, source, index)
            assert (await redis_groups(raw))[groups["idle"]]["lag"] == 3
            sub.received.clear()
            [idle] = await cemesh.apply(trigger("idle", {"uri": f"{sub.url}/idle"}))
            assert ready(idle)
            received = await sub.wait_for(3)
            assert sorted(r.event.id for r in received if r.event is not None) == [
                "e-3",
                "e-4",
                "e-5",
            ]
            assert all(r.path == "/idle" for r in received)
    finally:
        await raw.delete(TOPIC)
        await raw.aclose()


async def test_garbage_collected_subscriptions_of_a_deleted_sequence_have_their_groups_retired(
    tmp_path: Path,
) -> None:
    """Deleting a Sequence deletes its owned Subscriptions (garbage collection); each of their
    groups is retired, after the dispatcher stopped consuming it."""
    async with RecordingSubscriber() as sub, running_cemesh(tmp_path) as cemesh:
        runtime = cemesh.runtime
        retired: list[tuple[str, str, bool]] = []
        retire = runtime.retire_groups

        async def spy(obj: dict[str, Any]) -> None:
            still_consumed = obj["metadata"]["uid"] in runtime.dispatcher.live
            retired.append((obj["kind"], obj["metadata"]["uid"], still_consumed))
            await retire(obj)

        runtime.controller._retire_groups = spy  # white-box: watch the controller's callback
        [seq] = await cemesh.apply(
            {
                "apiVersion": "flows.knative.dev/v1",
                "kind": "Sequence",
                "metadata": {"name": "seq"},
                "spec": {
                    "channelTemplate": {
                        "apiVersion": "messaging.knative.dev/v1",
                        "kind": "InMemoryChannel",
                    },
                    "steps": [{"uri": f"{sub.url}/one"}, {"uri": f"{sub.url}/two"}],
                },
            }
        )
        assert ready(seq)
        subscriptions = await cemesh.client.get(
            "/apis/messaging.knative.dev/v1/namespaces/default/subscriptions"
        )
        owned = {obj["metadata"]["uid"] for obj in subscriptions.json()["items"]}
        assert len(owned) == 2

        response = await cemesh.client.delete(
            "/apis/flows.knative.dev/v1/namespaces/default/sequences/seq"
        )
        assert response.status_code == 200, response.text
        assert {uid for kind, uid, _ in retired if kind == "Subscription"} == owned
        assert not any(still_consumed for _, _, still_consumed in retired)
