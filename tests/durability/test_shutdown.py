"""SIGTERM on a durable bus (issue 11, item 7): a delivery waiting out a retry backoff does not
hold the shutdown. It is handed back to the bus at once and redelivered after the restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.durability.buses import DURABLE_BUSES, DurableBus
from tests.durability.test_crash import apply, broker_and_trigger
from tests.support.process import cemesh_process
from tests.support.subscriber import Received, RecordingSubscriber, Reply

BACKOFF_S = 120  # far longer than any shutdown may take


def broker_and_slow_retrying_trigger(subscriber_url: str, broker: str) -> list[dict]:
    return broker_and_trigger(
        subscriber_url,
        broker,
        {"retry": 3, "backoffPolicy": "linear", "backoffDelay": f"PT{BACKOFF_S}S"},
    )


@pytest.mark.parametrize("bus_name", list(DURABLE_BUSES))
async def test_sigterm_hands_a_backing_off_delivery_back_to_the_bus(
    bus_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bus: DurableBus = DURABLE_BUSES[bus_name]
    server = request.getfixturevalue(bus.server_fixture)
    settings = {
        "default_channel": bus.channel_kind,
        "resync_interval": "0.5",
        "drain_timeout": str(BACKOFF_S),  # the drain would wait the backoff out if it could
        **bus.settings(server),
    }
    healthy = False
    # A Broker (so a topic) of this test's own: the bus servers outlive tests, and events other
    # tests left on a shared topic would be delivered (and backed off) here too.
    broker = f"shutdown-{uuid.uuid4().hex[:8]}"

    def respond(_: Received) -> Reply:
        return (202, [], b"") if healthy else (503, [], b"")

    event_id = f"backoff-{uuid.uuid4().hex}"
    async with RecordingSubscriber(respond) as subscriber:
        async with cemesh_process(tmp_path, **settings) as first:
            async with first.client(timeout=5) as client:
                await apply(client, broker_and_slow_retrying_trigger(subscriber.url, broker))
                response = await client.post(
                    f"/default/{broker}",
                    headers={
                        "ce-specversion": "1.0",
                        "ce-id": event_id,
                        "ce-source": "/shutdown",
                        "ce-type": "t",
                    },
                )
                assert response.status_code == 202
            await subscriber.wait_for(1, timeout=30)  # failed once: now backing off 120 s
            started = time.monotonic()
            await first.stop(signal.SIGTERM, timeout=BACKOFF_S)
            took = time.monotonic() - started
            log = first.log()
        assert took < BACKOFF_S / 2, f"shutdown waited out the backoff ({took:.1f}s):\n{log}"
        handed = [json.loads(line) for line in log.splitlines() if "handed back" in line]
        assert [line["event_id"] for line in handed] == [event_id], log
        assert handed[0]["trigger"] == "default/all"

        healthy = True
        async with cemesh_process(tmp_path, port=first.port, **settings):
            # Redelivered from the bus after the restart (Pub/Sub's emulator may take its ack
            # deadline to hand a closed stream's message back).
            async with asyncio.timeout(90):
                while not any(
                    r.event is not None and r.event.id == event_id for r in subscriber.received[1:]
                ):
                    await subscriber.wait_for(len(subscriber.received) + 1, timeout=90)
