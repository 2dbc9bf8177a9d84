"""The outbound guard through the API: refused destinations are a 422 naming the field; the
setting lets link-local ones through; knativeerrordata is capped to the configured size."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from broker.core.events import ERROR_DATA
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
BROKER = {
    "apiVersion": "eventing.knative.dev/v1",
    "kind": "Broker",
    "metadata": {"name": "default"},
}


def _trigger(name: str, subscriber: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": "default", "subscriber": subscriber, **spec},
    }


async def _create(cemesh: RunningCemesh, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await cemesh.client.post(TRIGGERS, json=obj)
    return response.status_code, response.json()


async def test_metadata_address_and_own_api_are_refused_with_422_naming_the_field(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as cemesh:
        status, body = await _create(
            cemesh, _trigger("imds", {"uri": "http://169.254.169.254/latest/meta-data/"})
        )
        assert status == 422 and "spec.subscriber.uri" in str(body)
        own_api = f"{cemesh.url}/apis/sources.knative.dev/v1/namespaces/default/containersources"
        status, body = await _create(cemesh, _trigger("loop", {"uri": own_api}))
        assert status == 422 and "management API" in str(body)
        status, body = await _create(
            cemesh,
            _trigger(
                "dls",
                {"uri": f"{cemesh.url}/default/default"},  # a Broker of cemesh: data plane, fine
                delivery={"deadLetterSink": {"uri": "http://[fe80::1]:9000/"}},
            ),
        )
        assert status == 422 and "spec.delivery.deadLetterSink.uri" in str(body)
        sink = {"uri": "http://169.254.169.254/"}
        source = {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "PingSource",
            "metadata": {"name": "p"},
            "spec": {"schedule": "* * * * *", "sink": sink},
        }
        response = await cemesh.client.post(
            "/apis/sources.knative.dev/v1/namespaces/default/pingsources", json=source
        )
        assert response.status_code == 422 and "spec.sink.uri" in response.text


async def test_the_setting_allows_link_local_destinations(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, allow_link_local_destinations=True) as cemesh:
        status, _ = await _create(cemesh, _trigger("imds", {"uri": "http://169.254.169.254/"}))
        assert status == 201


async def test_a_huge_error_body_is_cut_to_the_configured_size_in_knativeerrordata(
    tmp_path: Path,
) -> None:
    huge = bytes(range(256)) * 4096  # 1 MiB
    async with (
        running_cemesh(tmp_path, error_data_max_bytes=300) as cemesh,
        RecordingSubscriber(lambda r: (400, [], huge)) as failing,
        RecordingSubscriber() as sink,
    ):
        await cemesh.apply(BROKER)
        await cemesh.apply(
            _trigger("t", {"uri": failing.url}, delivery={"deadLetterSink": {"uri": sink.url}})
        )
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/s",
            "ce-type": "t",
        }
        assert (await cemesh.post_event("/default/default", headers)).status_code == 202
        [dead] = await sink.wait_for(1)
    assert dead.event is not None
    assert dead.event.get(ERROR_DATA) == base64.b64encode(huge[:300]).decode()
