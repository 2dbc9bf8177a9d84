"""Nothing lost on a crash (issue 3, item 3): SIGKILL cemesh mid-stream, restart it, and every
event that got a 202 still reaches the subscriber (K27, K137: accepted means durably stored).

Per durable bus: a producer POSTs N events one after another (retrying any that were not
accepted while cemesh was down); a third of the way in, cemesh is killed with SIGKILL and started
again on the same port and store. Delivered, lost (must be 0) and duplicated counts are printed
(run with ``-s`` to see them) and kept as test properties.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from tests.durability.buses import DURABLE_BUSES, DurableBus
from tests.support.process import cemesh_process
from tests.support.subscriber import RecordingSubscriber

EVENTS = 2000
KILL_AT = EVENTS // 3


def broker_and_trigger(subscriber_url: str) -> list[dict]:
    return [
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "default"},
        },
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "all"},
            "spec": {
                "broker": "default",
                "subscriber": {"uri": subscriber_url},
                "delivery": {"retry": 20, "backoffPolicy": "linear", "backoffDelay": "PT0.1S"},
            },
        },
    ]


async def apply(client: httpx.AsyncClient, objects: list[dict]) -> None:
    for obj in objects:
        plural = obj["kind"].lower() + "s"
        response = await client.post(
            f"/apis/eventing.knative.dev/v1/namespaces/default/{plural}", json=obj
        )
        assert response.status_code == 201, response.text


async def post_until_accepted(client: httpx.AsyncClient, index: int, source: str) -> int:
    """POST event ``index`` until it gets a 202; returns how many attempts were refused.

    ``source`` is unique per test: buses such as NATS de-duplicate on source + id, and tests of
    one session share a server.
    """
    refused = 0
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"e-{index}",
        "ce-source": source,
        "ce-type": "t",
        "content-type": "application/json",
    }
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(httpx.TransportError):
                response = await client.post("/default/default", headers=headers, content=b"{}")
                if response.status_code == 202:
                    return refused
            refused += 1
            await asyncio.sleep(0.05)  # cemesh is restarting: try again shortly


async def produce(
    url: str,
    indexes: asyncio.Queue[int],
    accepted: list[int],
    kill_now: asyncio.Event,
    source: str,
) -> int:
    """One producer: POST events from ``indexes`` until each is accepted; returns refusals.

    Sets ``kill_now`` once KILL_AT events were accepted in all.
    """
    refused = 0
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not indexes.empty():
            index = indexes.get_nowait()
            refused += await post_until_accepted(client, index, source)
            accepted.append(index)
            if len(accepted) >= KILL_AT:
                kill_now.set()
    return refused


async def wait_for_distinct(
    subscriber: RecordingSubscriber,
    count: int,
    timeout: float,  # noqa: ASYNC109
) -> None:
    """Until ``count`` distinct event ids arrived (duplicates after a crash do not count)."""
    try:
        async with asyncio.timeout(timeout):
            while len({r.event.id for r in subscriber.received if r.event}) < count:
                await subscriber.wait_for(len(subscriber.received) + 1, timeout=timeout)
    except TimeoutError:
        pass  # the assertion below reports what is missing


async def slow_accept(_: object) -> tuple[int, list[tuple[str, str]], bytes]:
    await asyncio.sleep(0.002)  # a subscriber with some latency, so deliveries are in flight
    return (202, [], b"")


@pytest.mark.parametrize("bus_name", list(DURABLE_BUSES))
async def test_sigkill_mid_stream_loses_no_accepted_event(
    bus_name: str, tmp_path: Path, request: pytest.FixtureRequest, record_property
) -> None:
    bus: DurableBus = DURABLE_BUSES[bus_name]
    server = request.getfixturevalue(bus.server_fixture)
    settings = {
        "default_channel": bus.channel_kind,
        "resync_interval": "0.5",
        **bus.settings(server),
    }
    indexes: asyncio.Queue[int] = asyncio.Queue()
    for index in range(EVENTS):
        indexes.put_nowait(index)
    accepted: list[int] = []
    kill_now = asyncio.Event()
    source = f"/crash/{uuid.uuid4().hex}"

    async with RecordingSubscriber(slow_accept) as subscriber:
        async with cemesh_process(tmp_path, **settings) as first:
            async with first.client() as client:
                await apply(client, broker_and_trigger(subscriber.url))
            producers = [
                asyncio.create_task(produce(first.url, indexes, accepted, kill_now, source))
                for _ in range(8)
            ]
            await asyncio.wait_for(kill_now.wait(), 60)
            await first.stop(signal.SIGKILL)  # producers and deliveries are in full flow
            killed_with = len(subscriber.received)
        async with cemesh_process(tmp_path, port=first.port, **settings):
            refused = sum(await asyncio.gather(*producers))
            await wait_for_distinct(subscriber, EVENTS, timeout=120)
            received = [r.event.id for r in subscriber.received if r.event is not None]

    unique = set(received)
    lost = {f"e-{i}" for i in range(EVENTS)} - unique
    duplicated = len(received) - len(unique)
    print(
        f"\n[{bus_name}] accepted={len(accepted)} delivered={len(unique)} lost={len(lost)} "
        f"duplicated={duplicated} delivered_before_kill={killed_with} "
        f"refused_while_down={refused}"
    )
    for key, value in (("delivered", len(unique)), ("lost", len(lost)), ("duplicated", duplicated)):
        record_property(key, value)
    assert len(accepted) == EVENTS
    assert not lost, f"{len(lost)} accepted events never arrived, e.g. {sorted(lost)[:5]}"
