"""Function replicas as processes of a real ``cemesh serve`` (issue 11): no replica outlives a
SIGKILLed cemesh (the spawned process nor a shell's child), and after a restart only Revisions
that carry traffic start replicas."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.process import CemeshProcess, cemesh_process

FUNCTION = str(Path(__file__).parents[1] / "support" / "function_server.py")
SERVICES = "/apis/serving.knative.dev/v1/namespaces/default/services"
REVISIONS = "/apis/serving.knative.dev/v1/namespaces/default/revisions"
FAST = {"resync_interval": "0.05", "invoker_autoscaler_tick": "0.2"}


def service(name: str, command: list[str], **env: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "command": command,
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ]
                }
            }
        },
    }


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.05)


async def apply_and_call(client: httpx.AsyncClient, manifest: dict[str, Any]) -> dict[str, Any]:
    """Apply a Service, wait until it answers, return its replica's answer (pid, port)."""
    name = manifest["metadata"]["name"]
    existing = await client.get(f"{SERVICES}/{name}")
    if existing.status_code == 200:
        manifest["metadata"]["resourceVersion"] = existing.json()["metadata"]["resourceVersion"]
        assert (await client.put(f"{SERVICES}/{name}", json=manifest)).status_code == 200
    else:
        assert (await client.post(SERVICES, json=manifest)).status_code == 201

    async def served() -> dict[str, Any] | None:
        status = (await client.get(f"{SERVICES}/{name}")).json().get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") != "True" or status.get("latestReadyRevisionName") != status.get(
            "latestCreatedRevisionName"
        ):
            return None
        response = await client.post(f"/services/default/{name}")
        return response.json() if response.status_code == 200 else None

    return await eventually(served)


def replica_starts(log: str, revision: str) -> int:
    """How many replica processes of ``revision`` the log says were started."""
    return sum(
        1
        for line in log.splitlines()
        if f"revision/default/{revision}/" in line and ": started" in line
    )


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_no_replica_survives_a_sigkill_of_cemesh(tmp_path: Path) -> None:
    # A shell that does not exec its command: the function is the shell's child, so only the
    # process-group guard can end it (PR_SET_PDEATHSIG ends the shell itself).
    shell = ["/bin/sh", "-c", f"{sys.executable} {FUNCTION}; echo the function ended"]
    mesh: CemeshProcess
    async with cemesh_process(tmp_path, **FAST) as mesh:
        async with mesh.client(timeout=10) as client:
            direct = await apply_and_call(client, service("direct", [sys.executable, FUNCTION]))
            nested = await apply_and_call(client, service("nested", shell))
        replicas = [(direct["pid"], direct["port"]), (nested["pid"], nested["port"])]
        assert all(not gone(pid) for pid, _ in replicas)
        assert await mesh.stop(signal.SIGKILL) == -signal.SIGKILL
        for pid, port in replicas:
            await eventually(lambda pid=pid: gone(pid), timeout=10)
            # A killed multi-threaded server shows as a zombie once its main thread has exited;
            # its sockets close when the last thread has: wait for that too, bounded.
            await eventually(lambda port=port: port_closed(port), timeout=10)


async def test_after_a_restart_only_revisions_with_traffic_start_replicas(tmp_path: Path) -> None:
    async with cemesh_process(tmp_path, **FAST) as first:
        async with first.client(timeout=10) as client:
            await apply_and_call(client, service("fn", [sys.executable, FUNCTION], V="1"))
            v2 = await apply_and_call(client, service("fn", [sys.executable, FUNCTION], V="2"))
        assert v2["env"]["K_REVISION"] == "fn-00002"
        assert await first.stop() in (0, -signal.SIGTERM)
    old_starts = replica_starts(first.log(), "fn-00001")
    assert old_starts == 1
    async with (
        cemesh_process(tmp_path, port=first.port, **FAST) as second,
        second.client(timeout=10) as client,
    ):

        async def scaled(name: str) -> dict[str, Any] | None:
            status = (await client.get(f"{REVISIONS}/{name}")).json().get("status") or {}
            return status if "desiredReplicas" in status else None

        async def at_zero(name: str) -> dict[str, Any] | None:
            # The store holds the first cemesh's last status until this one writes its own.
            status = await scaled(name)
            return status if status and status["desiredReplicas"] == 0 else None

        old = await eventually(lambda: at_zero("fn-00001"))
        assert old["autoscaler"]["reason"] in (
            "restarted without traffic: min-scale 0",
            "at zero, no traffic",
        )
        ready = next(c for c in old["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"  # it served before: Ready without a replica
        current = await eventually(lambda: scaled("fn-00002"))
        assert current["desiredReplicas"] == 1, current
        response = await client.post("/services/default/fn")
        assert response.status_code == 200
        assert response.json()["env"]["K_REVISION"] == "fn-00002"
        # No replica of the Revision without traffic was started by the second cemesh.
        assert replica_starts(second.log(), "fn-00001") == old_starts
