"""The ingress cost of OIDC sender identity: events/s with and without it, side by side.

``.venv/bin/python bench/oidc.py`` serves three cemesh processes on 127.0.0.1, each with Broker
``default/default`` and no Trigger (the ingress alone, as the "ingress" phase of ``bench/e2e.py``):

- ``off``: ingress OIDC off (today's ingress);
- ``oidc cached``: ``CEMESH_INGRESS_OIDC=true``, an EventPolicy (a ``sub`` pattern and a
  ``prefix`` filter) on the Broker; wrk sends one RS256 token on every request, so the signature
  is checked once and later requests hit the verified-token cache;
- ``oidc uncached``: the same with ``CEMESH_OIDC_TOKEN_CACHE_SIZE=0``: every request pays the
  full JWT check (RS256 signature, claims).

The issuer is a small JWKS server in this process (keys made with ``cryptography``, token signed
with PyJWT). wrk loads each cemesh in turn, ``--rounds`` times in rotating order, and the table
gives each configuration's events/s and its share of ``off``. Every child is stopped by its PID.

A second table times the check itself in this process (no HTTP), beside an empty function call
as the yardstick of how fast the machine is right now: a cached token, a full RS256 check, and
the EventPolicy decision for one event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bench.e2e import BROKER_MANIFEST as BROKER
from bench.loadgen import WrkResult, find_wrk, run_wrk, wrk_script
from bench.procs import Child, free_port, wait_until_serving

CEMESH = Path(sys.executable).parent / "cemesh"
AUDIENCE = "eventing.knative.dev/broker/default/default"
SUBJECT = "system:serviceaccount:default:bench-sender"

POLICY = """\
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata:
  name: bench
  namespace: default
spec:
  to:
    - ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
  from:
    - sub: system:serviceaccount:default:bench-*
  filters:
    - prefix: {type: dev.cemesh.bench}
"""


class Issuer:
    """A JWKS endpoint on loopback, in a thread, and the one token the load sends."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = {**RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True), "kid": "bench"}
        body = json.dumps({"keys": [{**jwk, "alg": "RS256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def token(self, lifetime: float = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": SUBJECT,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + int(lifetime),
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "bench"})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def cemesh_env(workdir: Path, name: str, issuer: Issuer, oidc: bool, cache: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEMESH_")}
    env.update(
        {
            "CEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / f'{name}.db'}",
            "CEMESH_LOG_LEVEL": "WARNING",
            "CEMESH_DRAIN_TIMEOUT": "3",
        }
    )
    if oidc:
        env.update(
            {
                "CEMESH_INGRESS_OIDC": "true",
                "CEMESH_OIDC_ISSUER": issuer.url,
                "CEMESH_OIDC_JWKS_URL": f"{issuer.url}/keys",
                "CEMESH_DEFAULT_AUTHORIZATION_MODE": "deny-all",  # only the policy lets it in
            }
        )
        if not cache:
            env["CEMESH_OIDC_TOKEN_CACHE_SIZE"] = "0"
    return env


def apply(workdir: Path, url: str, manifest: str, name: str, env: dict[str, str]) -> None:
    import subprocess

    path = workdir / f"{name}.yaml"
    path.write_text(manifest)
    done = subprocess.run(
        [str(CEMESH), "--server", url, "apply", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cemesh apply -f {name}.yaml failed:\n{done.stdout}{done.stderr}")


def probe(url: str, token: str | None) -> int:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": f"probe-{time.monotonic_ns()}",
        "ce-source": "/bench/probe",
        "ce-type": "dev.cemesh.bench.probe",
        "content-type": "application/json",
    }
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url}/default/default", data=b"{}", method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def per_check_costs(issuer: Issuer, token: str, iterations: int) -> dict[str, float]:
    """Microseconds per call, in this process: the verifier's paths and the policy decision."""
    from broker.auth.oidc import OidcVerifier
    from broker.core.events import CloudEvent
    from broker.core.ingress_authorization import CompiledPolicy, IngressAuthorization

    def nothing() -> None:
        return None

    def timed(call: Any, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            call()
        return (time.perf_counter() - start) / count * 1e6

    async def measure() -> dict[str, float]:
        cached = OidcVerifier(issuer.url, jwks_url=f"{issuer.url}/keys")
        uncached = OidcVerifier(issuer.url, jwks_url=f"{issuer.url}/keys", cache_size=0)
        try:
            await cached.verify(token, AUDIENCE)  # fetches the keys, caches the token
            await uncached.verify(token, AUDIENCE)
            start = time.perf_counter()
            full_count = max(iterations // 100, 50)
            for _ in range(full_count):
                await uncached.verify(token, AUDIENCE)
            full = (time.perf_counter() - start) / full_count * 1e6
        finally:
            await cached.close()
            await uncached.close()
        gate = IngressAuthorization(
            AUDIENCE,
            "default",
            (
                CompiledPolicy(
                    "default",
                    "bench",
                    ("system:serviceaccount:default:bench-*",),
                    filter=lambda e: str(e.attributes["type"]).startswith("dev.cemesh.bench"),
                ),
            ),
            "deny-all",
        )
        events = [CloudEvent(attributes={"id": "1", "type": "dev.cemesh.bench.load"}, data=None)]
        return {
            "empty call": timed(nothing, iterations),
            "cached token": timed(lambda: cached.cached(token, AUDIENCE), iterations),
            "full RS256 check": full,
            "policy decision": timed(lambda: gate.refusal(SUBJECT, events), iterations),
        }

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per cemesh")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--iterations", type=int, default=100_000, help="calls per timed path")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    options = parser.parse_args(argv)
    find_wrk()

    issuer = Issuer()
    token = issuer.token()
    configs = [("off", False, True), ("oidc cached", True, True), ("oidc uncached", True, False)]
    rates: dict[str, list[WrkResult]] = {name: [] for name, _, _ in configs}
    with tempfile.TemporaryDirectory(prefix="cemesh-bench-oidc-") as tmp, children() as started:
        workdir = Path(tmp)
        urls: dict[str, str] = {}
        for name, oidc, cache in configs:
            port = free_port()
            env = cemesh_env(workdir, name.replace(" ", "-"), issuer, oidc, cache)
            child = Child(
                name.replace(" ", "-"),
                [str(CEMESH), "serve", "--host", "127.0.0.1", "--port", str(port)],
                workdir / f"{name.replace(' ', '-')}.log",
                env,
            )
            started.append(child)
            url = f"http://127.0.0.1:{port}"
            wait_until_serving(child, f"{url}/readyz")
            apply(workdir, url, BROKER, f"broker-{port}", env)
            if oidc:
                apply(workdir, url, POLICY, f"policy-{port}", env)
            deadline = time.monotonic() + 20
            while probe(url, token if oidc else None) != 202:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name}: the Broker did not accept events:\n{child.log_tail()}"
                    )
                time.sleep(0.05)
            if oidc and probe(url, None) != 401:
                raise RuntimeError(f"{name}: an event without a token was not refused")
            urls[name] = url

        run = 0
        for round_ in range(options.rounds):
            order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
            for name, oidc, _ in order:
                run += 1
                script = workdir / f"wrk-{run}.lua"
                headers = {"authorization": f"Bearer {token}"} if oidc else None
                script.write_text(wrk_script(f"r{run}", headers=headers))
                target = f"{urls[name]}/default/default"
                if round_ == 0 and options.warmup > 0:
                    run_wrk(
                        target, script, duration=options.warmup, connections=options.connections
                    )
                result = run_wrk(
                    target, script, duration=options.duration, connections=options.connections
                )
                if result.non_2xx or result.socket_errors:
                    raise RuntimeError(f"{name}: {result.non_2xx} non-2xx, errors {result.errors}")
                rates[name].append(result)
                print(f"[bench] {name}: {result.rate:,.0f} events/s", file=sys.stderr, flush=True)
    costs = per_check_costs(issuer, token, options.iterations)
    issuer.close()

    baseline = statistics.median(r.rate for r in rates["off"])
    summary: dict[str, Any] = {"setup": vars(options) | {"json": str(options.json)}, "results": {}}
    print(f"\n{'ingress':<15} {'events/s':>10} {'of off':>8} {'p99 ms':>8}  runs")
    for name, results in rates.items():
        rate = statistics.median(r.rate for r in results)
        p99 = statistics.median(r.latency_us["p99"] for r in results) / 1000
        share = rate / baseline if baseline else 0.0
        runs = ", ".join(f"{r.rate:,.0f}" for r in results)
        print(f"{name:<15} {rate:>10,.0f} {share:>8.0%} {p99:>8.1f}  {runs}")
        summary["results"][name] = {"events_per_s": rate, "share_of_off": share, "p99_ms": p99}
    print(f"\n{'in-process check':<18} {'us/call':>8}")
    for name, micros in costs.items():
        print(f"{name:<18} {micros:>8.2f}")
    summary["per_check_us"] = costs
    line = json.dumps(summary)
    if options.json:
        options.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
