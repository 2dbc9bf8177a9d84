"""ApiServerSource status and retries (issue 11): with no kubeconfig or an API server nobody
answers, the source is not Ready with the reason, retries with exponential backoff that starts
over after a successful watch, logs once per state change (no tracebacks), and its EventTypes
carry the API server URL as ``source``. Real HTTP: the fake kube-apiserver of
tests/support/k8s_replay.py, and a loopback port with nothing listening."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from broker.features.sources.apiserver import ApiServerWatcher, Backoff
from tests.support.cemesh import RunningCemesh, free_port, running_cemesh
from tests.support.k8s_replay import FakeKubeApiServer, write_kubeconfig
from tests.support.subscriber import RecordingSubscriber

SOURCES = "/apis/sources.knative.dev/v1/namespaces/default/apiserversources"
EVENT_TYPES = "/apis/eventing.knative.dev/v1beta2/namespaces/default/eventtypes"


def api_server_source(sink_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ApiServerSource",
        "metadata": {"name": "pods"},
        "spec": {
            "mode": "Reference",
            "resources": [{"apiVersion": "v1", "kind": "Pod"}],
            "sink": {"uri": sink_url},
        },
    }


async def ready_condition(mesh: RunningCemesh, wanted: str, timeout: float = 20.0) -> dict:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            status = (await mesh.client.get(f"{SOURCES}/pods")).json().get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            if ready.get("status") == wanted:
                return {**ready, "status_fields": status}
            await asyncio.sleep(0.05)


def cannot_watch_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "ApiServerSource cannot watch" in r.getMessage()]


async def test_no_kubeconfig_is_not_ready_with_the_reason_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "no-such-kubeconfig"
    async with (
        RecordingSubscriber() as sink,
        running_cemesh(tmp_path, resync_interval=0.05, kubeconfig=str(missing)) as mesh,
    ):
        await mesh.apply(api_server_source(sink.url))
        ready = await ready_condition(mesh, "False")
        assert ready["reason"] == "KubeconfigUnavailable", ready
        assert str(missing) in ready["message"], ready
        await asyncio.sleep(2.5)  # a few retries (0.8 s, 1.6 s, ...) happen meanwhile
        assert len(cannot_watch_lines(caplog)) == 1
        assert not [r for r in caplog.records if r.exc_info], "no tracebacks for a known state"
        assert "source failed" not in caplog.text  # not a crash-and-restart loop


async def test_an_unreachable_api_server_is_not_ready_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    nobody = f"http://127.0.0.1:{free_port()}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", nobody)
    async with (
        RecordingSubscriber() as sink,
        running_cemesh(tmp_path, resync_interval=0.05, kubeconfig=str(kubeconfig)) as mesh,
    ):
        await mesh.apply(api_server_source(sink.url))
        ready = await ready_condition(mesh, "False")
        assert ready["reason"] == "ApiServerUnreachable", ready
        assert nobody in ready["message"], ready
        await asyncio.sleep(2.5)
        assert len(cannot_watch_lines(caplog)) == 1
        assert not [r for r in caplog.records if r.exc_info]


async def test_a_reachable_api_server_makes_it_ready_with_event_types_of_its_url(
    tmp_path: Path,
) -> None:
    async with (
        FakeKubeApiServer() as api,
        RecordingSubscriber() as sink,
        running_cemesh(
            tmp_path,
            resync_interval=0.05,
            kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)),
        ) as mesh,
    ):
        await mesh.apply(api_server_source(sink.url))
        await ready_condition(mesh, "True")
        url = api.url.rstrip("/")

        async def sources() -> tuple[str, set[str]]:
            status = (await mesh.client.get(f"{SOURCES}/pods")).json().get("status") or {}
            items = (await mesh.client.get(EVENT_TYPES)).json()["items"]
            return status.get("sourceUri", ""), {item["spec"].get("source", "") for item in items}

        async with asyncio.timeout(10):
            while await sources() != (url, {url}):  # noqa: ASYNC110 (statuses: no event)
                await asyncio.sleep(0.05)


async def test_backoff_starts_over_after_a_watch_that_worked(tmp_path: Path) -> None:
    """Seven blips on a healthy watch: each reconnects after the initial delay, not after a
    delay that doubled with every blip (0.1 s x 2^6 = 6.4 s for the seventh)."""
    states: list[Any] = []

    async def ignore(_: Any) -> None:
        pass

    async with FakeKubeApiServer() as api:
        watcher = ApiServerWatcher(
            resources=[{"apiVersion": "v1", "kind": "Pod"}],
            namespace="default",
            kubeconfig=str(write_kubeconfig(tmp_path / "kubeconfig", api.url)),
            on_event=ignore,
            on_state=lambda problem, source: states.append(problem),
            backoff=Backoff(initial=0.1, maximum=30.0),
        )
        task = asyncio.create_task(watcher.run())
        try:
            await api.wait_for_watches(1)
            started = time.monotonic()
            for _ in range(7):
                watches = sum(1 for r in api.requests if r.is_watch)
                await api.drop_watches()
                async with asyncio.timeout(10):
                    while sum(1 for r in api.requests if r.is_watch) == watches:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await api.wait_for_watches(1)
            assert time.monotonic() - started < 4.0
            assert all(state is None for state in states)  # blips are no state change
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
