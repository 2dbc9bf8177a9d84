"""What the per-Broker/Trigger metrics cost per event, measured in process (issue 15 item 1).

End-to-end runs (``CEMESH_METRICS_DETAIL=true|false .venv/bin/python bench/e2e.py``) compare
events/s with and without the metrics, but on a shared machine their run-to-run spread is larger
than the effect. This measures the recording itself, exactly as the ingress (one accepted event)
and the dispatcher (one settled delivery) do it, against the same calls with recording off, with
``timeit`` (best of ``--repeat``). Divide by cemesh's CPU per event (bench/e2e.py prints it) for
the share of the hot path.

Run: ``.venv/bin/python bench/metrics_cost.py``.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path
from time import perf_counter

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    on, off = Metrics(), Metrics(detail=False)
    rows = []
    for name, record in (("ingress, per event", ingress_record), ("delivery", dispatch_record)):
        with_us = best_us(lambda r=record: r(on), options.number, options.repeat)
        without_us = best_us(lambda r=record: r(off), options.number, options.repeat)
        rows.append((name, with_us, without_us, with_us - without_us))
    print(f"{'recording':<22}{'on (us)':>10}{'off (us)':>10}{'added (us)':>12}")
    for name, with_us, without_us, added in rows:
        print(f"{name:<22}{with_us:>10.3f}{without_us:>10.3f}{added:>12.3f}")


if __name__ == "__main__":
    main()
