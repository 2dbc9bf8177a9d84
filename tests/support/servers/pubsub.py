"""The Google Cloud Pub/Sub emulator for tests (the ``pubsub`` bus adapter's server).

Fixtures (registered in ``tests/conftest.py`` through ``pytest_plugins``):

- ``pubsub_emulator`` (session): one ``cloud-pubsub-emulator`` on a free port of 127.0.0.1,
  run from a new temp dir (its log, ``pubsub-emulator.log``, is there), stopped at the end of
  the session. Tests share it by using fresh topic and group names.
- ``restartable_pubsub_emulator``: an emulator of the calling test alone, which the test may stop
  (``stop()``), crash (``kill()``) and start again (``start()``, ``restart(crash=...)``, or the
  ``*_async`` forms from an async test) on the SAME port, so that clients reconnect to it. The
  emulator keeps nothing across a restart (no persistence): topics and subscriptions are gone.

The Debian script execs Java 17 (``java -jar cloud-pubsub-emulator-*.jar``); it is started in a
session of its own (``start_new_session``) and stopped by signalling that process group only
(SIGTERM, then SIGKILL), so no JVM is left behind even if the script spawned it as a child.
Readiness is ``GET http://127.0.0.1:PORT/`` answering ``Ok`` (1-7 s), polled for at most
:data:`START_TIMEOUT` seconds. When the emulator or Java is missing, or it does not start, the
fixture fails (never skips), saying how to install it, with the tail of the emulator's log.
The rest of the process lifecycle is :class:`tests.support.servers.base.ServerProcess`'s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import base
from tests.support.servers.base import START_TIMEOUT as START_TIMEOUT
from tests.support.servers.base import STOP_TIMEOUT as STOP_TIMEOUT
from tests.support.servers.base import ServerStartError as ServerStartError
from tests.support.servers.base import free_port as _free_port

INSTALL_HINT = (
    "install the emulator and Java 17: `apt-get install google-cloud-cli-pubsub-emulator "
    "openjdk-17-jre-headless` (Debian/Ubuntu, from Google's Cloud SDK apt repository; or run "
    "tests/support/install_servers.sh)"
)
BINARY = "cloud-pubsub-emulator"
FALLBACK_PATHS = (
    Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
)


def find_binary() -> Path:
    """The emulator's start script (PATH, then the Debian location); fails the test if missing."""
    if shutil.which("java") is None:
        pytest.fail(
            f"`java` not found on PATH; the Pub/Sub emulator runs on Java 17. {INSTALL_HINT}",
            pytrace=False,
        )
    return base.require_binary(
        BINARY, bus="pubsub", hint=INSTALL_HINT, fallbacks=FALLBACK_PATHS, need="the real emulator"
    )


def _group_members(group: int) -> list[int]:
    """PIDs of the live processes of process group ``group`` (Linux ``/proc``)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class PubSubEmulator(base.ServerProcess):
    """One Pub/Sub emulator; ``start``/``stop`` keep its port."""

    name = "emulator"
    log_name = "pubsub-emulator.log"

    port: int = field(default_factory=_free_port)

    @property
    def host(self) -> str:
        """``host:port``, what the adapter's ``emulator_host`` option takes."""
        return f"127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Nothing: the emulator keeps no data, and ``base_dir`` exists already."""

    def command(self) -> list[str]:
        return [str(self.binary), "--host=127.0.0.1", f"--port={self.port}"]

    def popen_options(self) -> dict[str, Any]:
        # Its own process group: the JVM is signalled with it.
        return {"stdin": subprocess.DEVNULL, "start_new_session": True}

    @property
    def probe_target(self) -> str:
        return f"http://{self.host}/"

    def probe(self) -> str | None:
        with urllib.request.urlopen(self.probe_target, timeout=1) as response:
            body = response.read().decode(errors="replace").strip()
            if response.status == 200 and body == "Ok":
                return None
            return f"HTTP {response.status} {body[:80]!r}"

    def _signal(self, sig: int) -> None:
        """``sig`` to the emulator's process group (``stop``: SIGTERM, then SIGKILL if it does
        not exit; ``kill``: SIGKILL, a crash)."""
        process = self.process
        if process is None:
            return
        # The group was made by start_new_session for this process: its id is our child's PID.
        # Signalled even if the child itself already exited, in case it left a JVM behind.
        group = process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            process.wait(timeout=self.stop_timeout)
        # A child of the script that outlived it (not the case when the script execs java):
        # the group's id stays reserved while it has a member, so this reaches only ours.
        if _group_members(group):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


def launch(base_dir: Path) -> PubSubEmulator:
    """A started emulator in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    emulator = PubSubEmulator(find_binary(), base_dir)
    return base.start_or_fail(emulator, title="Pub/Sub emulator", hint=INSTALL_HINT)


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """One Pub/Sub emulator for the whole session."""
    yield from base.in_temp_dir("cemesh-pubsub-", launch)


@pytest.fixture
def restartable_pubsub_emulator(tmp_path: Path) -> Iterator[PubSubEmulator]:
    """An emulator of this test alone, to stop, crash and restart on the same port."""
    yield from base.stopped_after(launch(tmp_path))
