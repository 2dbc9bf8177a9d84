"""cemesh as a process: SIGTERM drains in-flight deliveries; resources survive a restart."""

from __future__ import annotations

import asyncio
import json
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
        log = mesh.log()
        assert "drain timeout" not in log
        # It said what it waited for: one delivery, of which Trigger, for at most how long.
        [waiting] = [json.loads(line) for line in log.splitlines() if "draining: waiting" in line]
        assert waiting["in_flight"] == 1
        assert waiting["by_consumer"] == {"trigger default/all": 1}
        assert waiting["drain_timeout"] == 30.0


async def test_sigterm_on_the_memory_bus_counts_the_events_it_loses(tmp_path: Path) -> None:
    """The in-memory bus keeps nothing across a restart: what is still queued when the drain
    timeout ends is lost, and the log says how many."""

    async def slow(_: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        await asyncio.sleep(5.0)
        return (202, [], b"")

    settings = {"drain_timeout": "1", "dispatch_concurrency": "1"}
    async with (
        RecordingSubscriber(slow) as subscriber,
        cemesh_process(tmp_path, **settings) as mesh,
    ):
        async with mesh.client() as client:
            await _apply_broker_and_trigger(client, subscriber.url)
            for index in range(5):
                response = await client.post("/default/default", headers=_event(f"q-{index}"))
                assert response.status_code == 202
        await subscriber.wait_for(1)  # one in flight, four queued behind it
        await mesh.stop(signal.SIGTERM)
        lines = [json.loads(line) for line in mesh.log().splitlines() if line.startswith("{")]
    [timeout] = [line for line in lines if line["message"].startswith("drain timeout")]
    assert timeout["in_flight"] == 1
    [lost] = [line for line in lines if line["message"].startswith("in-memory bus closed")]
    assert lost["lost"] == 5  # the one cut off in flight and the four queued
    assert list(lost["by_group"].values()) == [5]


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
