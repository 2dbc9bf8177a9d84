"""The dead-letter sink fails too (issue 11, item 8): the event stays on the bus and arrives
once the sink is back (README: "If the dead-letter sink itself cannot take it, the event stays on
the bus and is tried again later"). End to end, on the in-memory bus and on every durable one:
a dispatcher that swallowed the deliverer's Nack would ack the event after the first failed
dead letter, and the sink would never see it once it recovers.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.durability.buses import DURABLE_BUSES
from tests.durability.test_crash import apply, broker_and_trigger
from tests.support.process import cemesh_process
from tests.support.subscriber import Received, RecordingSubscriber, Reply

BUSES = ["memory", *DURABLE_BUSES]


def trigger_with_dead_letter_sink(subscriber_url: str, sink_url: str, broker: str) -> list[dict]:
    return broker_and_trigger(
        subscriber_url,
        broker,
        {
            "retry": 1,
            "backoffPolicy": "linear",
            "backoffDelay": "PT0.05S",
            "deadLetterSink": {"uri": sink_url},
        },
    )


@pytest.mark.parametrize("bus_name", BUSES)
async def test_an_event_whose_dead_letter_sink_fails_arrives_once_the_sink_recovers(
    bus_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = {"resync_interval": "0.5", "dead_letter_redelivery_delay": "0.5"}
    if bus_name != "memory":
        bus = DURABLE_BUSES[bus_name]
        server = request.getfixturevalue(bus.server_fixture)
        settings |= {"default_channel": bus.channel_kind, **bus.settings(server)}
    sink_down = True

    def sink(_: Received) -> Reply:
        return (503, [], b"") if sink_down else (202, [], b"")

    event_id = f"dls-{uuid.uuid4().hex}"
    # A Broker (so a topic) of this test's own: the bus servers outlive tests, and events other
    # tests left on a shared topic would reach these subscribers too.
    broker = f"dls-{uuid.uuid4().hex[:8]}"
    async with (
        RecordingSubscriber(lambda _: (500, [], b"subscriber broken")) as subscriber,
        RecordingSubscriber(sink) as dead_letters,
        cemesh_process(tmp_path, **settings) as mesh,
    ):
        async with mesh.client(timeout=5) as client:
            await apply(
                client, trigger_with_dead_letter_sink(subscriber.url, dead_letters.url, broker)
            )
            response = await client.post(
                f"/default/{broker}",
                headers={
                    "ce-specversion": "1.0",
                    "ce-id": event_id,
                    "ce-source": "/dls",
                    "ce-type": "t",
                },
            )
            assert response.status_code == 202
        # Two rounds of (subscriber twice, sink twice): the event came back from the bus after
        # its first dead letter failed. (Pub/Sub's emulator may take a while to hand it back.)
        await dead_letters.wait_for(4, timeout=60)
        assert len(subscriber.received) >= 4, "the event was not redelivered from the bus"
        sink_down = False
        arrived = len(dead_letters.received)
        [*_, last] = await dead_letters.wait_for(arrived + 1, timeout=60)
    assert last.event is not None and last.event.id == event_id
    assert str(last.event.attributes["knativeerrorcode"]) == "500"
    assert "dead-letter sink failed too: event stays on the bus" in mesh.log()
