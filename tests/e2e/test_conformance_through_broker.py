"""Every CloudEvents conformance case, POSTed to a Broker, reaches a Trigger's subscriber intact.

The cases come from ``../shared/fixtures/cloudevents-conformance``: an extra conformance pass
(deselected when absent, failed under CI; the project's own cases go through a Broker in
test_binding_cases_through_broker.py). Each is sent as the conformance tool sends it; the
subscriber must receive an event with exactly the case's attributes (plus
``knativearrivaltime``, K44) and its data (K51, K52, C30), in the case's spec version (K32).
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from tests.conftest import shared_fixture_dir
from tests.support.cemesh import running_cemesh
from tests.support.conformance_cases import (
    FIXTURE,
    binary_request,
    expected_attributes,
    structured_request,
    yaml_cases,
    yaml_documents,
)
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.shared_conformance

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


@pytest.mark.parametrize(("relative", "index"), yaml_cases())
async def test_conformance_case_is_accepted_and_delivered_unaltered(
    tmp_path: Path, relative: str, index: int
) -> None:
    document = yaml_documents(shared_fixture_dir(FIXTURE) / "yaml" / relative)[index]
    mode = document.get("Mode") or "binary"
    headers, body = (binary_request if mode == "binary" else structured_request)(document)

    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as subscriber:
        await mesh.apply(BROKER_AND_TRIGGER.format(url=subscriber.url))
        response = await mesh.client.post(
            "/default/default",
            headers=[(name.decode(), value.decode("utf-8")) for name, value in headers],
            content=body,
        )
        assert response.status_code == 202, response.text
        [received] = await subscriber.wait_for(1)

    assert received.event is not None
    attributes = dict(received.event.attributes)
    assert attributes.pop("knativearrivaltime")
    assert attributes == expected_attributes(document)
    data = document.get("Data", "")
    if mode == "binary":
        assert received.body == data.encode("utf-8")
    elif data.strip():
        assert orjson.loads(received.body) == json.loads(data)
