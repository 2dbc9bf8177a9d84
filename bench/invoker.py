"""Benchmark of the function invoker: the latency it adds, and cold start from zero.

Runs cemesh in this process (SQLite in a temporary directory) with one Service whose replica is
``bench/subscriber.py`` (a lean asyncio + httptools server answering 202), then, taking turns
request by request so that drift hits every path alike:

- **direct**: the dispatcher's HTTP client POSTs to the replica's own URL;
- **invoker**: the same client's request goes through the invoker in-process, as the dispatcher
  delivers to a Service (traffic split, activator, containerConcurrency accounting, forward);
- **via HTTP**: a POST to cemesh's ``/services/...`` route (one more HTTP hop: the path a
  producer outside cemesh takes).

Latency is wall time per request, sequential (one in flight), after a warm-up. The invoker's
overhead is invoker minus direct (goal: < 1 ms at p50). Cold start is the time from a request
at zero replicas to its response: spawn the replica process, wait until it listens, forward; the
autoscaler's rounds are off meanwhile, so only the request wakes the Revision.

Run: ``.venv/bin/python bench/invoker.py [--requests 5000] [--cold 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.dataplane.dispatch.client import DeliveryClient  # noqa: E402
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


def service(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "0"}},
                "spec": {"containers": [{"image": "bench", "command": command}]},
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
    paths = {
        "direct": lambda: client.post(replica.url + "/", HEADERS, BODY, timeout=10),
        "invoker": lambda: invoker.invoke("default", "lean", None, "/", HEADERS, BODY, 10),
        "via HTTP": lambda: client.post(mesh_route, HEADERS, BODY, timeout=10),
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
    return {name: summary(values) for name, values in times.items()}


async def cold_starts(mesh: Any, name: str, rounds: int) -> list[float]:
    invoker = mesh.runtime.component("invoker")
    state = invoker.revision("default", f"{name}-00001")
    figures = []
    for _ in range(rounds):
        await invoker._scale(state, 0, "bench: to zero")
        await wait_for(lambda: invoker.backend.replica_count(state.ref) == 0)
        started = time.perf_counter()
        response = await invoker.invoke("default", name, None, "/", [], b"")
        figures.append(time.perf_counter() - started)
        assert response.status in (200, 202), response.body
    return figures


async def main(requests: int, warmup: int, cold: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        # Autoscaler rounds off: the replica count is what this benchmark sets.
        async with running_cemesh(
            Path(tmp), resync_interval=0.1, invoker_autoscaler_tick=3600
        ) as mesh:
            lean = ["sh", "-c", f'exec {sys.executable} {SUBSCRIBER} --port "$PORT"']
            await mesh.apply(service("lean", lean))
            await mesh.apply(service("fn", [sys.executable, FUNCTION]))
            await ready_service(mesh, "lean")
            await ready_service(mesh, "fn")
            figures = await latency(mesh, requests, warmup)
            cold_lean = await cold_starts(mesh, "lean", cold)
            cold_fn = await cold_starts(mesh, "fn", cold)
    overhead = {
        key: figures["invoker"][key] - figures["direct"][key] for key in ("p50_ms", "p99_ms")
    }
    return {
        "requests": requests,
        "latency": figures,
        "invoker_overhead_ms": overhead,
        "goal_overhead_p50_ms": GOAL_P50_MS,
        "cold_start_ms": {
            "bench/subscriber.py (uvloop)": summary(cold_lean),
            "tests/support/function_server.py (http.server)": summary(cold_fn),
        },
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
    print("cold start, zero replicas -> first response:")
    for name, figures in result["cold_start_ms"].items():
        print(f"  {name:<46} p50 {figures['p50_ms']:.0f} ms   worst {figures['p99_ms']:.0f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cold", type=int, default=5)
    args = parser.parse_args()
    report(asyncio.run(main(args.requests, args.warmup, args.cold)))
