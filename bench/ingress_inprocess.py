"""The ingress's CPU per request in process, without sockets: what the server and app cost.

On a shared machine wrk's figures move by tens of percent between runs, and much of each
request's CPU is the kernel's (the answer's ``write``, which every app pays alike). This bench
feeds the same binary-mode POST (1 KiB) to uvicorn's httptools protocol with a transport that
only counts what is written, in one process, and times ``time.process_time`` per request for:

- **bare**: ``bench/bare_app.py``'s app under cemesh's protocol class (the ceiling);
- **asgi**: cemesh's ingress served through the ASGI app.

The ingress has Broker ``default/default`` on an in-memory bus with no Trigger, as in
``bench/e2e.py``'s ingress phase. ``--rounds`` rounds alternate the two (ABBA order);
reported: the median microseconds per request of each and the ratio bare/asgi (a ratio above 1
means cheaper than the bare app).

Run: ``.venv/bin/python bench/ingress_inprocess.py [--requests 20000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn
from uvicorn.server import ServerState

from adapters.memory import MemoryBus
from bench.bare_app import app as bare_app
from bench.loadgen import event_body
from broker.core.config import Settings
from broker.core.metrics import Metrics
from broker.core.spec import BrokerSpec, Snapshot, broker_topic
from broker.dataplane.ingress import Ingress
from broker.server.app import UVICORN_OPTIONS, CemeshApp
from broker.server.http_server import server_options

CONNECTIONS = 64


class _Transport:
    """Takes writes and counts them; never pauses, never closes."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cemesh_app(metrics_detail: bool = True) -> CemeshApp:
    """CemeshApp's routing around a real Ingress (memory bus, one Broker, no Trigger);
    ``metrics_detail`` as ``CEMESH_METRICS_DETAIL`` (bench/metrics_cost.py compares the two)."""
    ingress = Ingress(
        buses={"memory": MemoryBus()},
        metrics=Metrics(detail=metrics_detail),
        max_request_bytes=4 << 20,
        max_ttl=255,
    )
    spec = BrokerSpec("default", "default", "uid", broker_topic("default", "default"))
    ingress.snapshot = Snapshot(brokers={("default", "default"): spec})
    app = object.__new__(CemeshApp)  # the routing only: no store, no API, no lifespan
    app._ingress = ingress
    app._routes = []
    return app


def requests_for(count: int) -> list[bytes]:
    """``count`` keep-alive POSTs of the bench's 1 KiB binary-mode event, each its own id."""
    body = event_body(1024)
    return [
        (
            "POST /default/default HTTP/1.1\r\nhost: bench\r\nce-specversion: 1.0\r\n"
            f"ce-id: inproc-{n}\r\nce-source: /bench\r\nce-type: dev.cemesh.bench.load\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for n in range(count)
    ]


async def run_served(kind: str, requests: list[bytes]) -> float:
    """CPU microseconds per request of ``kind`` (``bare``, ``asgi``, or ``asgi-no-metrics``: the
    ingress without per-Broker metrics), served on CONNECTIONS keep-alive connections."""
    loop = asyncio.get_running_loop()
    settings = Settings()
    limits, _ = server_options(settings)
    app: Any = bare_app if kind == "bare" else _cemesh_app(kind != "asgi-no-metrics")
    config = uvicorn.Config(app, **{**UVICORN_OPTIONS, **limits, "lifespan": "off"})
    config.load()
    state = ServerState()
    protocols, transports = [], []
    for _ in range(CONNECTIONS):
        protocol = config.http_protocol_class(
            config=config, server_state=state, app_state={}, _loop=loop
        )
        transport = _Transport()
        protocol.connection_made(transport)
        protocols.append(protocol)
        transports.append(transport)
    started = time.process_time()
    for start in range(0, len(requests), CONNECTIONS):
        batch = requests[start : start + CONNECTIONS]  # the last one may be short
        for protocol, request in zip(protocols, batch, strict=False):
            protocol.data_received(request)
        for _ in range(4):  # let the ASGI tasks (if any) run to their end
            await asyncio.sleep(0)
    used = time.process_time() - started
    answered = sum(t.written for t in transports)
    for protocol in protocols:
        protocol.connection_lost(None)
    if answered < len(requests):
        raise RuntimeError(f"{kind}: {answered} answers to {len(requests)} requests")
    return used / len(requests) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    requests = requests_for(args.requests)
    kinds = ["bare", "asgi"]
    results: dict[str, list[float]] = {kind: [] for kind in kinds}

    async def measure() -> None:
        for kind in kinds:  # warm-up
            await run_served(kind, requests[: CONNECTIONS * 20])
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                results[kind].append(await run_served(kind, requests))

    import uvloop

    uvloop.run(measure())
    median = {kind: statistics.median(values) for kind, values in results.items()}
    print(f"{'server + app':<40}{'CPU us/request (median)':>24}{'bare / this':>14}")
    for kind, label in (
        ("bare", "bare uvicorn 202 app (ceiling)"),
        ("asgi", "cemesh ingress, ASGI path (default)"),
    ):
        print(f"{label:<40}{median[kind]:>24.2f}{median['bare'] / median[kind]:>14.0%}")
    print(json.dumps({"us_per_request": results, "median": median}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
