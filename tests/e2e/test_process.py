"""cemesh as a process: SIGTERM drains in-flight deliveries; resources survive a restart."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from tests.support.process import cemesh_process
from tests.support.subscriber import Received, RecordingSubscriber

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"


async def _apply_broker_and_trigger(client: httpx.AsyncClient, subscriber_url: str) -> None:
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "default"},
    }
    trigger = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "all"},
        "spec": {"broker": "default", "subscriber": {"uri": subscriber_url}},
    }
    assert (await client.post(BROKERS, json=broker)).status_code == 201
    assert (await client.post(TRIGGERS, json=trigger)).status_code == 201


def _event(id_: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": id_, "ce-source": "/p", "ce-type": "t"}


async def test_sigterm_waits_for_in_flight_delivery_before_exit(tmp_path: Path) -> None:
    """Operations: SIGTERM lets a delivery in flight finish, then exits 0."""
    finished: list[float] = []

    async def slow(_: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        await asyncio.sleep(1.0)
        finished.append(time.monotonic())
        return (202, [], b"")

    async with RecordingSubscriber(slow) as subscriber, cemesh_process(tmp_path) as mesh:
        async with mesh.client() as client:
            await _apply_broker_and_trigger(client, subscriber.url)
            response = await client.post("/default/default", headers=_event("slow-1"))
            assert response.status_code == 202
        await subscriber.wait_for(1)  # the delivery is now in flight
        code = await mesh.stop(signal.SIGTERM)
        exited = time.monotonic()
        # uvicorn re-raises the signal once shut down cleanly, so -SIGTERM is a clean exit too.
        assert code in (0, -signal.SIGTERM), mesh.log()
        assert finished and finished[0] <= exited  # the response was awaited, not cut off
        assert len(subscriber.received) == 1  # and not retried
        assert "drain timeout" not in mesh.log()


async def test_resources_survive_a_restart(tmp_path: Path) -> None:
    """The store is durable: after a restart the Broker and Trigger route events again."""
    async with RecordingSubscriber() as subscriber:
        async with cemesh_process(tmp_path) as first:
            async with first.client() as client:
                await _apply_broker_and_trigger(client, subscriber.url)
            assert await first.stop() in (0, -signal.SIGTERM)
        async with (
            cemesh_process(tmp_path, port=first.port) as second,
            second.client() as client,
        ):
            trigger = (await client.get(f"{TRIGGERS}/all")).json()
            ready = next(c for c in trigger["status"]["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "True"
            assert (await client.post("/default/default", headers=_event("r-1"))).status_code == 202
            [received] = await subscriber.wait_for(1)
            assert received.event is not None and received.event.id == "r-1"
