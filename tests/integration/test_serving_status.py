"""A Service's status tells the truth (issue 11): Ready only once a replica could serve; a
function that crashes or never listens is not Ready, with its exit code and output, within its
progress deadline; a broken rollout or an unknown revisionName leaves the last good route
serving; a Service with no Ready route answers 503 (so deliveries retry and dead-letter); the
rest of cemesh keeps working throughout."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.test_invoker import (
    FAST,
    condition,
    eventually,
    ready,
    service,
    service_status,
)
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

REVISIONS = "/apis/serving.knative.dev/v1/namespaces/default/revisions"
CRASHES = [sys.executable, "-c", "import sys; print('config missing: DB_URL'); sys.exit(3)"]
NEVER_LISTENS = [
    sys.executable,
    "-c",
    "import time; print('warming up', flush=True); time.sleep(600)",
]
DEADLINE = {"serving.knative.dev/progress-deadline": "2s"}


async def revision_condition(mesh: RunningCemesh, name: str, type_: str = "Ready") -> dict:
    response = await mesh.client.get(f"{REVISIONS}/{name}")
    if response.status_code != 200:
        return {}
    return condition(response.json().get("status") or {}, type_)


async def not_ready(mesh: RunningCemesh, revision: str, timeout: float = 20.0) -> dict:  # noqa: ASYNC109
    async def check() -> dict | None:
        found = await revision_condition(mesh, revision)
        return found if found.get("status") == "False" else None

    return await eventually(check, timeout)


async def test_never_ready_before_a_replica_listens(tmp_path: Path) -> None:
    """Every status seen from apply to Ready: no address until a replica has listened."""
    slow_start = [
        sys.executable,
        "-c",
        "import time, runpy, sys; time.sleep(1.5); sys.argv = ['fn', '']; "
        f"runpy.run_path({str(Path(__file__).parents[1] / 'support' / 'function_server.py')!r},"
        " run_name='__main__')",
    ]
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service(command=slow_start))
        seen: list[dict[str, Any]] = []

        async def ready_now() -> bool:
            status = await service_status(mesh)
            seen.append(status)
            return condition(status, "Ready").get("status") == "True"

        await eventually(ready_now, 20)
        for status in seen[:-1]:
            assert "address" not in status, status
            assert condition(status, "Ready").get("status") != "True"
        assert len(seen) > 5  # it really was watched while starting
        response = await mesh.client.post("/services/default/fn")
        assert response.status_code == 200  # Ready means it serves, at once


async def test_a_crashing_function_is_not_ready_with_exit_code_and_output(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service(name="good"))
        started = time.monotonic()
        await mesh.apply(service(command=CRASHES, **DEADLINE))
        failed = await not_ready(mesh, "fn-00001")
        assert time.monotonic() - started < 20
        assert failed["reason"] == "ExitCode"
        assert "code 3" in failed["message"]
        assert "config missing: DB_URL" in failed["message"]
        status = await service_status(mesh)
        assert condition(status, "Ready")["status"] == "False"
        assert "address" not in status
        response = await mesh.client.post("/services/default/fn")
        assert response.status_code == 503, response.text  # it exists: retryable, not 404
        assert response.headers["retry-after"]
        # The rest of cemesh keeps working.
        await ready(mesh, "good")
        assert (await mesh.client.post("/services/default/good")).status_code == 200


async def test_a_function_that_never_listens_fails_at_its_progress_deadline(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        started = time.monotonic()
        await mesh.apply(service(command=NEVER_LISTENS, **DEADLINE))
        failed = await not_ready(mesh, "fn-00001")
        elapsed = time.monotonic() - started
        assert failed["reason"] == "ProgressDeadlineExceeded"
        assert "2s" in failed["message"]
        assert 1.5 <= elapsed < 20, elapsed  # not before the deadline; soon after it
        service_ready = condition(await service_status(mesh), "Ready")
        assert service_ready["status"] == "False"
        assert "ProgressDeadlineExceeded" in service_ready["reason"] + service_ready["message"]


async def test_a_broken_rollout_keeps_traffic_on_the_last_good_revision(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service(env={"FUNCTION_NAME": "v1"}))
        await ready(mesh)
        await mesh.apply(service(command=CRASHES, **DEADLINE))
        failed = await not_ready(mesh, "fn-00002")
        assert failed["reason"] == "ExitCode"

        async def reported() -> dict | None:
            status = await service_status(mesh)
            configs = condition(status, "ConfigurationsReady")
            return status if configs.get("status") == "False" else None

        status = await eventually(reported)
        assert status["latestCreatedRevisionName"] == "fn-00002"
        assert status["latestReadyRevisionName"] == "fn-00001"
        assert [row["revisionName"] for row in status["traffic"]] == ["fn-00001"]
        assert condition(status, "Ready")["status"] == "False"
        assert "code 3" in condition(status, "Ready")["message"]
        for _ in range(5):
            response = await mesh.client.post("/services/default/fn")
            assert response.status_code == 200, response.text
            assert response.json()["name"] == "v1"


async def test_an_unknown_revision_name_keeps_the_last_good_route_and_tags(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, **FAST) as mesh:
        traffic = [{"latestRevision": True, "percent": 100, "tag": "current"}]
        await mesh.apply(service(traffic=traffic))
        await ready(mesh)
        broken = [
            {"latestRevision": True, "percent": 50, "tag": "current"},
            {"revisionName": "fn-09999", "percent": 50, "tag": "next"},
        ]
        await mesh.apply(service(traffic=broken))

        async def routes_not_ready() -> dict | None:
            routes = condition(await service_status(mesh), "RoutesReady")
            return routes if routes.get("status") == "False" else None

        routes = await eventually(routes_not_ready)
        assert routes["reason"] == "RevisionMissing" and "fn-09999" in routes["message"]
        for path in ("/services/default/fn", "/services/default/fn/tags/current"):
            assert (await mesh.client.post(path)).status_code == 200, path
        assert (await mesh.client.post("/services/default/fn/tags/next")).status_code == 404


async def test_deliveries_to_a_service_with_no_ready_route_retry_and_dead_letter(
    tmp_path: Path,
) -> None:
    async with RecordingSubscriber() as dead_letters, running_cemesh(tmp_path, **FAST) as mesh:
        await mesh.apply(service(command=CRASHES, **DEADLINE))
        await not_ready(mesh, "fn-00001")
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
                    "subscriber": {"uri": f"{mesh.url}/services/default/fn"},
                    "delivery": {
                        "retry": 2,
                        "backoffDelay": "PT0.05S",
                        "deadLetterSink": {"uri": dead_letters.url},
                    },
                },
            }
        )

        async def trigger_ready() -> bool:
            path = "/apis/eventing.knative.dev/v1/namespaces/default/triggers/to-fn"
            status = (await mesh.client.get(path)).json().get("status") or {}
            return condition(status, "Ready").get("status") == "True"

        await eventually(trigger_ready)
        headers = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/t", "ce-type": "t"}
        assert (await mesh.client.post("/default/default", headers=headers)).status_code == 202
        [dead] = await dead_letters.wait_for(1, timeout=20)
        assert dead.event is not None and dead.event.id == "e-1"
        assert dead.headers.get("ce-knativeerrorcode") == "503"
