"""Channel kinds against a real cemesh: a generic Channel owns a backing channel (K136, K140).

cemesh runs in-process on a loopback port (SQLite store, in-memory bus) and subscribers are real
HTTP servers on loopback. Every management call returns after a controller sync, so what a test
reads right after a write is what the controller converged to (backing channel created, then
Ready, then the Channel Ready), with no waiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.memory import MemoryBus
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

CHANNELS = "/apis/messaging.knative.dev/v1/namespaces/default/channels"
IN_MEMORY_CHANNELS = "/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels"
KAFKA_CHANNELS = "/apis/messaging.knative.dev/v1beta1/namespaces/default/kafkachannels"
BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"


def generic_channel(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "Channel",
        "metadata": {"name": name},
        "spec": spec,
    }


def condition(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def binary_headers(event_id: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/channels",
        "ce-type": "com.example.order",
        "content-type": "application/json",
    }


async def get(mesh: RunningCemesh, path: str) -> dict[str, Any]:
    response = await mesh.client.get(path)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_k140_generic_channel_gets_an_owned_in_memory_channel_and_is_ready_with_its_address(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        [channel] = await mesh.apply(generic_channel("orders"))
        assert "channelTemplate" not in channel["spec"]  # the default kind applies at reconcile
        url = f"{mesh.url}/channels/default/orders"
        assert condition(channel)["status"] == "True", channel["status"]
        assert condition(channel, "BackingChannelReady")["status"] == "True"
        assert channel["status"]["address"]["url"] == url
        assert channel["status"]["channel"] == {
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "InMemoryChannel",
            "name": "orders",
            "namespace": "default",
        }

        backing = await get(mesh, f"{IN_MEMORY_CHANNELS}/orders")
        [owner] = backing["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "Channel",
            "name": "orders",
            "uid": channel["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert backing["metadata"]["labels"] == {"messaging.knative.dev/channel": "orders"}
        assert condition(backing)["status"] == "True"
        assert backing["status"]["address"]["url"] == url


async def test_k138_subscription_on_a_generic_channel_receives_events_posted_to_it(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as subscriber:
        await mesh.apply(generic_channel("orders"))
        [subscription] = await mesh.apply(
            f"""
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata:
  name: orders-sub
spec:
  channel:
    apiVersion: messaging.knative.dev/v1
    kind: Channel
    name: orders
  subscriber:
    uri: {subscriber.url}/orders
"""
        )
        assert condition(subscription)["status"] == "True", subscription["status"]
        channel = await get(mesh, f"{CHANNELS}/orders")
        assert channel["status"]["subscribers"] == [
            {"uid": subscription["metadata"]["uid"], "observedGeneration": 1, "ready": "True"}
        ]

        response = await mesh.post_event(
            "/channels/default/orders", binary_headers("o-1"), b'{"n": 1}'
        )
        assert response.status_code == 202, response.text
        [received] = await subscriber.wait_for(1)
        assert received.path == "/orders"
        assert received.event is not None
        assert received.event.id == "o-1"
        assert received.body == b'{"n": 1}'


async def test_k140_channel_delivery_change_is_carried_to_the_backing_channel(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(generic_channel("orders"))
        await mesh.apply(generic_channel("orders", delivery={"retry": 3}))
        backing = await get(mesh, f"{IN_MEMORY_CHANNELS}/orders")
        assert backing["spec"] == {"delivery": {"retry": 3}}
        assert backing["metadata"]["generation"] == 2


async def test_deleting_a_channel_deletes_its_backing_channel_and_nothing_else(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(generic_channel("orders"))
        await mesh.apply(
            {
                "apiVersion": "messaging.knative.dev/v1",
                "kind": "InMemoryChannel",
                "metadata": {"name": "standalone"},
            }
        )
        response = await mesh.client.delete(f"{CHANNELS}/orders")
        assert response.status_code == 200, response.text

        gone = await mesh.client.get(f"{IN_MEMORY_CHANNELS}/orders")
        assert gone.status_code == 404, gone.text
        # K144: no channel answers there any more.
        post = await mesh.post_event("/channels/default/orders", binary_headers("o-2"), b"{}")
        assert post.status_code == 404
        # An InMemoryChannel nobody owns is not garbage.
        assert condition(await get(mesh, f"{IN_MEMORY_CHANNELS}/standalone"))["status"] == "True"


async def test_k140_channel_with_a_kafka_template_creates_an_owned_kafka_channel(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        # The kafka adapter may not be available in this checkout: an open memory bus stands in
        # under its name, so this checks the control plane only. No event is sent through it.
        stand_in = MemoryBus({})
        await stand_in.open()
        mesh.runtime.buses["kafka"] = stand_in

        template = {
            "apiVersion": "messaging.knative.dev/v1beta1",
            "kind": "KafkaChannel",
            "spec": {"numPartitions": 2, "replicationFactor": 1},
        }
        [channel] = await mesh.apply(generic_channel("payments", channelTemplate=template))
        assert channel["status"]["channel"]["kind"] == "KafkaChannel"
        assert channel["status"]["channel"]["apiVersion"] == "messaging.knative.dev/v1beta1"
        assert condition(channel)["status"] == "True", channel["status"]

        kafka = await get(mesh, f"{KAFKA_CHANNELS}/payments")
        assert kafka["spec"] == {"numPartitions": 2, "replicationFactor": 1}
        [owner] = kafka["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("Channel", channel["metadata"]["uid"])
        missing = await mesh.client.get(f"{IN_MEMORY_CHANNELS}/payments")
        assert missing.status_code == 404

        assert (await mesh.client.delete(f"{CHANNELS}/payments")).status_code == 200
        assert (await mesh.client.get(f"{KAFKA_CHANNELS}/payments")).status_code == 404


async def test_k59_broker_backed_by_a_config_map_is_ready_once_the_config_map_exists(
    tmp_path: Path,
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "config-br-default-channel",
        "namespace": "knative-eventing",
    }
    async with running_cemesh(tmp_path) as mesh:
        [broker] = await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
                "spec": {"config": config},
            }
        )
        assert condition(broker)["status"] == "False"
        assert condition(broker, "ChannelReady")["reason"] == "ConfigNotFound"
        rejected = await mesh.post_event("/default/default", binary_headers("b-1"), b"{}")
        assert rejected.status_code == 404

        await mesh.apply(
            """
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-br-default-channel
  namespace: knative-eventing
data:
  channel-template-spec: |
    apiVersion: messaging.knative.dev/v1
    kind: InMemoryChannel
"""
        )
        broker = await get(mesh, f"{BROKERS}/default")
        assert condition(broker)["status"] == "True", broker["status"]
        assert broker["status"]["annotations"] == {
            "knative.dev/channelAPIVersion": "messaging.knative.dev/v1",
            "knative.dev/channelKind": "InMemoryChannel",
            "knative.dev/channelName": "default-kne-trigger",
        }
        accepted = await mesh.post_event("/default/default", binary_headers("b-2"), b"{}")
        assert accepted.status_code == 202


async def test_a_channel_whose_bus_cannot_open_does_not_break_other_resources(
    tmp_path: Path,
) -> None:
    # Nothing listens on port 1: the kafka bus (when its adapter is installed) cannot connect.
    async with running_cemesh(tmp_path, kafka_bootstrap_servers="127.0.0.1:1") as mesh:
        template = {"apiVersion": "messaging.knative.dev/v1beta1", "kind": "KafkaChannel"}
        response = await mesh.client.post(
            CHANNELS, json=generic_channel("payments", channelTemplate=template)
        )
        assert response.status_code == 201, response.text
        response = await mesh.client.post(CHANNELS, json=generic_channel("orders"))
        assert response.status_code == 201, response.text
        assert condition(response.json())["status"] == "True"
        kafka = (await mesh.client.get(f"{KAFKA_CHANNELS}/payments")).json()
        bus_ready = next(c for c in kafka["status"]["conditions"] if c["type"] == "BusReady")
        assert bus_ready["status"] == "False" and bus_ready["reason"] == "BusUnavailable"
        assert "kafka" in bus_ready["message"]
        readyz = await mesh.client.get("/readyz")
        assert readyz.status_code == 503 and "kafka" in readyz.text
