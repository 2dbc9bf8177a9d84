"""Benchmark of the function invoker: the latency it adds, and cold start from zero.

Runs cemesh in this process (SQLite in a temporary directory) with one Service whose replica is
``bench/subscriber.py`` (a lean asyncio + httptools server answering 202), then, taking turns
request by request so that drift hits every path alike:

- **direct**: the dispatcher's HTTP client POSTs to the replica's own URL;
- **invoker**: the same client's request goes through the invoker in-process, as the dispatcher
  delivers to a Service (traffic split, activator, containerConcurrency accounting, forward);
- **via HTTP**: a POST to cemesh's ``/services/...`` route (one more HTTP hop: the path a
  producer outside cemesh takes);
- **bare hop**: the same client's POST to ``bench/bare_app.py``'s app (read the body, answer
  202) served in this process exactly as cemesh is: the floor of any route behind that server.

cemesh is served as ``cemesh serve`` serves it (``broker.server.listeners``: httptools, the read
deadlines, no proxy headers), on a uvloop event loop like ``cemesh serve``'s.

Latency is wall time per request, sequential (one in flight), after a warm-up. The invoker's
overhead is invoker minus direct (goal: < 1 ms at p50); the HTTP route's is "via HTTP" minus
invoker (goal: < 0.1 ms at p50: what the ``/services/...`` HTTP handling adds over the
in-process path, beside "via HTTP" minus direct, which also counts the extra HTTP hop the
producer's client makes, and beside the bare hop, which costs the client and the server what
the route's hop costs them, with nothing behind it). Cold start is the time from a request at
zero replicas to its response: spawn the replica process, wait until it listens, forward; the
autoscaler's rounds are off meanwhile, so only the request wakes the Revision. Its ceiling, in
the same run, turn by turn with cemesh's: spawning the same command directly (with the
environment cemesh gives a replica), trying to connect every millisecond until its port
accepts, then sending it the one request (goal: cemesh within 20 ms of it at p50). Burst:
``--burst`` concurrent requests (each held ``BURST_WORK`` s by the function) at zero replicas
of a Service with containerConcurrency ``BURST_CONCURRENCY``: the replicas started (goal:
ceil(burst / containerConcurrency) at once), and the wait of the median request.

Run: ``.venv/bin/python bench/invoker.py [--requests 5000] [--cold 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from bench.bare_app import app as bare_app  # noqa: E402
from broker.core.config import Settings  # noqa: E402
from broker.dataplane.dispatch.client import DeliveryClient  # noqa: E402
from broker.features.supervisor import child_env  # noqa: E402
from broker.server.app import UVICORN_OPTIONS  # noqa: E402
from broker.server.listeners import Listeners  # noqa: E402
from tests.support.cemesh import running_cemesh  # noqa: E402

SUBSCRIBER = str(ROOT / "bench" / "subscriber.py")
FUNCTION = str(ROOT / "tests" / "support" / "function_server.py")
BODY = b'{"hello": "world"}' + b" " * 1000  # ~1 KiB
HEADERS = [
    ("content-type", "application/json"),
    ("ce-specversion", "1.0"),
    ("ce-id", "bench"),
    ("ce-source", "/bench"),
    ("ce-type", "bench"),
]
GOAL_P50_MS = 1.0
GOAL_ROUTE_P50_MS = 0.1
GOAL_COLD_GAP_MS = 20.0
BURST_CONCURRENCY = 4
SETTLE = 0.3  # seconds before each cold start: the replica stopped last has exited, cemesh idles
BURST_WORK = 0.2  # seconds each burst request keeps its replica busy (function_server x-sleep)


def service(name: str, command: list[str], concurrency: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
                "spec": {
                    "containerConcurrency": concurrency,
                    "containers": [{"image": "bench", "command": command}],
                },
            }
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 0.50) * 1000,
        "p99_ms": percentile(values, 0.99) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
    }


async def wait_for(check: Any, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 (a child process's state has no event to wait on)
            await asyncio.sleep(0.005)


async def ready_service(mesh: Any, name: str) -> None:
    path = f"/apis/serving.knative.dev/v1/namespaces/default/services/{name}"
    async with asyncio.timeout(20):
        while True:
            status = (await mesh.client.get(path)).json().get("status") or {}
            if status.get("latestReadyRevisionName"):
                return
            await asyncio.sleep(0.02)


async def latency(mesh: Any, requests: int, warmup: int) -> dict[str, dict[str, float]]:
    invoker = mesh.runtime.component("invoker")
    state = invoker.revision("default", "lean-00001")
    await wait_for(lambda: invoker.backend.ready(state.ref))
    [replica] = invoker.backend.ready(state.ref)
    client = DeliveryClient()
    mesh_route = f"{mesh.url}/services/default/lean/"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        bare_port = probe.getsockname()[1]
    bare = Listeners(bare_app, Settings(port=bare_port), **UVICORN_OPTIONS)
    bare_task = asyncio.create_task(bare.serve())
    await wait_for(lambda: bare.started)
    bare_url = f"http://127.0.0.1:{bare_port}/"
    paths = {
        "direct": lambda: client.post(replica.url + "/", HEADERS, BODY, timeout=10),
        "invoker": lambda: invoker.invoke("default", "lean", None, "/", HEADERS, BODY, 10),
        "via HTTP": lambda: client.post(mesh_route, HEADERS, BODY, timeout=10),
        "bare hop": lambda: client.post(bare_url, HEADERS, BODY, timeout=10),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    clock = time.perf_counter
    try:
        for index in range(warmup + requests):
            for name, call in paths.items():
                started = clock()
                response = await call()
                elapsed = clock() - started
                assert response.status == 202, (name, response.status, response.body)
                if index >= warmup:
                    times[name].append(elapsed)
    finally:
        await client.close()
        bare.stop()
        await bare_task
    return {name: summary(values) for name, values in times.items()}


async def to_zero(invoker: Any, state: Any) -> None:
    await invoker._scale(state, 0, "bench: to zero")
    await wait_for(lambda: invoker.backend.replica_count(state.ref) == 0)


async def direct_cold_start(command: list[str], client: DeliveryClient) -> float:
    """The ceiling: spawn ``command`` with a free PORT, connect until it listens, one request."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = child_env({"PORT": str(port)}, os.environ)  # the environment cemesh gives a replica
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.001)
                    continue
                writer.close()
                break
        response = await client.post(f"http://127.0.0.1:{port}/", [], b"", timeout=10)
        elapsed = time.perf_counter() - started
        assert response.status in (200, 202), response.body
        return elapsed
    finally:
        process.kill()
        await process.wait()


async def cold_starts(
    mesh: Any, name: str, command: list[str], rounds: int
) -> tuple[list[float], list[float]]:
    """(cemesh's, direct spawn's) cold starts, taking turns round by round."""
    invoker = mesh.runtime.component("invoker")
    state = invoker.revision("default", f"{name}-00001")
    figures: list[float] = []
    direct: list[float] = []
    client = DeliveryClient()
    try:
        for index in range(rounds):
            await to_zero(invoker, state)
            await asyncio.sleep(SETTLE)
            if index % 2:  # taking turns at going first, so that drift hits both alike
                direct.append(await direct_cold_start(command, client))
            started = time.perf_counter()
            response = await invoker.invoke("default", name, None, "/", [], b"")
            figures.append(time.perf_counter() - started)
            assert response.status in (200, 202), response.body
            if not index % 2:
                await asyncio.sleep(SETTLE)
                direct.append(await direct_cold_start(command, client))
    finally:
        await client.close()
    return figures, direct


async def burst(mesh: Any, name: str, size: int) -> dict[str, Any]:
    """``size`` concurrent requests at zero replicas: waits, and the replicas started."""
    invoker = mesh.runtime.component("invoker")
    state = invoker.revision("default", f"{name}-00001")
    await to_zero(invoker, state)
    headers = [("x-sleep", str(BURST_WORK))]

    async def one() -> float:
        started = time.perf_counter()
        response = await invoker.invoke("default", name, None, "/", headers, b"")
        assert response.status in (200, 202), response.body
        return time.perf_counter() - started

    waits = await asyncio.gather(*(one() for _ in range(size)))
    replicas = invoker.backend.replica_count(state.ref)
    return {
        "requests": size,
        "container_concurrency": BURST_CONCURRENCY,
        "replicas_started": replicas,
        "replicas_needed": -(-size // BURST_CONCURRENCY),
        **summary(list(waits)),
    }


async def main(requests: int, warmup: int, cold: int, burst_size: int) -> dict[str, Any]:
    lean = ["sh", "-c", f'exec {sys.executable} {SUBSCRIBER} --port "$PORT"']
    fn = [sys.executable, FUNCTION]
    with tempfile.TemporaryDirectory() as tmp:
        # Autoscaler rounds off: the replica count is what this benchmark sets.
        async with running_cemesh(
            Path(tmp), as_served=True, resync_interval=0.1, invoker_autoscaler_tick=3600
        ) as mesh:
            await mesh.apply(service("lean", lean))
            await mesh.apply(service("fn", fn))
            await mesh.apply(service("burst", fn, BURST_CONCURRENCY))
            for name in ("lean", "fn", "burst"):
                await ready_service(mesh, name)
            figures = await latency(mesh, requests, warmup)
            cold_lean = await cold_starts(mesh, "lean", lean, cold)
            cold_fn = await cold_starts(mesh, "fn", fn, cold)
            bursts = await burst(mesh, "burst", burst_size)
    overhead = {
        key: figures["invoker"][key] - figures["direct"][key] for key in ("p50_ms", "p99_ms")
    }
    route = {
        key: figures["via HTTP"][key] - figures["invoker"][key] for key in ("p50_ms", "p99_ms")
    }
    hop = {key: figures["via HTTP"][key] - figures["direct"][key] for key in ("p50_ms", "p99_ms")}
    beyond_floor = {key: route[key] - figures["bare hop"][key] for key in ("p50_ms", "p99_ms")}
    cold_starts_ms = {}
    for label, (mine, direct) in (
        ("bench/subscriber.py (uvloop)", cold_lean),
        ("tests/support/function_server.py (http.server)", cold_fn),
    ):
        cold_starts_ms[label] = {
            "cemesh": summary(mine),
            "direct spawn": summary(direct),
            "gap_p50_ms": (statistics.median(mine) - statistics.median(direct)) * 1000,
        }
    return {
        "requests": requests,
        "latency": figures,
        "invoker_overhead_ms": overhead,
        "route_overhead_ms": route,
        "route_and_hop_overhead_ms": hop,
        "route_floor_ms": figures["bare hop"],
        "route_beyond_floor_ms": beyond_floor,
        "goal_overhead_p50_ms": GOAL_P50_MS,
        "goal_route_p50_ms": GOAL_ROUTE_P50_MS,
        "goal_cold_gap_ms": GOAL_COLD_GAP_MS,
        "cold_start_ms": cold_starts_ms,
        "burst": bursts,
    }


def report(result: dict[str, Any]) -> None:
    print(f"invoker latency, {result['requests']} sequential requests per path (~1 KiB POST):")
    for name, figures in result["latency"].items():
        print(
            f"  {name:<9} p50 {figures['p50_ms']:.3f} ms   p99 {figures['p99_ms']:.3f} ms"
            f"   mean {figures['mean_ms']:.3f} ms"
        )
    overhead = result["invoker_overhead_ms"]
    verdict = "met" if overhead["p50_ms"] < GOAL_P50_MS else "MISSED"
    print(
        f"  added by the invoker: p50 {overhead['p50_ms']:.3f} ms, p99 {overhead['p99_ms']:.3f} ms"
        f" (goal p50 < {GOAL_P50_MS:g} ms: {verdict})"
    )
    route = result["route_overhead_ms"]
    verdict = "met" if route["p50_ms"] < GOAL_ROUTE_P50_MS else "MISSED"
    print(
        f"  added by the /services route (via HTTP - invoker): p50 {route['p50_ms']:.3f} ms,"
        f" p99 {route['p99_ms']:.3f} ms (goal p50 < {GOAL_ROUTE_P50_MS:g} ms: {verdict});"
        f" with the extra HTTP hop (via HTTP - direct): p50"
        f" {result['route_and_hop_overhead_ms']['p50_ms']:.3f} ms"
    )
    floor = result["route_floor_ms"]["p50_ms"]
    print(
        f"  the floor of any HTTP route here (bare hop: the bare app, served as cemesh is): p50"
        f" {floor:.3f} ms{' (above the goal by itself)' if floor >= GOAL_ROUTE_P50_MS else ''};"
        f" the route beyond it: p50 {result['route_beyond_floor_ms']['p50_ms']:.3f} ms"
    )
    print("cold start, zero replicas -> first response (cemesh beside spawning it directly):")
    for name, figures in result["cold_start_ms"].items():
        mine, direct = figures["cemesh"], figures["direct spawn"]
        verdict = "met" if figures["gap_p50_ms"] <= GOAL_COLD_GAP_MS else "MISSED"
        print(
            f"  {name:<46} cemesh p50 {mine['p50_ms']:.0f} ms (worst {mine['p99_ms']:.0f})"
            f"   direct p50 {direct['p50_ms']:.0f} ms (worst {direct['p99_ms']:.0f})"
            f"   gap {figures['gap_p50_ms']:.0f} ms (goal <= {GOAL_COLD_GAP_MS:g}: {verdict})"
        )
    b = result["burst"]
    verdict = "met" if b["replicas_started"] >= b["replicas_needed"] else "MISSED"
    print(
        f"burst of {b['requests']} at zero (containerConcurrency {b['container_concurrency']},"
        f" {BURST_WORK * 1000:.0f} ms each): {b['replicas_started']} replicas started"
        f" (needed {b['replicas_needed']}: {verdict}), wait p50 {b['p50_ms']:.0f} ms,"
        f" worst {b['p99_ms']:.0f} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as `cemesh serve`
        report(runner.run(main(args.requests, args.warmup, args.cold, args.burst)))
