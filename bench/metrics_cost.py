"""What the per-Broker/Trigger metrics cost per event, measured in process (issue 15 item 1).

Over HTTP (``bench/metrics_overhead.py``) the spread between runs and processes is about as large
as the effect, so this measures it in one process, without sockets:

1. the recording itself, exactly as the ingress (one accepted event) and the dispatcher (one
   settled delivery) do it, against the same calls with recording off, with ``timeit`` (best of
   ``--repeat``);
2. the ingress as served: the same 1 KiB POSTs fed to uvicorn's protocol and cemesh's app
   (``bench/ingress_inprocess.py``), with the metrics on and off in turns (ABBA, ``--rounds``),
   CPU per request (median): server and app, without the kernel's share.

Run: ``.venv/bin/python bench/metrics_cost.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path
from time import perf_counter

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingress_inprocess import requests_for, run_served
from broker.core.events import new_event
from broker.core.metrics import DeliveryMeter, Metrics

ROUTE = ("broker", "default", "default")
CONSUMER = ("trigger", "default", "default", "bench")


def ingress_record(metrics: Metrics) -> None:
    """The ingress's per-request recording for one accepted event (Ingress._count_accepted)."""
    event = EVENT
    started = perf_counter()
    metrics.accepted += 1
    if metrics.detail:
        elapsed_ms = (perf_counter() - started) * 1000.0
        metrics.ingress_meter(ROUTE).accepted(event.type, elapsed_ms)


def dispatch_record(metrics: Metrics) -> None:
    """The dispatcher's recording of one settled delivery (Dispatcher._count, the consumer's
    meter looked up as _Consumer.meter does: once per spec, here once per run)."""
    started = perf_counter()
    metrics.deliveries["delivered"] += 1
    if metrics.detail:
        meter = METERS.get(id(metrics))
        if meter is None:
            meter = METERS[id(metrics)] = metrics.delivery_meter(CONSUMER)
        meter.settled(EVENT.type, "delivered", 202, perf_counter() - started)


METERS: dict[int, DeliveryMeter] = {}
EVENT = new_event(type="com.example.bench", source="/bench")


def best_us(call: object, number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def served_us(requests: int, rounds: int) -> tuple[float, float]:
    """Median CPU us per request served with the metrics on and off (ABBA order)."""
    batch = requests_for(requests)
    results: dict[str, list[float]] = {"asgi": [], "asgi-no-metrics": []}

    async def measure() -> None:
        for kind in results:  # warm-up
            await run_served(kind, batch[: len(batch) // 10])
        for round_ in range(rounds):
            order = list(results) if round_ % 2 == 0 else list(results)[::-1]
            for kind in order:
                results[kind].append(await run_served(kind, batch))

    import uvloop

    uvloop.run(measure())
    return statistics.median(results["asgi"]), statistics.median(results["asgi-no-metrics"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10_000, help="per served round")
    parser.add_argument("--rounds", type=int, default=8, help="served rounds per side")
    options = parser.parse_args()
    on, off = Metrics(), Metrics(detail=False)
    rows = []
    for name, record in (("ingress, per event", ingress_record), ("delivery", dispatch_record)):
        with_us = best_us(lambda r=record: r(on), options.number, options.repeat)
        without_us = best_us(lambda r=record: r(off), options.number, options.repeat)
        rows.append((name, with_us, without_us, with_us - without_us))
    with_us, without_us = served_us(options.requests, options.rounds)
    rows.append(("ingress served", with_us, without_us, with_us - without_us))
    print(f"{'in process':<22}{'on (us)':>10}{'off (us)':>10}{'added (us)':>12}{'added':>9}")
    for name, with_us, without_us, added in rows:
        share = f"{added / without_us:+.1%}" if name == "ingress served" else ""
        print(f"{name:<22}{with_us:>10.3f}{without_us:>10.3f}{added:>12.3f}{share:>9}")


if __name__ == "__main__":
    main()
