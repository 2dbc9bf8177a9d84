"""The lifecycle shared by the test bus servers: one child process on a free port of 127.0.0.1.

:class:`ServerProcess` owns what every server of ``tests/support/servers`` does the same way:
start the binary with its output in a log file, wait (bounded) until a readiness probe answers,
stop the PID it started (SIGTERM, then SIGKILL), crash it (SIGKILL), restart it on the same port
and dir, the ``*_async`` forms for async tests, and the log's tail in every failure message.
Each server module keeps its own specifics: the command line, the readiness probe, its dirs,
its binary's locations and install hint, and (Pub/Sub) signalling a process group.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

S = TypeVar("S", bound="ServerProcess")


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def locate(
    binary: str, *, first: Iterable[Path] = (), fallbacks: Iterable[Path] = ()
) -> Path | None:
    """The first executable of ``first``, then ``binary`` on PATH, then ``fallbacks``."""
    for path in first:
        if os.access(path, os.X_OK):
            return path
    on_path = shutil.which(binary)
    if on_path:
        return Path(on_path)
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    return None


def require_binary(
    binary: str,
    *,
    bus: str,
    hint: str,
    first: Iterable[Path] = (),
    fallbacks: Sequence[Path] = (),
    searched: str | None = None,
    need: str = "a real server",
) -> Path:
    """``binary`` as :func:`locate` finds it; fails the test (never skips) if it is missing,
    saying where it looked (``searched``, else PATH and ``fallbacks``) and how to install it."""
    found = locate(binary, first=first, fallbacks=fallbacks)
    if found is None:
        where = searched or f"on PATH nor in {', '.join(map(str, fallbacks))}"
        pytest.fail(
            f"{binary} not found {where}. The {bus} bus tests need {need}: {hint}", pytrace=False
        )
    return found


@dataclass
class ServerProcess:
    """One server child process; subclasses name it, say how to run it and when it is ready.

    ``start``/``stop`` keep the subclass's port(s) and dirs, so a restarted server is found
    again by clients at the same address.
    """

    binary: Path
    base_dir: Path
    # Keyword-only so that the subclasses' own fields (ports, options) follow ``base_dir``.
    process: subprocess.Popen[bytes] | None = field(default=None, kw_only=True)

    name: ClassVar[str]  # in messages: "tansu", "nats-server", ...
    log_name: ClassVar[str]  # the log file's name in ``base_dir``
    poll_interval: ClassVar[float] = 0.05
    stop_timeout: ClassVar[float] = STOP_TIMEOUT

    # -- what a subclass says ---------------------------------------------------------------

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def probe(self) -> str | None:
        """``None`` when the server is ready, else what it answered; OSError while not listening."""
        raise NotImplementedError

    @property
    def probe_target(self) -> str:
        """What the probe asks, for the "not ready" message (a URL, a port, a command)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Before each start: the dirs the server needs."""
        self.base_dir.mkdir(parents=True, exist_ok=True)

    def popen_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments (e.g. a session of its own)."""
        return {}

    # -- the lifecycle ----------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        return self.base_dir / self.log_name

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (same port and dirs as before) and wait until it is ready."""
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.process.pid})")  # type: ignore[union-attr]
        self.prepare()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                **self.popen_options(),
            )
        try:
            self._wait_until_ready(timeout)
        except ServerStartError:
            self.kill()
            raise

    def _wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last: str | None = "no answer yet"
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                last = self.probe()
                if last is None:
                    return
            except OSError as exc:  # not listening yet
                last = repr(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} not ready after {timeout}s ({self.probe_target}: {last}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(self.poll_interval)  # a readiness probe's interval, bounded by the deadline

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
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=self.stop_timeout)

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill, with ``crash``) and start again on the same port and dirs."""
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


def start_or_fail(server: S, *, title: str, hint: str) -> S:
    """``server`` started; fails the test (never skips) with ``title``, the log's tail and
    ``hint`` (how to install the server) if it cannot start."""
    try:
        server.start()
    except (ServerStartError, OSError) as exc:
        pytest.fail(f"{title} did not start: {exc}\n({hint})", pytrace=False)
    return server


def stopped_after(server: S) -> Iterator[S]:
    """A fixture's body (``yield from`` it): ``server``, stopped (its own PID only) after."""
    try:
        yield server
    finally:
        server.stop()


def in_temp_dir(prefix: str, launch: Callable[[Path], S]) -> Iterator[S]:
    """A fixture's body (``yield from`` it): a server ``launch``-ed in a new temp dir, stopped
    and its dir removed after."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield from stopped_after(launch(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
