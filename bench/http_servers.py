"""Side by side: the same ingress load on several HTTP servers, in rotating (ABBA) order.

Every variant is a command serving on ``--port P``: the bare 202 app (``bench/bare_app.py``, the
ceiling of ``bench/e2e.py``) and cemesh's app (Broker ``default/default``, no Trigger), each under
the HTTP servers to compare. The load is ``bench/e2e.py``'s (wrk, 1 thread, 64 connections, a
1 KiB binary-mode CloudEvent). Rounds run the variants in turn, the order reversed every other
round, so a drift of the machine moves every variant alike. Printed per variant: requests/s (sum
over rounds / time), its share of the first variant's, per-round figures, and the server's CPU
microseconds per request (all its threads, from ``/proc``).

Run: ``.venv/bin/python bench/http_servers.py [--rounds 4] [--slice 4] [--variants a,b,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e import BROKER_MANIFEST, CEMESH
from bench.loadgen import find_wrk, run_wrk, wrk_script
from bench.procs import Child, free_port, wait_until_listening, wait_until_serving

BENCH_DIR = Path(__file__).resolve().parent
PY = sys.executable

_UVICORN_CLI = [
    str(Path(PY).parent / "uvicorn"),
    "bench.bare_app:app",
    "--app-dir",
    str(BENCH_DIR.parent),
    "--host",
    "127.0.0.1",
    "--no-access-log",
    "--log-level",
    "warning",
]

# name -> (argv before --port, is cemesh, extra environment)
VARIANTS: dict[str, tuple[list[str], bool, dict[str, str]]] = {
    "bare-uvicorn": ([PY, str(BENCH_DIR / "bare_app.py")], False, {}),
    "bare-granian": ([PY, str(BENCH_DIR / "bare_app.py"), "--http-server", "granian"], False, {}),
    "cemesh-granian-rust-tasks": (
        [str(CEMESH), "serve", "--host", "127.0.0.1"],
        True,
        {"CEMESH_HTTP_SERVER": "granian", "GRANIAN_TASK_IMPL": "rust"},
    ),
    # uvicorn's own CLI, to see what its settings cost: h11 against httptools, asyncio's loop.
    "bare-uvicorn-cli": ([*_UVICORN_CLI, "--http", "httptools", "--loop", "uvloop"], False, {}),
    "bare-uvicorn-cli-h11": ([*_UVICORN_CLI, "--http", "h11", "--loop", "uvloop"], False, {}),
    "bare-uvicorn-cli-asyncio": (
        [*_UVICORN_CLI, "--http", "httptools", "--loop", "asyncio"],
        False,
        {},
    ),
    "cemesh-uvicorn": ([str(CEMESH), "serve", "--host", "127.0.0.1"], True, {}),
    "cemesh-granian": (
        [str(CEMESH), "serve", "--host", "127.0.0.1"],
        True,
        {"CEMESH_HTTP_SERVER": "granian"},
    ),
}


def _accepts(url: str) -> bool:
    """Whether ``url`` answers 202 to a small binary-mode event."""
    request = urllib.request.Request(
        url,
        data=b"{}",
        method="POST",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "probe",
            "ce-source": "/bench",
            "ce-type": "probe",
            "content-type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 202
    except OSError:
        return False


def start(name: str, workdir: Path) -> tuple[Child, str]:
    argv, is_cemesh, extra = VARIANTS[name]
    port = free_port()
    env = dict(os.environ)
    env.pop("CEMESH_CONFIG", None)
    env.update(extra)
    env.update(
        {
            "CEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / (name + '.db')}",
            "CEMESH_LOG_LEVEL": "WARNING",
        }
    )
    child = Child(name, [*argv, "--port", str(port)], workdir / f"{name}.log", env)
    url = f"http://127.0.0.1:{port}"
    if is_cemesh:
        wait_until_serving(child, f"{url}/readyz")
        manifest = workdir / f"{name}.yaml"
        manifest.write_text(BROKER_MANIFEST)
        subprocess.run(
            [str(CEMESH), "--server", url, "apply", "-f", str(manifest)],
            capture_output=True,
            timeout=30,
            check=True,
        )
        deadline = time.monotonic() + 30
        while not _accepts(f"{url}/default/default"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: Broker default/default not live after 30 s")
            time.sleep(0.1)
    else:
        wait_until_listening(child, port)
    return child, f"{url}/default/default"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slice", type=float, default=4.0, help="seconds per variant per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    find_wrk()
    names = args.variants.split(",")
    results: dict[str, dict[str, list[float]]] = {
        n: {"requests": [], "seconds": [], "cpu": []} for n in names
    }
    with tempfile.TemporaryDirectory(prefix="cemesh-servers-") as tmp:
        workdir = Path(tmp)
        children: list[Child] = []
        try:
            urls = {}
            for name in names:
                child, urls[name] = start(name, workdir)
                children.append(child)
            by_name = {c.name: c for c in children}
            runs = 0
            script = workdir / "load.lua"
            for name in names:
                runs += 1
                script.write_text(wrk_script(f"w{runs}"))
                run_wrk(urls[name], script, duration=args.warmup, connections=args.connections)
            for rnd in range(args.rounds):
                order = names if rnd % 2 == 0 else list(reversed(names))
                for name in order:
                    runs += 1
                    script.write_text(wrk_script(f"r{runs}"))
                    cpu = by_name[name].cpu_seconds()
                    res = run_wrk(
                        urls[name], script, duration=args.slice, connections=args.connections
                    )
                    results[name]["cpu"].append(by_name[name].cpu_seconds() - cpu)
                    results[name]["requests"].append(res.requests)
                    results[name]["seconds"].append(res.duration)
                    if res.non_2xx or res.socket_errors:
                        print(f"{name}: {res.non_2xx} non-2xx, {res.socket_errors} socket errors")
        finally:
            for child in reversed(children):
                child.stop()
    base = names[0]
    base_rate = sum(results[base]["requests"]) / sum(results[base]["seconds"])
    summary = {}
    for name in names:
        r = results[name]
        rate = sum(r["requests"]) / sum(r["seconds"])
        cpu_us = sum(r["cpu"]) / sum(r["requests"]) * 1e6
        per_round = [q / s for q, s in zip(r["requests"], r["seconds"], strict=True)]
        summary[name] = {"rate": rate, "share": rate / base_rate, "cpu_us": cpu_us}
        rounds = " ".join(f"{x:,.0f}" for x in per_round)
        print(
            f"{name:18} {rate:9,.0f} req/s  {rate / base_rate:6.1%} of {base}  "
            f"{cpu_us:6.1f} us CPU/request  rounds: {rounds}"
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
