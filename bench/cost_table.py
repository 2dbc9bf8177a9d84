"""How cost grows (issue 14, item 6): Triggers matching each event, and event size.

One ``cemesh serve`` (embedded default: memory bus, SQLite) with Broker ``default/default`` and
``bench/subscriber.py``, all on 127.0.0.1. Each row is one closed-loop wrk run (``--duration``
seconds, ``--connections``) of binary-mode events, after which the bench waits until every
accepted event reached the subscriber once per Trigger:

- **Triggers**: 1, 10 and 100 Triggers without a filter (every one matches every event), all to
  the subscriber, 1 KiB events. Reported: events/s accepted, deliveries/s, cemesh CPU per event
  and per delivery. Goal: CPU per delivery at N Triggers no more than ``TRIGGER_GOAL`` times the
  1-Trigger figure of the same run (the cost of an event grows at most linearly with its
  deliveries: the ingress's share is paid once).
- **Sizes**: 1 KiB, 64 KiB and 1 MiB events, 1 Trigger. Ceiling: the bare uvicorn 202 app
  (``bench/bare_app.py``) loaded with the same requests in the same run. Reported: events/s,
  MB/s delivered, cemesh CPU per event and per KiB beyond the 1 KiB row, beside the bare app's.
  Goal: cemesh's CPU per extra KiB at most ``BYTES_GOAL`` times the bare app's (cemesh reads
  the body once as the bare app does and writes it once to the subscriber: no re-encoding, no
  copy beyond those of the server and the client; see README "How cost grows").

Every delivery is counted: ``received == accepted x Triggers`` and distinct ids == accepted
(lost 0, duplicated 0). Prints a table and, as the last line of stdout, the JSON (also
``--json FILE``). Every child is stopped by its PID in a ``finally``.

Run: ``make bench-costs`` or ``.venv/bin/python bench/cost_table.py [--duration 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e import Bench, Options, Row, print_table
from bench.loadgen import WrkResult, event_body, find_wrk, run_wrk, wrk_script
from bench.procs import get_json, http

TRIGGER_COUNTS = (1, 10, 100)
SIZES = (1024, 64 * 1024, 1024 * 1024)
TRIGGER_GOAL = 1.10
BYTES_GOAL = 3.0

TRIGGER = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: t{n}
  namespace: default
spec:
  broker: default
  subscriber:
    uri: {uri}
"""


class CostBench(Bench):
    """e2e.py's Bench, with runs of any event size and any number of Triggers."""

    def sized_wrk(self, url: str, duration: float, size: int) -> WrkResult:
        self._runs += 1
        tag = self._tag = f"r{self._runs}"
        script = self.workdir / f"wrk-{tag}.lua"
        script.write_text(wrk_script(tag, body=event_body(size)))
        return run_wrk(url, script, duration=duration, connections=self.options.connections)

    def triggers(self, cemesh_url: str, subscriber_url: str, count: int) -> None:
        """Make the Broker have ``count`` Triggers t0.. (adding only), all live."""
        manifest = "---\n".join(TRIGGER.format(n=n, uri=f"{subscriber_url}/") for n in range(count))
        self.apply(cemesh_url, manifest, f"triggers-{count}")

        def all_deliver() -> bool:
            # Live once one probe reaches the subscriber through every Trigger.
            http("GET", f"{subscriber_url}/reset")
            if self.probe(cemesh_url) != 202:
                return False
            deadline = time.monotonic() + 3.0
            while self.received(subscriber_url) < count:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            return True

        self.wait_for(all_deliver, f"{count} Triggers to deliver", timeout=60.0)
        self.wait_for(lambda: self._quiet(subscriber_url), "probes to settle", timeout=30.0)

    def _quiet(self, subscriber_url: str) -> bool:
        before = self.received(subscriber_url)
        time.sleep(0.3)
        return self.received(subscriber_url) == before

    def row(self, cemesh_url: str, subscriber_url: str, *, triggers: int, size: int) -> dict:
        """One closed-loop run and its drain: rates, CPU, and the delivery count check."""
        self.wait_for(lambda: self._quiet(subscriber_url), "earlier deliveries to end", 120.0)
        http("GET", f"{subscriber_url}/reset")
        accepted_before = self.accepted(cemesh_url)
        cpu = self.cemesh.cpu_seconds()
        url = f"{cemesh_url}/default/default"
        self.log(f"{triggers} Trigger(s), {size} B events: {self.options.duration:g}s")
        result = self.sized_wrk(url, self.options.duration, size)
        # Requests still in cemesh when wrk stopped may be accepted after it: count them too.
        deadline = time.monotonic() + self.options.drain_timeout
        while True:
            accepted = self.accepted(cemesh_url) - accepted_before
            if self.received(subscriber_url) >= accepted * triggers:
                time.sleep(0.3)  # a late acceptance or a duplicate would show now
                if self.accepted(cemesh_url) - accepted_before == accepted:
                    break
                continue
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        used = self.cemesh.cpu_seconds() - cpu
        stats = get_json(f"{subscriber_url}/stats")
        counts = get_json(f"{subscriber_url}/count")
        delivered = int(stats["received"])
        rate = float(stats["rate"])
        return {
            "triggers": triggers,
            "event_bytes": size,
            "accepted": accepted,
            "events_per_s": result.requests / result.duration if result.duration else 0.0,
            "deliveries_per_s": rate,
            "delivered_events_per_s": rate / triggers,
            "mb_per_s": rate * size / 1e6,
            "delivered": delivered,
            "distinct": counts["distinct"],
            "every_delivery_once": delivered == accepted * triggers
            and counts["distinct"] == accepted,
            "non_2xx": result.non_2xx,
            "cpu_us_per_event": used / accepted * 1e6 if accepted else None,
            "cpu_us_per_delivery": used / delivered * 1e6 if delivered else None,
        }

    def bare_ceiling(self, bare_url: str, size: int) -> dict[str, Any]:
        cpu = self.bare_app.cpu_seconds()
        result = self.sized_wrk(bare_url, self.options.duration, size)
        used = self.bare_app.cpu_seconds() - cpu
        return {
            "event_bytes": size,
            "requests_per_s": result.rate,
            "cpu_us_per_request": used / result.requests * 1e6 if result.requests else None,
        }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        rate=0.0,
        drain_timeout=args.drain_timeout,
    )
    bench = CostBench(options, workdir)
    out: dict[str, Any] = {"triggers": [], "sizes": [], "ceiling": []}
    try:
        bare_url = bench.start_bare_app()
        cemesh_url, subscriber_url = bench.start_cemesh_and_subscriber()
        for size in SIZES:  # the ceiling first, then cemesh at each size with one Trigger
            out["ceiling"].append(bench.bare_ceiling(bare_url, size))
        bench.bare_app.stop()
        bench.triggers(cemesh_url, subscriber_url, 1)
        bench.sized_wrk(f"{cemesh_url}/default/default", args.warmup, 1024)
        for size in SIZES:
            out["sizes"].append(bench.row(cemesh_url, subscriber_url, triggers=1, size=size))
        for count in TRIGGER_COUNTS:
            bench.triggers(cemesh_url, subscriber_url, count)
            out["triggers"].append(bench.row(cemesh_url, subscriber_url, triggers=count, size=1024))
    finally:
        bench.stop_all()
    return out


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def rows_for(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    base = results["triggers"][0]["cpu_us_per_delivery"] if results["triggers"] else None
    for entry in results["triggers"]:
        n = entry["triggers"]
        per = entry["cpu_us_per_delivery"]
        ratio = per / base if per and base else None
        ok = entry["every_delivery_once"] and ratio is not None and ratio <= TRIGGER_GOAL
        rows.append(
            Row(
                f"{n} Trigger(s), 1 KiB: events/s, deliveries/s",
                f"{entry['events_per_s']:,.0f}, {entry['deliveries_per_s']:,.0f}",
            )
        )
        rows.append(
            Row(
                "  cemesh CPU per event, per delivery",
                f"{_us(entry['cpu_us_per_event'])}, {_us(per)}",
                f"<= {TRIGGER_GOAL:.2f} x 1-Trigger's",
                "" if ratio is None else f"{ratio:.2f}",
                "pass" if ok else "FAIL",
            )
        )
        rows.append(
            Row(
                "  delivered / accepted x Triggers",
                f"{entry['delivered']:,} / {entry['accepted'] * n:,}",
            )
        )
    ceilings = {c["event_bytes"]: c for c in results["ceiling"]}
    first = results["sizes"][0] if results["sizes"] else None
    for entry in results["sizes"]:
        size = entry["event_bytes"]
        ceiling = ceilings[size]
        rows.append(
            Row(
                f"{size // 1024} KiB events, 1 Trigger: events/s (MB/s)",
                f"{entry['delivered_events_per_s']:,.0f} ({entry['mb_per_s']:,.1f})",
                f"bare app {ceiling['requests_per_s']:,.0f} req/s",
                f"{entry['delivered_events_per_s'] / ceiling['requests_per_s']:.0%}"
                if ceiling["requests_per_s"]
                else "",
            )
        )
        rows.append(
            Row(
                "  CPU per event: cemesh, bare app",
                f"{_us(entry['cpu_us_per_event'])}, {_us(ceiling['cpu_us_per_request'])}",
            )
        )
        if first is not None and size > first["event_bytes"]:
            kib = (size - first["event_bytes"]) / 1024
            mine = (entry["cpu_us_per_event"] - first["cpu_us_per_event"]) / kib
            bare0 = ceilings[first["event_bytes"]]["cpu_us_per_request"]
            theirs = (ceiling["cpu_us_per_request"] - bare0) / kib
            ratio = mine / theirs if theirs > 0 else None
            ok = entry["every_delivery_once"] and ratio is not None and ratio <= BYTES_GOAL
            rows.append(
                Row(
                    "  CPU per extra KiB: cemesh, bare app",
                    f"{mine:.2f} us, {theirs:.2f} us",
                    f"<= {BYTES_GOAL:g} x bare app's",
                    "" if ratio is None else f"{ratio:.2f}",
                    "pass" if ok else "FAIL",
                )
            )
        rows.append(
            Row(
                "  delivered / accepted",
                f"{entry['delivered']:,} / {entry['accepted']:,}",
                "equal, once each",
                "",
                "pass" if entry["every_delivery_once"] else "FAIL",
            )
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    find_wrk()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cemesh-costs-") as tmp:
        results = run(args, Path(tmp))
    results["setup"] = {
        "duration_s": args.duration,
        "connections": args.connections,
        "cpus": os.cpu_count(),
    }
    results["elapsed_s"] = time.monotonic() - started
    rows = rows_for(results)
    passed = all(r.verdict != "FAIL" for r in rows)
    results["passed"] = passed
    print_table(rows)
    text = json.dumps(results, sort_keys=True)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
