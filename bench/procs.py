"""Child processes of a benchmark: start, wait until they serve, measure their CPU, stop by PID.

Every child is started by the bench itself, and only its own PID is ever signalled (SIGTERM,
then SIGKILL after a grace period). Output goes to a log file in the bench's temp dir, so a
failure can show it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """One child process with its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
            )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU used so far by the process (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            # Fields after the command name, which is in parentheses and may contain spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def cpu_by_thread(self) -> dict[str, float]:
        """CPU seconds used so far per thread name (``comm``), threads of one name summed.

        Shows where a process's CPU goes when Python profilers cannot see it, e.g. the native
        (tokio) threads of an HTTP client next to the thread running the event loop.
        """
        totals: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                raw = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
        return totals

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM this PID, SIGKILL it after ``grace`` seconds; its exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> bytes:
    """One plain HTTP request; the response body (raises on a non-2xx status)."""
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data


def get_json(url: str, timeout: float = 30.0) -> Any:
    return json.loads(http("GET", url, timeout=timeout))


def wait_until_serving(child: Child, url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 2xx; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited at startup:\n{child.log_tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            http("GET", url, timeout=1.0)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{child.name} not serving {url} after {timeout}s:\n{child.log_tail()}"
            )
        time.sleep(0.05)


def wait_until_listening(child: Child, port: int, timeout: float = 30.0) -> None:
    """Poll until ``127.0.0.1:port`` accepts TCP connections; fail early if the child exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited at startup:\n{child.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not listening on {port} after {timeout}s")
        time.sleep(0.05)
