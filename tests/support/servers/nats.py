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
The process lifecycle is :class:`tests.support.servers.base.ServerProcess`'s.
"""

from __future__ import annotations

import urllib.error
import urllib.request
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
    "install the NATS server: `apt-get install nats-server` (Debian/Ubuntu; or run "
    "tests/support/install_servers.sh), or put a release binary from "
    "https://github.com/nats-io/nats-server/releases on PATH"
)
BINARY = "nats-server"
FALLBACK_PATHS = (Path("/usr/sbin/nats-server"), Path("/usr/bin/nats-server"))


def find_binary() -> Path:
    """The nats-server binary (PATH, then the Debian locations); fails the test if missing."""
    return base.require_binary(BINARY, bus="nats", hint=INSTALL_HINT, fallbacks=FALLBACK_PATHS)


@dataclass
class NatsServer(base.ServerProcess):
    """One nats-server with JetStream; ``start``/``stop`` keep its ports and data dir."""

    name = "nats-server"
    log_name = "nats-server.log"

    port: int = field(default_factory=_free_port)
    monitor_port: int = field(default_factory=_free_port)

    @property
    def url(self) -> str:
        """What the adapter's ``url`` option takes."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.base_dir / "data"

    def prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "-js",
            "-sd", str(self.store_dir),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
        ]  # fmt: skip

    @property
    def probe_target(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"

    def probe(self) -> str | None:
        try:
            with urllib.request.urlopen(self.probe_target, timeout=1) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:  # 503 while JetStream is starting
            return f"HTTP {exc.code}"


def launch(base_dir: Path) -> NatsServer:
    """A started server in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    return base.start_or_fail(NatsServer(find_binary(), base_dir), title=BINARY, hint=INSTALL_HINT)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One real NATS JetStream server for the whole session."""
    yield from base.in_temp_dir("cemesh-nats-", launch)


@pytest.fixture
def restartable_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS server of this test alone, which it may stop, kill and start again."""
    yield from base.stopped_after(launch(tmp_path / "nats"))
