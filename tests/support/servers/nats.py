"""A real NATS server with JetStream for tests (the ``nats`` bus adapter's server).

Fixtures (registered in ``tests/conftest.py`` through ``pytest_plugins``):

- ``nats_server`` (session): one ``nats-server -js`` on free ports of 127.0.0.1, its JetStream
  data in a new temp dir, stopped (that PID only) at the end of the session. Tests share it by
  using fresh topic and group names.
- ``restartable_nats_server``: a server of the calling test alone, which the test may stop
  (``stop()``: SIGTERM), crash (``kill()``: SIGKILL) and start again (``start()``, or
  ``restart(crash=...)``) on the SAME port and data dir, so that clients reconnect to it and
  find their streams and consumers again. ``restart_async``/``start_async`` do the same from an
  async test without blocking its event loop (the adapter under test keeps running).

Readiness is ``/healthz?js-enabled-only=true`` on the monitoring port answering 200, polled for
at most :data:`START_TIMEOUT` seconds. When the binary is missing or the server does not start,
the fixture fails (never skips) and says how to install it, with the tail of the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "install the NATS server: `apt-get install nats-server` (Debian/Ubuntu; or run "
    "tests/support/install_servers.sh), or put a release binary from "
    "https://github.com/nats-io/nats-server/releases on PATH"
)
BINARY = "nats-server"
FALLBACK_PATHS = (Path("/usr/sbin/nats-server"), Path("/usr/bin/nats-server"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def find_binary() -> Path:
    """The nats-server binary (PATH, then the Debian locations); fails the test if missing."""
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    for path in FALLBACK_PATHS:
        if os.access(path, os.X_OK):
            return path
    pytest.fail(
        f"{BINARY} not found on PATH nor in {', '.join(map(str, FALLBACK_PATHS))}. "
        f"The nats bus tests need a real server: {INSTALL_HINT}",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server with JetStream; ``start``/``stop`` keep its ports and data dir."""

    binary: Path
    base_dir: Path
    port: int = field(default_factory=_free_port)
    monitor_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What the adapter's ``url`` option takes."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "nats-server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (same port and data dir as before) and wait until it is ready."""
        if self.running:
            raise RuntimeError(f"nats-server already running (pid {self.process.pid})")  # type: ignore[union-attr]
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "-js",
                    "-sd", str(self.store_dir),
                    "-a", "127.0.0.1",
                    "-p", str(self.port),
                    "-m", str(self.monitor_port),
                ],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir,
            )  # fmt: skip
        try:
            self._wait_until_ready(timeout)
        except ServerStartError:
            self.kill()
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"nats-server exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=1) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:  # 503 while JetStream is starting
                last = f"HTTP {exc.code}"
            except OSError as exc:  # not listening yet
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"nats-server not ready after {timeout}s ({health}: {last}):\n{self.log_tail()}"
                )
            time.sleep(0.05)  # polling interval of a readiness probe, bounded by the deadline

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit; this PID only."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with ``crash``) and start again on the same port and data dir."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    async def start_async(self) -> None:
        """``start`` in a worker thread, so that the test's event loop keeps running."""
        await asyncio.to_thread(self.start)

    async def restart_async(self, *, crash: bool = False) -> None:
        """``restart`` in a worker thread, so that the test's event loop keeps running."""
        await asyncio.to_thread(self.restart, crash=crash)


def launch(base_dir: Path) -> NatsServer:
    """A started server in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    server = NatsServer(find_binary(), base_dir)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        pytest.fail(f"nats-server did not start: {exc}\n({INSTALL_HINT})", pytrace=False)
    return server


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One real NATS JetStream server for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="cemesh-nats-"))
    try:
        server = launch(base)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restartable_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS server of this test alone, which it may stop, kill and start again."""
    server = launch(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()
