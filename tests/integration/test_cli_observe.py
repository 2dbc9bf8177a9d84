"""``cemesh tail``, ``cemesh describe`` and ``cemesh get -w`` (issue 15 item 3): the real console
script as a child process against a real ``cemesh serve`` child process, with a real HTTP
subscriber. Only the PIDs these tests start are ever signalled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.support.process import CemeshProcess, cemesh_process
from tests.support.subscriber import RecordingSubscriber

CLI = Path(sys.executable).parent / "cemesh"
BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"


def cli_env(mesh: CemeshProcess, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEMESH_")}
    env["CEMESH_URL"] = mesh.url
    env["CEMESH_TOKEN"] = mesh.token if token is None else token
    return env


@contextlib.asynccontextmanager
async def cli(
    mesh: CemeshProcess, *args: str, token: str | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``cemesh ARGS`` as a child; killed (by its PID) if still running at the end."""
    child = await asyncio.create_subprocess_exec(
        str(CLI),
        *args,
        env=cli_env(mesh, token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield child
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def run_cli(
    mesh: CemeshProcess, *args: str, token: str | None = None
) -> tuple[int, str, str]:
    async with cli(mesh, *args, token=token) as child:
        out, err = await asyncio.wait_for(child.communicate(), 30)
        return child.returncode or 0, out.decode(), err.decode()


async def ready(client: httpx.AsyncClient, path: str) -> None:
    async with asyncio.timeout(20):
        while True:
            status = (await client.get(path)).json().get("status") or {}
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in status.get("conditions") or []
            ):
                return
            await asyncio.sleep(0.05)


async def broker(client: httpx.AsyncClient, name: str = "default") -> None:
    body = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": name}}
    assert (await client.post(BROKERS, json=body)).status_code == 201
    await ready(client, f"{BROKERS}/{name}")


async def send(mesh: CemeshProcess, event_id: str, event_type: str) -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/tail",
        "ce-type": event_type,
        "content-type": "application/json",
    }
    async with httpx.AsyncClient(timeout=5) as producer:
        response = await producer.post(
            f"{mesh.url}/default/default", headers=headers, content=b'{"n": 1}'
        )
        assert response.status_code == 202


async def until_watching(child: asyncio.subprocess.Process) -> None:
    """Wait for tail's notice that the stream is live (its first stderr line)."""
    assert child.stderr is not None
    line = await asyncio.wait_for(child.stderr.readline(), 20)
    assert line.startswith(b"watching broker default/default"), line


async def test_tail_streams_json_lines_of_the_events_matching_its_cesql_filter(
    tmp_path: Path,
) -> None:
    async with cemesh_process(tmp_path) as mesh, mesh.client() as client:
        await broker(client)
        args = ("tail", "broker/default", "-o", "json", "--limit", "2")
        async with cli(mesh, *args, "--filter", "type = 'com.example.keep'") as child:
            await until_watching(child)
            await send(mesh, "1", "com.example.drop")
            await send(mesh, "2", "com.example.keep")
            await send(mesh, "3", "com.example.keep")
            out, _ = await asyncio.wait_for(child.communicate(), 20)
            assert child.returncode == 0
        events = [json.loads(line) for line in out.decode().splitlines()]
        assert [(e["id"], e["type"]) for e in events] == [
            ("2", "com.example.keep"),
            ("3", "com.example.keep"),
        ]
        assert events[0]["data"] == {"n": 1} and "knativearrivaltime" in events[0]
        await no_watchers_left(client)


async def no_watchers_left(client: httpx.AsyncClient) -> None:
    """The stream of a tail that exited is closed on the server too: no watcher stays behind."""
    async with asyncio.timeout(20):
        # A gauge on the server signals no event when it moves: poll it.
        while "cemesh_live_feed_watchers 0.0" not in (await client.get("/metrics")).text:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_tail_prints_one_readable_line_per_event(tmp_path: Path) -> None:
    async with cemesh_process(tmp_path) as mesh, mesh.client() as client:
        await broker(client)
        async with cli(mesh, "tail", "broker/default", "--limit", "1") as child:
            await until_watching(child)
            await send(mesh, "42", "com.example.order")
            out, _ = await asyncio.wait_for(child.communicate(), 20)
        [line] = out.decode().splitlines()
        assert "com.example.order" in line and "/tests/tail" in line and "id=42" in line
        assert '{"n":1}' in line


async def test_tail_refusals_name_the_problem(tmp_path: Path) -> None:
    async with cemesh_process(tmp_path) as mesh, mesh.client() as client:
        await broker(client)
        code, _, err = await run_cli(mesh, "tail", "broker/default", "--filter", "type = = 'x'")
        assert code != 0 and "filter: not a CESQL expression" in err and "Traceback" not in err
        code, _, err = await run_cli(mesh, "tail", "broker/nope")
        assert code != 0 and "default/nope is not served" in err
        code, _, err = await run_cli(mesh, "tail", "broker/default", token="wrong")
        assert code != 0 and "bearer token is not valid" in err and "CEMESH_TOKEN" in err
        code, _, err = await run_cli(mesh, "tail", "trigger/x")
        assert code != 0 and "Trigger has no event stream" in err
        code, _, err = await run_cli(mesh, "tail", "default")
        assert code != 0 and "KIND/NAME" in err


async def test_describe_shows_conditions_and_the_triggers_deliveries(tmp_path: Path) -> None:
    async with (
        cemesh_process(tmp_path) as mesh,
        mesh.client() as client,
        RecordingSubscriber() as subscriber,
    ):
        await broker(client)
        trigger = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "orders"},
            "spec": {"broker": "default", "subscriber": {"uri": subscriber.url}},
        }
        assert (await client.post(TRIGGERS, json=trigger)).status_code == 201
        await ready(client, f"{TRIGGERS}/orders")
        await send(mesh, "1", "com.example.order")
        await subscriber.wait_for(1)
        async with asyncio.timeout(20):
            while True:
                code, out, err = await run_cli(mesh, "describe", "trigger", "orders")
                assert code == 0, err
                if "delivered: 1" in out:
                    break
                await asyncio.sleep(0.1)
        assert "Name:       orders" in out and "Ready=True" in out
        assert "response 202: 1" in out and subscriber.url in out
        code, _, err = await run_cli(mesh, "describe", "trigger", "missing")
        assert code != 0 and "missing" in err and "Traceback" not in err


async def test_get_watch_prints_the_table_again_when_an_object_changes(tmp_path: Path) -> None:
    async with cemesh_process(tmp_path) as mesh, mesh.client() as client:
        await broker(client, "first")
        async with cli(mesh, "get", "brokers", "-w", "--interval", "0.2") as child:
            assert child.stdout is not None
            first = await asyncio.wait_for(child.stdout.readline(), 20)
            assert first.startswith(b"NAME")
            await broker(client, "second")
            seen = b""
            async with asyncio.timeout(20):
                while b"second" not in seen:
                    seen += await child.stdout.readline()
            assert b"---" in seen
        code, _, err = await run_cli(mesh, "get", "brokers", "-w", "-o", "yaml")
        assert code != 0 and "-w shows tables" in err


async def test_tail_follows_a_channel_too(tmp_path: Path) -> None:
    channels = "/apis/messaging.knative.dev/v1/namespaces/default/channels"
    async with cemesh_process(tmp_path) as mesh, mesh.client() as client:
        body = {
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "Channel",
            "metadata": {"name": "orders"},
        }
        assert (await client.post(channels, json=body)).status_code == 201
        await ready(client, f"{channels}/orders")
        async with cli(mesh, "tail", "channel/orders", "-o", "json", "--limit", "1") as child:
            assert child.stderr is not None
            line = await asyncio.wait_for(child.stderr.readline(), 20)
            assert line.startswith(b"watching channel default/orders"), line
            headers = {
                "ce-specversion": "1.0",
                "ce-id": "c1",
                "ce-source": "/tests/tail",
                "ce-type": "com.example.c",
            }
            async with httpx.AsyncClient(timeout=5) as producer:
                sent = await producer.post(f"{mesh.url}/channels/default/orders", headers=headers)
                assert sent.status_code == 202
            out, _ = await asyncio.wait_for(child.communicate(), 20)
        assert json.loads(out)["id"] == "c1"
