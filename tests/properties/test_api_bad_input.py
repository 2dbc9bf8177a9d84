"""The REST API under bad input: every kind's valid objects apply, broken ones get a 4xx.

Each example goes through a real cemesh over HTTP (``running_cemesh``, served from a thread so
hypothesis can drive it): create a valid object (201), replace it with a broken copy (PUT),
create a broken one (POST), delete what was made. No answer may be a 5xx. Bounded: a few
examples per kind, so the file runs in about a minute.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cemesh_thread import cemesh_in_thread
from tests.support.resource_samples import (
    SAMPLES,
    mutated_resources,
    resource_type,
    valid_resources,
)

KINDS = sorted(SAMPLES)
BOUNDED = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_serial = itertools.count()
# The channel kinds of the durable buses apply (not Ready): their buses point at a closed port
# and give up fast, so that each sync does not wait for a broker that is not there.
UNREACHABLE_BUSES: dict[str, Any] = {
    "kafka_bootstrap_servers": "127.0.0.1:9",
    "kafka_request_timeout_ms": 1000,
    "nats_url": "nats://127.0.0.1:9",
    "nats_connect_timeout": 0.5,
    "redis_url": "redis://127.0.0.1:9/0",
    "redis_connect_timeout": 0.5,
    "pubsub_emulator_host": "127.0.0.1:9",
    "pubsub_rpc_timeout": 0.5,
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (
        cemesh_in_thread(tmp_path_factory.mktemp("api"), **UNREACHABLE_BUSES) as cemesh,
        httpx.Client(
            base_url=cemesh.url,
            timeout=60,
            headers={"Authorization": f"Bearer {cemesh.token}"},
        ) as client,
    ):
        # What a Replay refers to must exist when it is created (checked on create).
        for kind, obj in [
            ("Broker", {"metadata": {"name": "default"}}),
            (
                "Trigger",
                {
                    "metadata": {"name": "orders"},
                    "spec": {"broker": "default", "subscriber": {"uri": "http://127.0.0.1:9/"}},
                },
            ),
            ("Archive", {"metadata": {"name": "orders"}, "spec": {"broker": "default"}}),
        ]:
            made = _send(client, "POST", resource_type(kind).collection_path("default"), obj)
            assert made.status_code == 201, made.text
        yield client


def _unique(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["name"] = f"{obj['metadata']['name']}-{next(_serial)}"
    return obj


def _no_server_error(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        assert body["kind"] == "Status" and body["code"] == response.status_code, body
        assert "Traceback" not in response.text


def _send(api: httpx.Client, method: str, path: str, obj: Any) -> httpx.Response:
    # orjson would refuse some drawn values (ints over 64 bits): send what Python's json writes.
    import json

    body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return api.request(method, path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("kind", KINDS)
@BOUNDED
@given(data=st.data())
def test_every_kind_valid_applies_and_broken_gets_4xx_never_5xx(api, kind, data):
    collection = resource_type(kind).collection_path("default")
    valid = _unique(data.draw(valid_resources(kind)))
    name = valid["metadata"]["name"]
    created = _send(api, "POST", collection, valid)
    assert created.status_code == 201, created.text

    broken = data.draw(mutated_resources(kind))
    broken_copy = copy.deepcopy(broken)
    if isinstance(broken_copy.get("metadata"), dict):
        broken_copy["metadata"]["name"] = name
    _no_server_error(_send(api, "PUT", f"{collection}/{name}", broken_copy), f"PUT {kind}")

    if isinstance(broken.get("metadata"), dict) and isinstance(broken["metadata"].get("name"), str):
        broken = _unique(broken)
    made = _send(api, "POST", collection, broken)
    _no_server_error(made, f"POST {kind}")

    for response in (created, made):
        if response.status_code == 201:
            made_name = response.json()["metadata"]["name"]
            _no_server_error(api.delete(f"{collection}/{made_name}"), f"DELETE {kind}")
