"""The process backend (issue 5): a replica is the container's command with PORT set, ready when
it listens, its output in cemesh's log, replaced when it crashes; scaling down waits for the
replica's requests to finish."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from broker.features.serving.backend import RevisionRef
from broker.features.serving.process import (
    CRASH_BACKOFF_INITIAL,
    CRASH_BACKOFF_MAX,
    NotRunnable,
    ProcessBackend,
)
from broker.features.supervisor import exit_summary, restart_delay

FUNCTION = str(Path(__file__).parents[1] / "support" / "function_server.py")
REF = RevisionRef("default", "fn", "fn-00001")


def template(**env: str) -> dict:
    return {
        "containers": [
            {
                "image": "ignored",
                "command": [sys.executable],
                "args": [FUNCTION],
                "env": [{"name": k, "value": v} for k, v in env.items()],
            }
        ],
        "annotations": {},
    }


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 (no event to wait on: a child process's state)
            await asyncio.sleep(0.01)


async def test_a_replica_runs_command_and_args_with_port_and_env_and_logs_its_output(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.features.serving.function")
    backend = ProcessBackend()
    try:
        await backend.ensure(REF, template(FUNCTION_NAME="greeter"), 1)
        assert await backend.wait_ready(REF, 10)
        [replica] = backend.ready(REF)
        async with httpx.AsyncClient() as client:
            answer = (await client.post(f"{replica.url}/x", content=b"hi")).json()
        assert answer["name"] == "greeter"  # env reached the process
        assert replica.url.endswith(f":{answer['port']}")  # PORT is where it listens
        assert any("greeter listening on" in r.getMessage() for r in caplog.records)
    finally:
        await backend.stop()
    assert backend.ready(REF) == []


async def test_a_crashed_replica_is_replaced() -> None:
    backend = ProcessBackend()
    try:
        await backend.ensure(REF, template(), 1)
        assert await backend.wait_ready(REF, 10)
        [replica] = backend.ready(REF)
        async with httpx.AsyncClient() as client:
            pid = (await client.post(replica.url)).json()["pid"]
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: backend.ready(REF) == [])  # out of the list at once
            assert await backend.wait_ready(REF, 10)
            [again] = backend.ready(REF)
            assert (await client.post(again.url)).json()["pid"] != pid
    finally:
        await backend.stop()


async def test_an_image_only_container_is_not_runnable_naming_the_field() -> None:
    backend = ProcessBackend()
    with pytest.raises(NotRunnable) as caught:
        await backend.ensure(REF, {"containers": [{"image": "gcr.io/x/fn"}]}, 1)
    assert caught.value.field == "spec.template.spec.containers[0].command"
    await backend.ensure(REF, {"containers": [{"image": "gcr.io/x/fn"}]}, 0)  # nothing to run
    await backend.stop()


async def test_scaling_down_waits_for_the_drain_before_stopping_a_replica() -> None:
    release = asyncio.Event()
    drained: list[str] = []

    async def drain(ref: RevisionRef, replica_id: str) -> None:
        await release.wait()
        drained.append(replica_id)

    backend = ProcessBackend(drain=drain)
    try:
        await backend.ensure(REF, template(), 2)
        await eventually(lambda: len(backend.ready(REF)) == 2)
        victim = backend.ready(REF)[-1]
        await backend.ensure(REF, template(), 1)
        assert [r.id for r in backend.ready(REF)] != [victim.id]
        assert len(backend.ready(REF)) == 1  # out of the ready list at once...
        async with httpx.AsyncClient() as client:
            assert (await client.post(victim.url)).status_code == 200  # ...but still serving
            release.set()
            await eventually(lambda: drained == [victim.id])
            with pytest.raises(httpx.TransportError):
                for _ in range(500):  # stopped once drained
                    await client.post(victim.url)
                    await asyncio.sleep(0.01)
    finally:
        await backend.stop()


async def test_a_replica_that_keeps_exiting_is_restarted_with_a_growing_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Crash-loop backoff: the pauses before restarts double (0.2 s, 0.4 s, 0.8 s, ...) up to
    60 s, never a restart every few seconds forever; each exit is reported with its code and
    output."""
    caplog.set_level(logging.WARNING, logger="broker.features.serving.function")
    exits: list[tuple[int, list[str]]] = []
    backend = ProcessBackend(on_exit=lambda ref, code, tail: exits.append((code, tail)))
    crashing = {
        "containers": [
            {"command": [sys.executable, "-c", "print('bad config'); raise SystemExit(4)"]}
        ]
    }
    try:
        await backend.ensure(REF, crashing, 1)
        await eventually(lambda: len(exits) >= 4, timeout=20)
    finally:
        await backend.stop()
    assert {code for code, _ in exits} == {4}
    assert all("bad config" in tail for _, tail in exits)
    pauses = [
        float(record.getMessage().rsplit("restarting in ", 1)[1].rstrip("s"))
        for record in caplog.records
        if "restarting in" in record.getMessage()
    ]
    assert pauses[:3] == [0.2, 0.4, 0.8], pauses
    assert restart_delay(50, CRASH_BACKOFF_INITIAL, CRASH_BACKOFF_MAX) == CRASH_BACKOFF_MAX == 60


async def test_replicas_get_knatives_runtime_environment() -> None:
    backend = ProcessBackend()
    try:
        await backend.ensure(REF, template(), 1)
        assert await backend.wait_ready(REF, 10)
        [replica] = backend.ready(REF)
        async with httpx.AsyncClient() as client:
            answer = (await client.get(f"{replica.url}/")).json()
        assert answer["env"] == {
            "K_SERVICE": "fn",
            "K_CONFIGURATION": "fn",
            "K_REVISION": "fn-00001",
        }
        assert answer["method"] == "GET"
    finally:
        await backend.stop()


def test_an_exit_is_summed_up_with_its_code_or_signal_and_last_output() -> None:
    assert exit_summary(3, ["starting", "", "DB_URL missing"]) == (
        "code 3; last output: starting | DB_URL missing"
    )
    assert exit_summary(-signal.SIGKILL, []) == "signal SIGKILL"
    assert exit_summary(1, [str(n) for n in range(30)], lines=2) == "code 1; last output: 28 | 29"
