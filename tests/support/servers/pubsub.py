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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "install the emulator and Java 17: `apt-get install google-cloud-cli-pubsub-emulator "
    "openjdk-17-jre-headless` (Debian/Ubuntu, from Google's Cloud SDK apt repository; or run "
    "tests/support/install_servers.sh)"
)
BINARY = "cloud-pubsub-emulator"
FALLBACK_PATHS = (
    Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"),
)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerStartError(RuntimeError):
    """The emulator exited or did not become ready; the message ends with its log's tail."""


def find_binary() -> Path:
    """The emulator's start script (PATH, then the Debian location); fails the test if missing."""
    if shutil.which("java") is None:
        pytest.fail(
            f"`java` not found on PATH; the Pub/Sub emulator runs on Java 17. {INSTALL_HINT}",
            pytrace=False,
        )
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    for path in FALLBACK_PATHS:
        if os.access(path, os.X_OK):
            return path
    pytest.fail(
        f"{BINARY} not found on PATH nor in {', '.join(map(str, FALLBACK_PATHS))}. "
        f"The pubsub bus tests need the real emulator: {INSTALL_HINT}",
        pytrace=False,
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PubSubEmulator:
    """One Pub/Sub emulator; ``start``/``stop`` keep its port."""

    binary: Path
    base_dir: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``host:port``, what the adapter's ``emulator_host`` option takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "pubsub-emulator.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the emulator (same port as before) and wait until it answers ``Ok``."""
        if self.running:
            raise RuntimeError(f"emulator already running (pid {self.process.pid})")  # type: ignore[union-attr]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base_dir,
                start_new_session=True,  # its own process group: the JVM is signalled with it
            )
        try:
            self._wait_until_ready(timeout)
        except ServerStartError:
            self.kill()
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        url = f"http://{self.host}/"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"emulator exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    body = response.read().decode(errors="replace").strip()
                    if response.status == 200 and body == "Ok":
                        return
                    last = f"HTTP {response.status} {body[:80]!r}"
            except OSError as exc:  # not listening yet (URLError is an OSError)
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"emulator not ready after {timeout}s ({url}: {last}):\n{self.log_tail()}"
                )
            time.sleep(0.05)  # polling interval of a readiness probe, bounded by the deadline

    def stop(self) -> None:
        """SIGTERM to the emulator's process group, then SIGKILL if it does not exit."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the emulator's process group: a crash."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        process = self.process
        if process is None:
            return
        # The group was made by start_new_session for this process: its id is our child's PID.
        # Signalled even if the child itself already exited, in case it left a JVM behind.
        group = process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        # A child of the script that outlived it (not the case when the script execs java):
        # the group's id stays reserved while it has a member, so this reaches only ours.
        if _group_members(group):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with ``crash``) and start again on the same port (state is lost)."""
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


def launch(base_dir: Path) -> PubSubEmulator:
    """A started emulator in ``base_dir``; fails the test (with the log's tail) if it cannot."""
    emulator = PubSubEmulator(find_binary(), base_dir)
    try:
        emulator.start()
    except (ServerStartError, OSError) as exc:
        pytest.fail(f"Pub/Sub emulator did not start: {exc}\n({INSTALL_HINT})", pytrace=False)
    return emulator


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    """One Pub/Sub emulator for the whole session."""
    base = Path(tempfile.mkdtemp(prefix="cemesh-pubsub-"))
    emulator = launch(base)
    try:
        yield emulator
    finally:
        emulator.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restartable_pubsub_emulator(tmp_path: Path) -> Iterator[PubSubEmulator]:
    """An emulator of this test alone, to stop, crash and restart on the same port."""
    emulator = launch(tmp_path)
    try:
        yield emulator
    finally:
        emulator.stop()
