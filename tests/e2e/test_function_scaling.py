"""A function scaled by cemesh (issue 5), end to end with real replicas of a tiny HTTP server:
the first event wakes it from zero (cold start printed), a step load scales it up to max-scale
within the panic window, containerConcurrency 1 is never exceeded, no request is lost while it
scales up or down, and it returns to zero after the grace period (the invoker's clock is moved
forward, so the test does not wait out the windows)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.cemesh import RunningCemesh, running_cemesh

FUNCTION = str(Path(__file__).parents[1] / "support" / "function_server.py")
SERVICES = "/apis/serving.knative.dev/v1/namespaces/default/services"
MAX_SCALE = 4
CONFIG_AUTOSCALER = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
    "data": {
        "allow-zero-initial-scale": "true",
        "stable-window": "6s",
        "scale-to-zero-grace-period": "6s",
    },
}


def function_service(record: Path) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "fn"},
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": "0",
                        "autoscaling.knative.dev/initial-scale": "0",
                        "autoscaling.knative.dev/max-scale": str(MAX_SCALE),
                    }
                },
                "spec": {
                    "containerConcurrency": 1,
                    "containers": [
                        {
                            "image": "example.com/fn",
                            "command": [sys.executable, FUNCTION],
                            "env": [{"name": "RECORD_FILE", "value": str(record)}],
                        }
                    ],
                },
            }
        },
    }


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.01)


class Scene:
    """A running cemesh with the function applied at zero replicas, and a movable clock."""

    def __init__(self, mesh: RunningCemesh, record: Path) -> None:
        self.mesh = mesh
        self.record = record
        self.invoker = mesh.runtime.component("invoker")
        self.offset = 0.0
        self.invoker.clock = lambda: time.monotonic() + self.offset

    @property
    def state(self) -> Any:
        return self.invoker.revision("default", "fn-00001")

    @property
    def ready(self) -> int:
        return len(self.invoker.backend.ready(self.state.ref))

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    async def call(self, sleep: float = 0.0) -> int:
        response = await self.invoker.invoke(
            "default", "fn", None, "/", [("x-sleep", str(sleep))], b""
        )
        return int(response.status)


async def start(mesh: RunningCemesh, record: Path) -> Scene:
    await mesh.apply(CONFIG_AUTOSCALER)
    await mesh.apply(function_service(record))

    async def ready() -> bool:
        status = (await mesh.client.get(f"{SERVICES}/fn")).json().get("status") or {}
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )

    await eventually(ready)
    scene = Scene(mesh, record)
    assert scene.ready == 0 and scene.state.desired == 0  # initial-scale 0: nothing runs
    return scene


SETTINGS = {"resync_interval": 0.05, "invoker_autoscaler_tick": 0.2}


async def test_first_event_wakes_it_step_load_scales_up_and_it_returns_to_zero(
    tmp_path: Path,
) -> None:
    record = tmp_path / "calls.jsonl"
    async with running_cemesh(tmp_path, **SETTINGS) as mesh:
        scene = await start(mesh, record)
        # The first event, through a Broker and a Trigger whose subscriber is the Service.
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
        headers = {"ce-specversion": "1.0", "ce-id": "wake", "ce-source": "/t", "ce-type": "t"}
        sent = time.monotonic()
        assert (await mesh.client.post("/default/default", headers=headers)).status_code == 202
        await eventually(lambda: any(r["ce_id"] == "wake" for r in scene.records()))
        cold_start = time.monotonic() - sent
        print(
            f"\ncold start (event at zero replicas -> function ran it): {cold_start * 1000:.0f} ms"
        )
        assert scene.ready == 1

        # A step load of concurrent requests, each 0.3 s long, one per replica at a time.
        observed: list[tuple[float, int, int]] = []
        load_started = time.monotonic()

        async def watch() -> None:
            while True:
                observed.append((time.monotonic() - load_started, scene.state.desired, scene.ready))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        statuses = await asyncio.gather(*(scene.call(0.3) for _ in range(24)))
        watcher.cancel()
        assert statuses == [200] * 24  # nothing lost while scaling up
        first_max = next(t for t, desired, _ in observed if desired == MAX_SCALE)
        print(f"desired reached max-scale {MAX_SCALE} after {first_max * 1000:.0f} ms of load")
        assert first_max < 1.5  # panic mode: within the 0.6 s panic window plus ticks
        assert max(ready for _, _, ready in observed) == MAX_SCALE
        # containerConcurrency 1: no replica ever had two requests at once.
        calls = [r for r in scene.records() if r["ce_id"] is None]
        assert len(calls) == 24
        assert {r["max_inflight"] for r in calls} == {1}
        assert set(scene.state.activator.max_seen.values()) == {1}
        assert len({r["pid"] for r in calls}) > 1

        # Idle from now on: move the clock past the stable window and the grace period.
        async def at_zero() -> bool:
            scene.offset += 3.0
            await scene.invoker.tick()
            return scene.ready == 0 and scene.state.desired == 0

        await eventually(at_zero)
        await eventually(lambda: scene.invoker.backend.replica_count(scene.state.ref) == 0)

        revision_path = "/apis/serving.knative.dev/v1/namespaces/default/revisions/fn-00001"

        async def status_at_zero() -> bool:
            status = (await mesh.client.get(revision_path)).json()["status"]
            return status["actualReplicas"] == 0 and status["desiredReplicas"] == 0

        await eventually(status_at_zero)  # written by the invoker

        async def service_at_zero() -> bool:  # the controller's next poll sums it up
            status = (await mesh.client.get(f"{SERVICES}/fn")).json()["status"]
            [scaling] = status["autoscaler"]
            return (scaling["actualReplicas"], scaling["desiredReplicas"]) == (0, 0)

        await eventually(service_at_zero)
        status = (await mesh.client.get(f"{SERVICES}/fn")).json()["status"]
        [scaling] = status["autoscaler"]
        assert (scaling["actualReplicas"], scaling["desiredReplicas"]) == (0, 0)
        # Why it is at zero: the scaler's last word is either the step down itself or, once a
        # later tick found it already there, that it stays there for want of traffic.
        assert scaling["reason"].startswith(
            ("scale to zero after grace period", "at zero, no traffic")
        )
        # And it wakes again.
        assert await scene.call() == 200


async def test_no_request_is_lost_when_replicas_are_scaled_away(tmp_path: Path) -> None:
    record = tmp_path / "calls.jsonl"
    # No autoscaler rounds here (the test scales by hand): only what the test does happens.
    async with running_cemesh(tmp_path, **{**SETTINGS, "invoker_autoscaler_tick": 3600}) as mesh:
        scene = await start(mesh, record)
        await scene.invoker._scale(scene.state, MAX_SCALE, "test: scale up")
        await eventually(lambda: scene.ready == MAX_SCALE)
        load = [asyncio.create_task(scene.call(0.8)) for _ in range(MAX_SCALE)]
        await eventually(lambda: scene.state.activator.active == MAX_SCALE)
        # Every replica is busy; take three away at once.
        await scene.invoker._scale(scene.state, 1, "test: scale down under load")
        assert scene.ready == 1
        assert await asyncio.gather(*load) == [200] * MAX_SCALE
        await eventually(lambda: scene.invoker.backend.replica_count(scene.state.ref) == 1)
        assert len(scene.records()) == MAX_SCALE


async def test_metrics_show_a_cold_start_its_duration_and_the_revisions_replicas(
    tmp_path: Path,
) -> None:
    """Issue 15 item 1: /metrics, parsed by prometheus_client's text parser, counts the request
    that woke the Revision from zero, observes how long until a replica listened, and shows the
    replicas desired and ready per Revision."""
    async with running_cemesh(tmp_path, **SETTINGS) as mesh:
        scene = await start(mesh, tmp_path / "calls.jsonl")
        assert await scene.call() == 200

        async def samples() -> dict[str, float]:
            text = (await mesh.client.get("/metrics")).text
            revision = {"namespace_name": "default", "revision_name": "fn-00001"}
            return {
                s.name: s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.labels.items() >= revision.items() and s.labels.get("le") in (None, "+Inf")
            }

        seen = await samples()
        assert seen["cemesh_revision_cold_starts_total"] == 1
        assert seen["cemesh_revision_cold_start_seconds_count"] == 1
        assert 0 < seen["cemesh_revision_cold_start_seconds_sum"] < 60
        assert seen["cemesh_revision_cold_start_seconds_bucket"] == 1
        assert seen["cemesh_revision_desired_replicas"] >= 1
        assert seen["cemesh_revision_ready_replicas"] >= 1
        assert seen["cemesh_revision_requests_in_flight"] == 0
        # A second request finds the replica up: no second cold start.
        assert await scene.call() == 200
        assert (await samples())["cemesh_revision_cold_starts_total"] == 1


async def test_a_burst_at_zero_starts_the_replicas_it_needs_at_once_up_to_max_scale(
    tmp_path: Path,
) -> None:
    """Requests waiting at zero start ceil(waiting / containerConcurrency) replicas together
    (capped by max-scale), rather than one replica and then the autoscaler's next round."""
    record = tmp_path / "calls.jsonl"
    # No autoscaler rounds: only the activation can scale the Revision here.
    async with running_cemesh(tmp_path, **{**SETTINGS, "invoker_autoscaler_tick": 3600}) as mesh:
        scene = await start(mesh, record)
        burst = [asyncio.create_task(scene.call(0.5)) for _ in range(MAX_SCALE + 2)]
        await eventually(lambda: scene.invoker.backend.replica_count(scene.state.ref) > 1)
        assert await asyncio.gather(*burst) == [200] * (MAX_SCALE + 2)
        # containerConcurrency 1 would want 6; max-scale keeps it at 4.
        assert scene.state.desired == MAX_SCALE
        assert scene.invoker.backend.replica_count(scene.state.ref) == MAX_SCALE
        assert len(scene.records()) == MAX_SCALE + 2
