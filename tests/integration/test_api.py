"""The management API: Kubernetes-style REST, Status errors, resource status (K54-K67, K163)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.cemesh import running_cemesh

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
SECRETS = "/api/v1/namespaces/default/secrets"


def _ready(obj: dict) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


async def test_broker_is_ready_with_its_address(tmp_path: Path) -> None:
    """K26/K36: a Ready Broker exposes status.address.url = base/{ns}/{name}."""
    async with running_cemesh(tmp_path) as mesh:
        created = await mesh.client.post(
            BROKERS,
            json={
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["metadata"]["uid"] and body["metadata"]["generation"] == 1
        assert _ready(body)["status"] == "True"
        assert body["status"]["address"]["url"] == f"{mesh.url}/default/default"
        assert body["status"]["observedGeneration"] == 1


async def test_trigger_before_broker_is_not_ready_then_becomes_ready(tmp_path: Path) -> None:
    """K56: a Trigger may precede its Broker; Ready=False with a reason until it exists."""
    async with running_cemesh(tmp_path) as mesh:
        trigger = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "early"},
            "spec": {"broker": "later", "subscriber": {"uri": "http://127.0.0.1:9/"}},
        }
        created = (await mesh.client.post(TRIGGERS, json=trigger)).json()
        assert _ready(created)["status"] == "False"
        assert _ready(created)["reason"]
        assert created["metadata"]["labels"]["eventing.knative.dev/broker"] == "later"  # K67
        await mesh.client.post(
            BROKERS,
            json={
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "later"},
            },
        )
        now = (await mesh.client.get(f"{TRIGGERS}/early")).json()
        assert _ready(now)["status"] == "True"
        assert now["status"]["subscriberUri"] == "http://127.0.0.1:9/"  # K57


async def test_invalid_resource_gets_422_status_naming_the_field(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        response = await mesh.client.post(
            TRIGGERS,
            json={
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "bad"},
                "spec": {
                    "broker": "default",
                    "subscriber": {"uri": "http://127.0.0.1:9/"},
                    "delivery": {"backoffPolicy": "sometimes"},
                },
            },
        )
        assert response.status_code == 422
        status = response.json()
        assert status["kind"] == "Status" and status["reason"] == "Invalid"
        assert "spec.delivery.backoffPolicy" in status["message"]


async def test_trigger_broker_is_immutable(tmp_path: Path) -> None:
    """K54: spec.broker cannot change."""
    async with running_cemesh(tmp_path) as mesh:
        trigger = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {"broker": "a", "subscriber": {"uri": "http://127.0.0.1:9/"}},
        }
        assert (await mesh.client.post(TRIGGERS, json=trigger)).status_code == 201
        trigger["spec"]["broker"] = "b"
        response = await mesh.client.put(f"{TRIGGERS}/t", json=trigger)
        assert response.status_code == 422
        assert "spec.broker" in response.json()["message"]


async def test_errors_are_kubernetes_status_bodies(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        missing = await mesh.client.get(f"{BROKERS}/nope")
        assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
        unknown = await mesh.client.get("/apis/eventing.knative.dev/v1/namespaces/default/widgets")
        assert unknown.status_code == 404
        not_json = await mesh.client.post(
            BROKERS, content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json()["kind"] == "Status"
        broker = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "dup"},
        }
        assert (await mesh.client.post(BROKERS, json=broker)).status_code == 201
        dup = await mesh.client.post(BROKERS, json=broker)
        assert dup.status_code == 409 and dup.json()["reason"] == "AlreadyExists"


async def test_list_filters_by_label_selector(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        for name, team in (("a", "red"), ("b", "blue")):
            await mesh.client.post(
                BROKERS,
                json={
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "metadata": {"name": name, "labels": {"team": team}},
                },
            )
        listed = (await mesh.client.get(BROKERS, params={"labelSelector": "team=red"})).json()
        assert listed["kind"] == "BrokerList"
        assert [item["metadata"]["name"] for item in listed["items"]] == ["a"]
        every = (await mesh.client.get("/apis/eventing.knative.dev/v1/brokers")).json()
        assert len(every["items"]) == 2


async def test_secret_takes_string_data_and_data_like_kubernetes(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        response = await mesh.client.post(
            SECRETS,
            json={
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "gh"},
                "stringData": {"token": "s3cret"},
                "data": {"other": "YWJj"},
            },
        )
        assert response.status_code == 201, response.text
        secret = response.json()
        assert secret["data"] == {"token": "czNjcmV0", "other": "YWJj"}
        assert "stringData" not in secret


async def test_delete_removes_the_resource(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.client.post(
            BROKERS,
            json={
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "gone"},
            },
        )
        assert (await mesh.client.delete(f"{BROKERS}/gone")).status_code == 200
        assert (await mesh.client.get(f"{BROKERS}/gone")).status_code == 404
        assert (await mesh.client.post("/default/gone", content=b"")).status_code == 404


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        assert (await mesh.client.get("/healthz")).status_code == 200
        assert (await mesh.client.get("/readyz")).status_code == 200


async def test_concurrent_writes_share_syncs_and_each_answer_shows_its_object_reconciled(
    tmp_path: Path,
) -> None:
    """Issue 14: every write waits for a sync that saw it, but concurrent ones share syncs."""
    async with running_cemesh(tmp_path) as mesh:
        broker = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}
        await mesh.client.post(BROKERS, json={**broker, "metadata": {"name": "default"}})
        controller = mesh.app.runtime.controller
        shared_before = controller.syncs_shared

        def trigger(index: int) -> dict:
            return {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": f"t{index}"},
                "spec": {"broker": "default", "subscriber": {"uri": f"http://127.0.0.1:9/{index}"}},
            }

        answers = await asyncio.gather(
            *(mesh.client.post(TRIGGERS, json=trigger(index)) for index in range(24))
        )
        for answer in answers:
            assert answer.status_code == 201, answer.text
            assert _ready(answer.json())["status"] == "True"  # its sync saw it
        assert controller.syncs_shared > shared_before
        assert mesh.app.runtime.dispatcher.live >= {a.json()["metadata"]["uid"] for a in answers}
