"""Control plane at scale (issue 14, item 5): apply 1,000 Triggers, restart with 10,000.

    .venv/bin/python bench/control_plane.py [--apply 1000] [--restart-with 10000]

Runs ``cemesh serve`` (SQLite in a temp dir, in-memory bus, API auth off on loopback) and:

1. starts it on an empty store and times spawn -> ``/readyz`` (the ceiling of a restart);
2. applies one Broker and ``--apply`` Triggers in one manifest with ``cemesh apply -f`` and times
   it (goal < 10 s for 1,000); the Triggers' filters pin distinct types;
3. stops it, adds Triggers straight into the store up to ``--restart-with`` (their statuses
   empty, as if written by another replica), starts it again and times spawn -> ``/readyz``
   (the first controller sync, i.e. every Trigger reconciled, subscribed and its status written;
   goal < 5 s for 10,000), then checks every Trigger reports Ready;
4. reports the resident memory of the process per Trigger (RSS growth over the empty start).

Each figure is printed beside its ceiling measured in the same run; the machine's load changes
all of them, so repeat before reading much into one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import Child, free_port, get_json, wait_until_serving
from broker.controlplane.store import Store

CEMESH = Path(sys.executable).parent / "cemesh"
APPLY_GOAL_S = 10.0
RESTART_GOAL_S = 5.0
# Runs `cemesh serve` under cProfile. uvicorn re-raises SIGTERM once it has shut down, with
# the handler it found restored: this one, which writes the profile then.
_PROFILED_SERVE = """
import cProfile, signal, sys
profile, out = cProfile.Profile(), sys.argv[1]
def write(*_):
    profile.disable()
    profile.dump_stats(out)
    raise SystemExit(0)
signal.signal(signal.SIGTERM, write)
sys.argv = ["cemesh", *sys.argv[2:]]
from broker.cli import main
profile.enable()
main()
"""
BROKER = {
    "apiVersion": "eventing.knative.dev/v1",
    "kind": "Broker",
    "metadata": {"name": "default", "namespace": "default"},
}


def trigger(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": f"t{index}", "namespace": "default"},
        "spec": {
            "broker": "default",
            "filter": {"attributes": {"type": f"com.example.t{index}"}},
            "subscriber": {"uri": f"http://127.0.0.1:9/t{index}"},
        },
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Run:
    def __init__(self, workdir: Path, profile: Path | None = None) -> None:
        self.workdir = workdir
        self.profile = profile
        self.starts = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = f"sqlite+aiosqlite:///{workdir / 'cemesh.db'}"
        self.env = dict(os.environ)
        self.env.pop("CEMESH_CONFIG", None)
        self.env.update(
            {
                "CEMESH_DATABASE_URL": self.database_url,
                "CEMESH_AUTH": "none",
                "CEMESH_LOG_LEVEL": "WARNING",
                "CEMESH_URL": self.url,
            }
        )
        self.child: Child | None = None

    def start(self) -> float:
        """Spawn cemesh; seconds until /readyz answers 200."""
        started = time.monotonic()
        argv = [str(CEMESH), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.profile is not None:  # cProfile the server; written when it exits on SIGTERM
            self.starts += 1
            out = self.profile / f"cemesh-{self.starts}.prof"
            argv = [sys.executable, "-c", _PROFILED_SERVE, str(out), *argv[1:]]
        self.child = Child("cemesh", argv, self.workdir / "cemesh.log", self.env)
        wait_until_serving(self.child, f"{self.url}/readyz", timeout=600)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def apply(self, documents: list[dict[str, Any]]) -> float:
        manifest = self.workdir / "manifest.yaml"  # JSON documents are YAML documents
        manifest.write_text("".join(f"---\n{json.dumps(doc)}\n" for doc in documents))
        started = time.monotonic()
        subprocess.run(
            [str(CEMESH), "apply", "-f", str(manifest)],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.monotonic() - started

    def ready_triggers(self) -> tuple[int, int]:
        listing = get_json(f"{self.url}/apis/eventing.knative.dev/v1/triggers", timeout=120)
        items = listing["items"]
        ready = sum(
            any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (item.get("status") or {}).get("conditions") or []
            )
            for item in items
        )
        return ready, len(items)

    async def add_to_store(self, first: int, last: int) -> None:
        store = Store(self.database_url)
        await store.open(migrate=False)
        try:
            for index in range(first, last):
                await store.create(trigger(index))
        finally:
            await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apply", type=int, default=1000)
    parser.add_argument("--restart-with", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--profile", type=Path, default=None, help="write a cProfile of each server run here"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cemesh-cp-bench-") as tmp:
        run = Run(Path(tmp), args.profile)
        try:
            result = _measure(run, args.apply, args.restart_with)
        finally:
            run.stop()
    print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _verdict(value: float, goal: float) -> str:
    return f"goal < {goal:g} s: {'met' if value < goal else 'MISSED'}"


def _measure(run: Run, applied: int, total: int) -> dict[str, Any]:
    """Long: the four steps of the module docstring, in order, each printed as it finishes.

    Beside each wall time, the CPU seconds cemesh's process used for it: on a shared machine
    the wall time of a step waits for other processes too, its CPU does not.
    """
    empty_start_s = run.start()
    assert run.child is not None
    empty_rss = rss_bytes(run.child.pid)
    empty_cpu = run.child.cpu_seconds()
    print(
        f"start, empty store      {empty_start_s:6.2f} s to /readyz, {empty_cpu:.2f} s CPU "
        "(the ceiling of a restart)"
    )
    broker_s = run.apply([BROKER])
    print(f"apply 1 Broker          {broker_s:6.2f} s (the ceiling of one apply)")
    cpu_before = run.child.cpu_seconds()
    apply_s = run.apply([trigger(index) for index in range(applied)])
    apply_cpu = run.child.cpu_seconds() - cpu_before
    ready, listed = run.ready_triggers()
    applied_rss = rss_bytes(run.child.pid)
    print(
        f"apply {applied} Triggers    {apply_s:6.2f} s, {apply_cpu:.2f} s CPU of cemesh  "
        f"({ready}/{listed} Ready; {_verdict(apply_s, APPLY_GOAL_S)})"
    )
    run.stop()
    asyncio.run(run.add_to_store(applied, total))
    restart_s = run.start()
    restart_cpu = run.child.cpu_seconds()
    ready_after, listed_after = run.ready_triggers()
    full_rss = rss_bytes(run.child.pid)
    print(
        f"restart with {listed_after} Triggers {restart_s:6.2f} s to /readyz, {restart_cpu:.2f} s "
        f"CPU ({ready_after} Ready; {_verdict(restart_s, RESTART_GOAL_S)}); beyond the empty "
        f"start: {restart_s - empty_start_s:.2f} s, {restart_cpu - empty_cpu:.2f} s CPU"
    )
    per_trigger = (full_rss - empty_rss) / max(1, listed_after)
    print(
        f"memory                  {per_trigger / 1024:6.1f} KiB RSS per Trigger, reported "
        f"(no goal) ({empty_rss / 2**20:.0f} MiB empty, {applied_rss / 2**20:.0f} MiB with "
        f"{applied}, {full_rss / 2**20:.0f} MiB with {listed_after})"
    )
    return {
        "empty_start_s": round(empty_start_s, 3),
        "empty_start_cpu_s": round(empty_cpu, 3),
        "apply_broker_s": round(broker_s, 3),
        "apply_triggers": applied,
        "apply_s": round(apply_s, 3),
        "apply_cpu_s": round(apply_cpu, 3),
        "apply_goal_met": apply_s < APPLY_GOAL_S,
        "apply_ready": ready,
        "restart_triggers": listed_after,
        "restart_s": round(restart_s, 3),
        "restart_cpu_s": round(restart_cpu, 3),
        "restart_goal_met": restart_s < RESTART_GOAL_S,
        "restart_ready": ready_after,
        "rss_bytes_per_trigger": round(per_trigger),
        "rss_bytes": {"empty": empty_rss, "applied": applied_rss, "full": full_rss},
    }


if __name__ == "__main__":
    raise SystemExit(main())
