"""Kubernetes Events for Ready transitions (broker/controlplane/kube/events.py).

The test API server serves no core kinds, so Events are checked without it: the Event cemesh
builds validates against Kubernetes' own v1 Event schema (``kubernetes-validate``, offline), and
``KubeStore.create_event`` POSTs it where a kube-apiserver takes it, to a loopback server that
answers with the handwritten response ``tests/data/kube/core/event-created.json``. On the real
API server (tests/integration/test_kube_control_plane.py) the POST is refused (404: Events not
served), which the control loop logs and carries on from; its audit log shows the request,
and deploy/kubernetes grants it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.controlplane.kube.client import KubeConnection
from broker.controlplane.kube.events import Transition, ready_event, ready_transition
from broker.controlplane.kube.store import KubeStore
from broker.core.errors import NotFound
from tests.support.subscriber import Received, RecordingSubscriber, Reply

CORE = Path(__file__).resolve().parents[1] / "data" / "kube" / "core"
NOW = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)

BROKER = {
    "apiVersion": "eventing.knative.dev/v1",
    "kind": "Broker",
    "metadata": {"name": "default", "namespace": "shop", "generation": 1,
                 "uid": "5d1e6c2a-8f0b-4b7e-a2c4-1e9d3f6a7b80", "resourceVersion": "48210"},
}  # fmt: skip


def status(ready: str | None, reason: str = "", message: str = "") -> dict[str, Any]:
    if ready is None:
        return {}
    condition = {"type": "Ready", "status": ready, "reason": reason, "message": message}
    return {"conditions": [{"type": "Addressable", "status": "True"}, condition]}


def test_a_ready_transition_is_a_change_of_readys_status_or_reason() -> None:
    assert ready_transition(None, status("True")) == Transition("True", "", "")
    assert ready_transition(status("True"), status("True")) is None
    assert ready_transition(status("True"), status("True", "", "other message")) is None
    assert ready_transition(status("True"), status("False", "BrokerDoesNotExist", "gone")) == (
        Transition("False", "BrokerDoesNotExist", "gone")
    )
    assert ready_transition(status("False", "A"), status("False", "B")) == Transition(
        "False", "B", ""
    )
    assert ready_transition(status("True"), status(None)) is None


@given(
    st.sampled_from(["True", "False", "Unknown", None]),
    st.sampled_from(["True", "False", "Unknown", None]),
    st.sampled_from(["", "A", "B"]),
    st.sampled_from(["", "A", "B"]),
)
def test_a_transition_is_reported_exactly_when_ready_changed(
    before: str | None, after: str | None, reason_before: str, reason_after: str
) -> None:
    found = ready_transition(status(before, reason_before), status(after, reason_after))
    changed = after is not None and (before, reason_before if before else "") != (
        after,
        reason_after,
    )
    assert (found is not None) == changed
    if found is not None:
        assert (found.status, found.reason) == (after, reason_after)


@pytest.mark.parametrize(
    ("transition", "kind", "reason", "event_type"),
    [
        (Transition("True", "", ""), "Broker", "BrokerReady", "Normal"),
        (Transition("False", "BrokerDoesNotExist", "gone"), "Trigger", "TriggerNotReady",
         "Warning"),
    ],
)  # fmt: skip
def test_the_event_is_a_valid_v1_event_about_the_object(
    transition: Transition, kind: str, reason: str, event_type: str
) -> None:
    obj = {**BROKER, "kind": kind}
    event = ready_event(obj, transition, instance="host/1/abc", now=NOW)
    kubernetes_validate.validate(event, kubernetes_validate.latest_version(), strict=True)
    assert (event["reason"], event["type"]) == (reason, event_type)
    assert event["involvedObject"]["uid"] == BROKER["metadata"]["uid"]
    assert event["metadata"] == {"generateName": "default.", "namespace": "shop"}
    if transition.reason:
        assert f"{transition.reason}: {transition.message}" in event["message"]


async def test_create_event_posts_it_to_the_core_events_collection() -> None:
    answer = (CORE / "event-created.json").read_bytes()

    def respond(_: Received) -> Reply:
        return (201, [("content-type", "application/json")], answer)

    async with RecordingSubscriber(respond) as api, KubeConnection(configuration(api.url)) as c:
        event = ready_event(BROKER, Transition("True", "", ""), instance="i", now=NOW)
        created = await KubeStore(c).create_event(event)
        [request] = api.received
    assert (request.method, request.path) == ("POST", "/api/v1/namespaces/shop/events")
    assert orjson.loads(request.body) == event
    assert created == json.loads(answer)


async def test_an_api_server_without_events_is_a_not_found() -> None:
    def respond(_: Received) -> Reply:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                "reason": "NotFound", "message": "the server could not find the requested "
                "resource"}  # fmt: skip
        return (404, [("content-type", "application/json")], json.dumps(body).encode())

    async with RecordingSubscriber(respond) as api, KubeConnection(configuration(api.url)) as c:
        event = ready_event(BROKER, Transition("True", "", ""), instance="i", now=NOW)
        with pytest.raises(NotFound, match="Event about Broker shop/default"):
            await KubeStore(c).create_event(event)


def configuration(url: str) -> Any:
    from kubernetes_asyncio import client

    configuration = client.Configuration()
    configuration.host = url
    return configuration
