"""The delivery side's CPU per event in process: cemesh's bus and dispatcher beside a bare loop.

``bench/ingress_inprocess.py`` splits the ingress's cost from the HTTP server's; this splits the
other half of an event's way. One process (uvloop) runs cemesh (``running_cemesh(as_served=True)``,
SQLite in a temp dir) with Broker ``default/default`` on the in-memory bus and one Trigger (no
filter) to ``bench/subscriber.py`` in its own process. Per round, in turns (ABBA order):

- **cemesh**: ``--events`` 1 KiB events published straight onto the Broker's topic (no HTTP
  ingress), then the time until the subscriber has them all: the memory bus, the dispatcher,
  the delivery (retry policy, metrics, the binary-mode encoding) and the HTTP client;
- **bare**: the same number of requests put on an ``asyncio.Queue`` and POSTed by 64 tasks (the
  dispatch concurrency) with the same client (:class:`~broker.dataplane.dispatch.httpclient.
  Http1Client`) to the same subscriber, headers already encoded: the ceiling.

Reported: this process's CPU (``time.process_time``) per event, median of the rounds, and the
rate; the subscriber's CPU is not counted. Nothing is retried in either (every answer is a 202).

Run: ``.venv/bin/python bench/dispatch_inprocess.py [--events 20000] [--rounds 4]``.
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

if __package__ in (None, ""):  # run as a script: make `bench.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from bench.procs import Child, free_port, get_json, wait_until_serving
from broker.core.events import CloudEvent, new_event
from broker.core.spec import broker_topic
from broker.dataplane.dispatch.httpclient import Http1Client
from tests.support.cemesh import running_cemesh

BENCH_DIR = Path(__file__).resolve().parent
BODY = b'{"hello": "world"}' + b" " * 1000  # ~1 KiB, as bench/e2e.py sends
WORKERS = 64  # cemesh's default dispatch concurrency
ARRIVAL = "2026-01-01T00:00:00.000000Z"  # what the ingress would have stamped
MANIFEST = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: bench}}
spec: {{broker: default, subscriber: {{uri: "{uri}"}}}}
"""


def event(event_id: str) -> CloudEvent:
    return new_event(
        type="dev.cemesh.bench.load",
        source="/bench",
        id=event_id,
        data=BODY,
        datacontenttype="application/json",
        extensions={"knativearrivaltime": ARRIVAL, "knativebrokerttl": 255},
    )


async def received(url: str) -> int:
    loop = asyncio.get_running_loop()
    counts = await loop.run_in_executor(None, get_json, f"{url}/count")
    return int(counts["received"])


async def until_received(url: str, count: int, timeout: float = 120.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while await received(url) < count:  # noqa: ASYNC110 (another process's count)
            await asyncio.sleep(0.02)


async def through_cemesh(mesh: Any, url: str, tag: str, events: int) -> tuple[float, float]:
    """(CPU us per event, events/s) of ``events`` published onto the Broker's topic."""
    bus = mesh.runtime.buses["memory"]
    topic = broker_topic("default", "default")
    batch = [event(f"{tag}-{n}") for n in range(events)]
    start = await received(url)
    cpu, wall = time.process_time(), time.perf_counter()
    for item in batch:
        await bus.publish(topic, item)
    await until_received(url, start + events)
    return (time.process_time() - cpu) / events * 1e6, events / (time.perf_counter() - wall)


async def bare_loop(url: str, tag: str, events: int) -> tuple[float, float]:
    """(CPU us per event, events/s) of the same requests sent by a bare worker loop."""
    client = Http1Client()
    queue: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()
    fixed = [("ce-source", "/bench"), ("ce-type", "dev.cemesh.bench.load")]
    fixed += [("ce-knativearrivaltime", ARRIVAL), ("content-type", "application/json")]

    async def worker() -> None:
        while True:
            headers = await queue.get()
            await client.post(f"{url}/", headers, BODY, timeout=10.0)

    start = await received(url)
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(events):
        queue.put_nowait([("ce-specversion", "1.0"), ("ce-id", f"{tag}-{n}"), *fixed])
    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    try:
        await until_received(url, start + events)
        return (time.process_time() - cpu) / events * 1e6, events / (time.perf_counter() - wall)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await client.close()


async def measure(url: str, events: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per kind, (CPU us per event, events/s) of each round, delivering to ``url``."""
    results: dict[str, list[tuple[float, float]]] = {"cemesh": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with running_cemesh(Path(tmp), as_served=True) as mesh:
            await mesh.apply(MANIFEST.format(uri=f"{url}/"))
            await live(mesh, url)
            await through_cemesh(mesh, url, "warm", events // 4)
            await bare_loop(url, "warm", events // 4)
            for round_ in range(rounds):
                order = ("cemesh", "bare") if round_ % 2 == 0 else ("bare", "cemesh")
                for kind in order:
                    tag = f"{kind}{round_}"
                    if kind == "cemesh":
                        results[kind].append(await through_cemesh(mesh, url, tag, events))
                    else:
                        results[kind].append(await bare_loop(url, tag, events))
    return results


async def live(mesh: Any, url: str) -> None:
    """Until an event published now reaches the subscriber (the Trigger is applied async)."""
    bus = mesh.runtime.buses["memory"]
    topic = broker_topic("default", "default")
    async with asyncio.timeout(20):
        for n in range(1_000_000):
            await bus.publish(topic, event(f"probe-{n}"))
            await asyncio.sleep(0.05)
            if await received(url) > 0:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as logs:
        port = free_port()
        subscriber = Child(
            "subscriber",
            [sys.executable, str(BENCH_DIR / "subscriber.py"), "--port", str(port)],
            Path(logs) / "subscriber.log",
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(subscriber, f"{url}/count")
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as cemesh's
                results = runner.run(measure(url, args.events, args.rounds))
        finally:
            subscriber.stop()
    median = {kind: statistics.median(cpu for cpu, _ in runs) for kind, runs in results.items()}
    rate = {kind: statistics.median(r for _, r in runs) for kind, runs in results.items()}
    print(f"{'delivery side':<44}{'CPU us/event (median)':>22}{'events/s':>10}{'bare / this':>13}")
    for kind, label in (
        ("bare", "bare worker loop, same client (ceiling)"),
        ("cemesh", "cemesh: memory bus + dispatcher + delivery"),
    ):
        share = median["bare"] / median[kind]
        print(f"{label:<44}{median[kind]:>22.1f}{rate[kind]:>10,.0f}{share:>13.0%}")
    print(json.dumps({"runs": results, "median_us": median, "median_rate": rate}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
