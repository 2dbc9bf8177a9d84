"""A batched request to a Broker on each durable bus (issue 14, item 4): the ingress hands the
batch to the bus at once (``publish_batch`` where the bus offers it), and still every event of a
202 reaches the Trigger's subscriber once, unaltered."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.durability.buses import DURABLE_BUSES, DurableBus
from tests.durability.test_crash import apply, broker_and_trigger
from tests.support.flows import ready_object
from tests.support.process import cemesh_process
from tests.support.subscriber import RecordingSubscriber

EVENTS = 100  # one request, as the batches


@pytest.mark.parametrize("bus_name", list(DURABLE_BUSES))
async def test_a_batch_of_100_is_accepted_whole_and_each_event_delivered_once(
    bus_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bus: DurableBus = DURABLE_BUSES[bus_name]
    server = request.getfixturevalue(bus.server_fixture)
    source = f"/batch/{uuid.uuid4().hex}"  # unique: NATS de-duplicates on source + id
    batch = [
        {
            "specversion": "1.0",
            "id": f"b-{index}",
            "source": source,
            "type": "dev.cemesh.batch",
            "partitionkey": f"key-{index % 3}",
            "data": {"n": index},
        }
        for index in range(EVENTS)
    ]
    async with (
        RecordingSubscriber() as subscriber,
        cemesh_process(tmp_path, default_channel=bus.channel_kind, **bus.settings(server)) as mesh,
        mesh.client() as client,
    ):
        await apply(client, broker_and_trigger(subscriber.url))
        # Ready once its group is subscribed: what is published from then on reaches it.
        await ready_object(client, "/apis/eventing.knative.dev/v1/namespaces/default/triggers/all")
        response = await client.post(
            "/default/default",
            headers={"content-type": "application/cloudevents-batch+json"},
            content=json.dumps(batch).encode(),
        )
        assert response.status_code == 202, response.text
        received = await subscriber.wait_for(EVENTS, timeout=60)
    ids = [r.event.id for r in received if r.event is not None]
    assert sorted(ids) == sorted(event["id"] for event in batch)  # each once, none lost
    by_id = {r.event.id: r.event for r in received if r.event is not None}
    for event in batch:
        delivered = by_id[event["id"]]
        assert delivered.get("partitionkey") == event["partitionkey"]
        assert json.loads(delivered.data or b"") == event["data"]
