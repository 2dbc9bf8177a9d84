"""A real Redis server for tests (the ``redis`` bus adapter's server).

Fixtures (registered in ``tests/conftest.py`` through ``pytest_plugins``):

- ``redis_server`` (session): one ``redis-server`` on a free port of 127.0.0.1 (never the
  default 6379, so a Redis started by the Debian package does not interfere), without
  persistence (``--save '' --appendonly no``): crash tests of cemesh keep it running. Stopped
  (that PID only) at the end of the session. Tests share it by using fresh topic and group names.
- ``restartable_redis_server``: a server of the calling test alone, with an fsynced AOF
  (``--appendonly yes --appendfsync always``), which the test may stop (``stop()``: SIGTERM),
  crash (``kill()``: SIGKILL) and start again (``start()``, or ``restart(crash=...)``) on the
  SAME port and data dir: every answered XADD, group and pending entry survives.
  ``restart_async``/``start_async`` do the same from an async test without blocking its event
  loop (the adapter under test keeps running and reconnects).

Readiness is ``PING`` answering ``+PONG`` (not ``-LOADING`` while the AOF is replayed), polled
for at most :data:`START_TIMEOUT` seconds. When the binary is missing or the server does not
start, the fixture fails (never skips) and says how to install it, with the tail of its log.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "install Redis: `apt-get install redis-server` (Debian/Ubuntu; or run "
    "tests/support/install_servers.sh); the test starts its own server on a free port"
)
BINARY = "redis-server"
FALLBACK_PATHS = (Path("/usr/bin/redis-server"), Path("/usr/sbin/redis-server"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def find_binary() -> Path:
    """The redis-server binary (PATH, then the Debian locations); fails the test if missing."""
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    for path in FALLBACK_PATHS:
        if os.access(path, os.X_OK):
            return path
    pytest.fail(
        f"{BINARY} not found on PATH nor in {', '.join(map(str, FALLBACK_PATHS))}. "
        f"The redis bus tests need a real server: {INSTALL_HINT}",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 1.0) -> str:
    """Send PING to 127.0.0.1:``port``; the first line of the answer (``+PONG`` when ready)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            answer += chunk
    return answer.decode(errors="replace").strip()


@dataclass
class RedisServer:
    """One redis-server; ``start``/``stop`` keep its port and data dir."""

    binary: Path
    base_dir: Path
    appendonly: bool = False  # an fsynced AOF, for tests that restart the server
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What the adapter's ``url`` option takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "redis-server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def command(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.appendonly
            else ["--appendonly", "no"]
        )
        return [
            str(self.binary),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            *persistence,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (same port and data dir as before) and wait until it is ready."""
        if self.running:
            raise RuntimeError(f"redis-server already running (pid {self.process.pid})")  # type: ignore[union-attr]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir
            )
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
                    f"redis-server exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                last = ping(self.port)
                if last == "+PONG":
                    return
            except OSError as exc:  # not listening yet
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"redis-server not ready after {timeout}s (PING: {last}):\n{self.log_tail()}"
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


def launch(base_dir: Path, *, appendonly: bool = False) -> RedisServer:
    """A started server in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    server = RedisServer(find_binary(), base_dir, appendonly=appendonly)
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        pytest.fail(f"redis-server did not start: {exc}\n({INSTALL_HINT})", pytrace=False)
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis server (no persistence) for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="cemesh-redis-"))
    try:
        server = launch(base)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restartable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test alone (fsynced AOF), which it may stop, kill and restart."""
    server = launch(tmp_path / "redis", appendonly=True)
    try:
        yield server
    finally:
        server.stop()
