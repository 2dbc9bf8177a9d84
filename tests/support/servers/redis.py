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
The process lifecycle is :class:`tests.support.servers.base.ServerProcess`'s.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.servers import base
from tests.support.servers.base import START_TIMEOUT as START_TIMEOUT
from tests.support.servers.base import STOP_TIMEOUT as STOP_TIMEOUT
from tests.support.servers.base import ServerStartError as ServerStartError
from tests.support.servers.base import free_port as _free_port

INSTALL_HINT = (
    "install Redis: `apt-get install redis-server` (Debian/Ubuntu; or run "
    "tests/support/install_servers.sh); the test starts its own server on a free port"
)
BINARY = "redis-server"
FALLBACK_PATHS = (Path("/usr/bin/redis-server"), Path("/usr/sbin/redis-server"))


def find_binary() -> Path:
    """The redis-server binary (PATH, then the Debian locations); fails the test if missing."""
    return base.require_binary(BINARY, bus="redis", hint=INSTALL_HINT, fallbacks=FALLBACK_PATHS)


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
class RedisServer(base.ServerProcess):
    """One redis-server; ``start``/``stop`` keep its port and data dir."""

    name = "redis-server"
    log_name = "redis-server.log"

    appendonly: bool = False  # an fsynced AOF, for tests that restart the server
    port: int = field(default_factory=_free_port)

    @property
    def url(self) -> str:
        """What the adapter's ``url`` option takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

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

    @property
    def probe_target(self) -> str:
        return "PING"

    def probe(self) -> str | None:
        answer = ping(self.port)
        return None if answer == "+PONG" else answer


def launch(base_dir: Path, *, appendonly: bool = False) -> RedisServer:
    """A started server in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    server = RedisServer(find_binary(), base_dir, appendonly=appendonly)
    return base.start_or_fail(server, title=BINARY, hint=INSTALL_HINT)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis server (no persistence) for the whole session."""
    yield from base.in_temp_dir("cemesh-redis-", launch)


@pytest.fixture
def restartable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test alone (fsynced AOF), which it may stop, kill and restart."""
    yield from base.stopped_after(launch(tmp_path / "redis", appendonly=True))
