"""The project's CloudEvents HTTP request cases, POSTed to a Broker's ingress over real HTTP.

The table is tests/support/binding_cases.py (binary, structured and batched requests, valid and
invalid). One cemesh with one Broker and a catch-all Trigger serves the whole module:

- a valid request is answered ``202`` and each of its events reaches the Trigger's subscriber
  with the same attributes (plus ``knativearrivaltime``) and the same data bytes; the dispatcher
  delivers in binary mode, so typed extensions arrive in their canonical String form;
- an invalid request is answered ``400`` with a message naming the fault, and nothing of it is
  delivered (checked by the last test, after every case has run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.support.binding_cases import INVALID, VALID, BindingCase
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.asyncio(loop_scope="module")

BROKER_AND_TRIGGER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: everything
spec:
  broker: default
  subscriber:
    uri: {url}
"""


class Mesh:
    def __init__(self, mesh: RunningCemesh, subscriber: RecordingSubscriber) -> None:
        self.mesh = mesh
        self.subscriber = subscriber

    async def post(self, case: BindingCase) -> Any:
        return await self.mesh.client.post(
            "/default/default", headers=case.headers, content=case.body
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with (
        running_cemesh(tmp_path_factory.mktemp("binding-cases")) as running,
        RecordingSubscriber() as subscriber,
    ):
        await running.apply(BROKER_AND_TRIGGER.format(url=subscriber.url))
        yield Mesh(running, subscriber)


def canonical(value: str | int | bool) -> str:
    """The String form of an attribute value, as a binary-mode header carries it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def wait_for_ids(subscriber: RecordingSubscriber, ids: set[str]) -> dict[str, Any]:
    """The received requests carrying events with these ids (waits for each, bounded)."""
    found: dict[str, Any] = {}
    while True:
        for received in subscriber.received:
            if received.event is not None and received.event.id in ids:
                found[received.event.id] = received
        if set(found) == ids:
            return found
        await subscriber.wait_for(len(subscriber.received) + 1)


@pytest.mark.parametrize("case", [c.param() for c in VALID])
async def test_a_valid_request_is_accepted_and_each_event_delivered_unaltered(
    mesh: Mesh, case: BindingCase
) -> None:
    response = await mesh.post(case)
    assert response.status_code == 202, response.text

    ids = {str(expected.attributes["id"]) for expected in case.events}
    delivered = await wait_for_ids(mesh.subscriber, ids)
    for expected in case.events:
        event = delivered[str(expected.attributes["id"])].event
        attributes = {name: canonical(value) for name, value in event.attributes.items()}
        assert attributes.pop("knativearrivaltime")
        assert attributes == {n: canonical(v) for n, v in expected.attributes.items()}
        assert event.data == expected.data


@pytest.mark.parametrize("case", [c.param() for c in INVALID])
async def test_an_invalid_request_is_answered_400_naming_the_fault(
    mesh: Mesh, case: BindingCase
) -> None:
    response = await mesh.post(case)

    assert response.status_code == 400, response.text
    assert case.error is not None
    assert case.error in response.json()["message"]


async def test_nothing_of_an_invalid_request_was_delivered(mesh: Mesh) -> None:
    """Runs after every case above (file order): only ids of valid cases ever arrived."""
    valid_ids = {str(e.attributes["id"]) for c in VALID for e in c.events}
    await wait_for_ids(mesh.subscriber, valid_ids)
    arrived = [r.event.id for r in mesh.subscriber.received if r.event is not None]
    assert set(arrived) <= valid_ids
    assert len(arrived) == len(valid_ids), "each valid event was delivered once"
