"""The function invoker in a running cemesh (issue 5): a Service's HTTP route, its status, an
image-only container's error, a Trigger delivering to a Service in-process (K159, no extra hop),
the 90/10 split and tag URLs over real replicas, 503 + Retry-After past the hold timeout."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.cemesh import RunningCemesh, running_cemesh

FUNCTION = str(Path(__file__).parents[1] / "support" / "function_server.py")
SERVICES = "/apis/serving.knative.dev/v1/namespaces/default/services"
REVISIONS = "/apis/serving.knative.dev/v1/namespaces/default/revisions"
FAST = {"resync_interval": 0.05, "invoker_autoscaler_tick": 0.2}


def service(
    name: str = "fn",
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    traffic: list[dict[str, Any]] | None = None,
    concurrency: int = 0,
    **annotations: str,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "image": "example.com/fn",
        "command": command or [sys.executable, FUNCTION],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    if command == []:
        del container["command"]
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"annotations": annotations},
            "spec": {"containerConcurrency": concurrency, "containers": [container]},
        }
    }
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)


async def service_status(mesh: RunningCemesh, name: str = "fn") -> dict[str, Any]:
    return (await mesh.client.get(f"{SERVICES}/{name}")).json().get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def ready(mesh: RunningCemesh, name: str = "fn") -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status = await service_status(mesh, name)
        return status if condition(status, "Ready").get("status") == "True" else None

    return await eventually(check)


async def test_a_service_answers_on_its_url_keeping_path_query_headers_and_body(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service())
        status = await ready(mesh)
        url = f"{mesh.url}/services/default/fn"
        assert status["url"] == status["address"]["url"] == url
        assert status["latestReadyRevisionName"] == "fn-00001"
        response = await mesh.client.post(
            "/services/default/fn/some/path?q=1", content=b"payload", headers={"x-sleep": "0"}
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert (answer["path"], answer["body"]) == ("/some/path?q=1", "payload")
        assert (await mesh.client.post("/services/default/nope")).status_code == 404
        revisions = (await mesh.client.get(REVISIONS)).json()["items"]
        assert [r["metadata"]["name"] for r in revisions] == ["fn-00001"]

        async def replicas_reported() -> bool:
            scaling = (await service_status(mesh)).get("autoscaler") or []
            return bool(scaling) and scaling[0]["actualReplicas"] == 1

        await eventually(replicas_reported)


async def test_every_method_path_and_query_reach_the_replica_with_knatives_env(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service())
        await ready(mesh)
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "POST"):
            response = await mesh.client.request(
                method, "/services/default/fn/items/7?full=1&x=%20y", content=b"b"
            )
            assert response.status_code == 200, (method, response.text)
            answer = response.json()
            assert (answer["method"], answer["path"]) == (method, "/items/7?full=1&x=%20y")
            assert answer["body"] == "b"
            assert answer["env"] == {
                "K_SERVICE": "fn",
                "K_REVISION": "fn-00001",
                "K_CONFIGURATION": "fn",
            }


async def test_a_request_past_timeout_seconds_gets_504_and_the_service_keeps_serving(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        manifest = service()
        manifest["spec"]["template"]["spec"]["timeoutSeconds"] = 1
        await mesh.apply(manifest)
        await ready(mesh)
        slow = await mesh.client.get("/services/default/fn", headers={"x-sleep": "3"})
        assert slow.status_code == 504, slow.text
        assert "timeoutSeconds 1" in slow.json()["message"]
        fast = await mesh.client.get("/services/default/fn")
        assert fast.status_code == 200


async def test_an_image_only_service_is_not_ready_naming_the_command_field(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service(command=[]))

        async def failed() -> dict[str, Any] | None:
            status = await service_status(mesh)
            ready_condition = condition(status, "Ready")
            return ready_condition if ready_condition.get("status") == "False" else None

        ready_condition = await eventually(failed)
        assert "spec.template.spec.containers[0].command" in ready_condition["message"]
        assert "process backend" in ready_condition["message"]
        response = await mesh.client.post("/services/default/fn")
        assert response.status_code == 503  # it exists: retryable, never 404
        assert response.headers["retry-after"]


async def test_a_trigger_delivers_events_to_a_service_in_process(tmp_path: Path) -> None:
    """K159: subscriber ref Service; the dispatcher calls the invoker directly (no HTTP hop)."""
    record = tmp_path / "events.jsonl"
    async with running_cemesh(tmp_path, **FAST) as mesh:
        invoker = mesh.runtime.component("invoker")
        calls: list[str] = []
        original = invoker.invoke

        async def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[1])
            return await original(*args, **kwargs)

        invoker.invoke = counting
        await mesh.apply(service(env={"RECORD_FILE": str(record)}))
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "to-fn"},
                "spec": {
                    "broker": "default",
                    "subscriber": {
                        "ref": {
                            "apiVersion": "serving.knative.dev/v1",
                            "kind": "Service",
                            "name": "fn",
                        }
                    },
                },
            }
        )
        await ready(mesh)

        async def trigger_resolved() -> bool:
            path = "/apis/eventing.knative.dev/v1/namespaces/default/triggers/to-fn"
            trigger = (await mesh.client.get(path)).json()
            return trigger["status"].get("subscriberUri") == f"{mesh.url}/services/default/fn"

        await eventually(trigger_resolved)  # a Trigger to a Service resolves once it serves
        headers = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/t", "ce-type": "t"}
        assert (await mesh.client.post("/default/default", headers=headers)).status_code == 202
        lines = await eventually(lambda: record.exists() and record.read_text().splitlines())
        assert '"ce_id": "e-1"' in lines[0]
        assert calls == ["fn"]  # went through the invoker in-process


async def test_a_90_10_split_and_a_tag_route_over_two_revisions(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service(env={"FUNCTION_NAME": "blue"}))
        await ready(mesh)
        await mesh.apply(
            service(
                env={"FUNCTION_NAME": "green"},
                traffic=[
                    {"revisionName": "fn-00001", "percent": 90},
                    {"latestRevision": True, "percent": 10, "tag": "green"},
                ],
            )
        )

        async def split_ready() -> dict[str, Any] | None:
            status = await service_status(mesh)
            return status if status.get("latestReadyRevisionName") == "fn-00002" else None

        status = await eventually(split_ready)
        assert status["traffic"][1]["url"] == f"{mesh.url}/services/default/fn/tags/green"
        invoker = mesh.runtime.component("invoker")

        async def one() -> str:
            response = await invoker.invoke("default", "fn", None, "/", [], b"")
            assert response.status == 200
            return str(response.body.split(b'"name": "')[1].split(b'"')[0].decode())

        counts: Counter[str] = Counter()
        for _ in range(10):
            counts.update(await asyncio.gather(*(one() for _ in range(100))))
        assert sum(counts.values()) == 1000
        assert 850 <= counts["blue"] <= 950, counts
        assert 50 <= counts["green"] <= 150, counts
        for _ in range(5):
            response = await mesh.client.post("/services/default/fn/tags/green/x")
            assert response.json()["name"] == "green"
            assert response.json()["path"] == "/x"
        assert (await mesh.client.post("/services/default/fn/tags/nope")).status_code == 404


async def test_past_the_hold_timeout_a_request_gets_503_with_retry_after(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, invoker_hold_timeout=0.3, **FAST) as mesh:
        await mesh.apply(service(concurrency=1, **{"autoscaling.knative.dev/max-scale": "1"}))
        await ready(mesh)
        busy = asyncio.create_task(
            mesh.client.post("/services/default/fn", headers={"x-sleep": "3"})
        )

        async def held() -> bool:
            return (
                mesh.runtime.component("invoker").revision("default", "fn-00001").activator.active
                == 1
            )

        await eventually(held)
        response = await mesh.client.post("/services/default/fn")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert (await busy).status_code == 200


@pytest.mark.parametrize("kind", ["services", "revisions"])
async def test_cemesh_get_lists_services_and_revisions(tmp_path: Path, kind: str) -> None:
    from broker.cli import render_table

    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service())
        await ready(mesh)
        path = f"/apis/serving.knative.dev/v1/namespaces/default/{kind}"

        async def all_ready() -> list[dict[str, Any]] | None:
            items = (await mesh.client.get(path)).json()["items"]
            ok = all(
                condition(i.get("status") or {}, "Ready").get("status") == "True" for i in items
            )
            return items if items and ok else None

        items = await eventually(all_ready)
        kind_name = "Service" if kind == "services" else "Revision"
        table = render_table(kind_name, items, now=datetime.now(UTC), wide=True)
        header, row = table.splitlines()
        assert "REPLICAS" in header and "SCALING" in header
        assert row.split()[0] == ("fn" if kind == "services" else "fn-00001")
        assert "True" in row
