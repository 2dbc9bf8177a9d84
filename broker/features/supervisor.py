"""Child-process supervision: run a command, log its output, restart it with backoff, stop it.

This module owns the life of the local processes cemesh runs for users: a ContainerSource's
command (``broker.features.sources.container``) and, later, the function invoker's process replicas.
One :class:`SupervisedProcess` runs one :class:`ProcessSpec`:

- the child starts in its own session (``setsid``), so its process group id is its pid, and
  every signal cemesh sends goes to that group only (``killpg(child_pid)``): the child and
  whatever it started, never anything else;
- its stdout lines are logged at INFO and stderr lines at WARNING on the given logger, with
  ``extra={"child": spec.name, "stream": "stdout" | "stderr"}`` (``process`` is a
  reserved LogRecord attribute, the pid);
- when it exits (or cannot start at all: command not found, not executable) it is started again
  after :func:`restart_delay`, an exponential backoff that starts over once a run lasted
  ``reset_after`` seconds. A command that cannot start is an exit code like a shell's (127 not
  found, 126 cannot execute): logged and retried, never raised into cemesh;
- when it exits, what is left of its process group is ended too (as a container's processes end
  with it), so restarts never pile up orphans;
- :meth:`SupervisedProcess.stop` sends SIGTERM to the group, waits ``stop_grace`` seconds, then
  sends SIGKILL; it is idempotent and ends a pending restart as well;
- the last :data:`TAIL_LINES` output lines of the current run are kept (:attr:`SupervisedProcess.
  tail`), so whoever reports an exit can say what the child printed before it died.

No child outlives cemesh, even when cemesh is killed with SIGKILL (nothing of cemesh runs then):

- on Linux the child asks the kernel for SIGKILL when cemesh dies (``prctl(PR_SET_PDEATHSIG)``;
  the kernel keeps it across exec), which ends the process cemesh spawned at once. The request
  is made by util-linux's ``setpriv --pdeathsig KILL`` exec'ed in front of the command when it
  is installed (it is on every Debian-like system), because the other way, a ``preexec_fn``
  between fork and exec, makes Python fork the whole cemesh process instead of vfork-ing it:
  tens of milliseconds per spawn for a cemesh of a few hundred MB (a function's cold start).
  Without setpriv, or for a command that is not found or not executable (so that its error is
  reported as before), the ``preexec_fn`` does it and also checks that cemesh is still its
  parent; with setpriv, a SIGKILL of cemesh in the few hundred microseconds between the spawn
  and the guard's learning of the new group (below) could leave that one child running;
- the death signal is not inherited by the child's own children (a shell's commands), so one
  small guard process per cemesh (:class:`_GroupGuard`, ``python -c``, started with the first
  child) holds a pipe from cemesh and knows every process group cemesh runs. When the pipe
  closes (cemesh exited in any way, SIGKILL included) it SIGKILLs those groups: the child and
  everything it started that stayed in its group. A group is taken off the guard's list as
  soon as cemesh has ended it, so a reused process group id is never hit.

A grandchild that leaves the group on purpose (``setsid``, a daemonising server) escapes both,
as it would escape a container runtime that kills by process group. The kernel sends the death
signal when the *thread* that spawned the child ends: cemesh spawns from its event loop's thread,
which lives as long as cemesh.

The child's environment is not cemesh's: it gets only :data:`INHERITED_ENV` from cemesh (so the
database URL and other settings of cemesh do not leak into user code), then
``PYTHONUNBUFFERED=1`` (so a Python child's prints reach the log as they happen), then
``spec.env``, which wins over both.

Orphans left by a child are reparented to PID 1; run cemesh under an init that reaps them
(``docker run --init``, tini) when cemesh itself is PID 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# What a child inherits from cemesh's own environment (when set there); nothing else leaks.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
DEFAULT_ENV = {"PYTHONUNBUFFERED": "1"}

EXIT_NOT_FOUND = 127  # as a shell reports a command it cannot find
EXIT_CANNOT_EXECUTE = 126  # found but not executable (permissions, bad cwd, bad argv)

LINE_LIMIT = 64 * 1024  # longer output lines are dropped (with a warning), not buffered forever
_DRAIN_TIMEOUT = 1.0  # after an exit, how long to wait for the last output lines
_GROUP_POLL = 0.05  # how often to look whether a group's leftover processes are gone
TAIL_LINES = 20  # output lines of the current run kept for exit reports

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when ``parent_pid`` dies (Linux).

    Runs in the child between fork and exec: no allocation-heavy work, no locks. If the parent
    died before the request was made, the child is already an orphan and exits at once.
    """
    libc = _LIBC
    if libc is None:
        return None
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(EXIT_CANNOT_EXECUTE)

    return preexec


_SETPRIV = shutil.which("setpriv") if _LIBC is not None else None


def _launch(
    command: Sequence[str], env: Mapping[str, str], cwd: str | None
) -> tuple[list[str], Callable[[], None] | None]:
    """(argv, preexec_fn) that run ``command`` with the parent-death signal set (docstring)."""
    program = command[0] if command else ""
    if _SETPRIV is not None and program:
        if os.sep in program:
            found = os.path.join(cwd or "", program)
            runnable = os.path.isfile(found) and os.access(found, os.X_OK)
        else:
            runnable = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
        if runnable:
            return [_SETPRIV, "--pdeathsig", "KILL", "--", *command], None
    return list(command), _die_with_parent(os.getpid())


# The guard: reads "+pgid" / "-pgid" lines; when its stdin closes (cemesh is gone, however it
# ended) it SIGKILLs every group still listed. It ignores SIGINT (a terminal's Ctrl-C reaches
# cemesh, which stops its children itself) and runs in its own session.
_GUARD_SCRIPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[1:].isdigit():
        (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _GroupGuard:
    """The one guard process of this cemesh (module docstring); started with the first child."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._failed = False

    def _send(self, line: str) -> None:
        with self._lock:
            if self._failed:
                return
            try:
                if self._process is None or self._process.poll() is not None:
                    self._process = subprocess.Popen(
                        [sys.executable, "-I", "-c", _GUARD_SCRIPT],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                        close_fds=True,
                    )
                assert self._process.stdin is not None
                self._process.stdin.write(line.encode() + b"\n")
                self._process.stdin.flush()
            except OSError as exc:  # cannot run the guard: children still die via PDEATHSIG
                self._failed = True
                log.warning("process guard unavailable: %s", exc)

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")


GUARD = _GroupGuard()


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run: ``command`` is the argv (program + arguments), looked up on the PATH."""

    name: str  # for logs, e.g. "containersource/default/heartbeats"
    command: Sequence[str]
    env: Mapping[str, str]  # added to INHERITED_ENV and DEFAULT_ENV (module docstring)
    cwd: str | None = None
    applied_by: str = ""  # who applied the object this runs for (logged at every start)


def restart_delay(attempt: int, initial: float, maximum: float) -> float:
    """Seconds to wait before restart number ``attempt`` (0-based) of a quickly failing child.

    Doubles from ``initial`` and never exceeds ``maximum``: initial, 2*initial, 4*initial, ...
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if attempt >= 64:  # 2**64 * initial is past any sensible maximum; skip the float overflow
        return maximum
    return min(maximum, initial * (2.0**attempt))


def exit_summary(code: int, tail: Sequence[str], lines: int = 10) -> str:
    """``code 3; last output: a | b`` (or ``signal SIGKILL``): an exit, for a status message."""
    if code < 0:
        try:
            what = f"signal {signal.Signals(-code).name}"
        except ValueError:
            what = f"signal {-code}"
    else:
        what = f"code {code}"
    shown = [line for line in tail if line.strip()][-lines:]
    return what + ("; last output: " + " | ".join(shown) if shown else "")


def child_env(spec_env: Mapping[str, str], parent: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: INHERITED_ENV from ``parent``, DEFAULT_ENV, then ``spec_env``."""
    env = {key: parent[key] for key in INHERITED_ENV if key in parent}
    env.update(DEFAULT_ENV)
    env.update(spec_env)
    return env


def _signal_group(pgid: int, sig: int) -> None:
    # pgid is always the pid of a child started with start_new_session; 0 or 1 would mean our
    # own group or every process, so refuse them outright.
    if pgid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg also counts zombies: orphans that exited but that PID 1 has not reaped yet. Where
    # /proc exists, look closer so a stop does not wait out its grace for the dead.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


class SupervisedProcess:
    """One supervised child process (module docstring). Use from one event loop.

    ``on_exit(returncode)`` is called after every exit that :meth:`stop` did not cause, before
    any restart (a negative code is the signal that ended it; 127/126: it could not start).
    ``on_start(pid)`` is called after every successful spawn.
    """

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        restart: bool = True,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stop_grace: float = 5.0,
        reset_after: float = 10.0,
        logger: logging.Logger | None = None,
        on_exit: Callable[[int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self.spec = spec
        self.restart = restart
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stop_grace = stop_grace
        self.reset_after = reset_after
        self.log = logger or log
        self.on_exit = on_exit
        self.on_start = on_start
        self.pid: int | None = None  # of the current (or last) child
        self.returncode: int | None = None  # of the last exit (127/126: it could not start)
        self.restarts = 0  # restarts done so far (not counting the first start)
        self._process: asyncio.subprocess.Process | None = None
        self._spawned_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._first_spawn = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._transports: list[asyncio.BaseTransport] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)  # output of the current (or last) run

    @property
    def running(self) -> bool:
        """True while a child is alive."""
        return self._process is not None and self._process.returncode is None

    def _extra(self, stream: str = "supervisor") -> dict[str, str]:
        return {"child": self.spec.name, "stream": stream}

    async def start(self) -> None:
        """Spawn the child and supervise it from a background task. Never raises for a child
        that cannot start: that is logged and retried (module docstring)."""
        if self._task is not None:
            raise RuntimeError(f"{self.spec.name}: start() was called already")
        # The task owns the child from the first spawn on, so a stop() racing this start()
        # always has a task to wait for.
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"supervise {self.spec.name}"
        )
        first = asyncio.ensure_future(self._first_spawn.wait())
        try:
            await asyncio.wait({first, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()

    async def stop(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``stop_grace``; no more restarts.

        Idempotent, and safe before :meth:`start`. Returns once the child is gone.
        """
        self._stopping.set()
        if self._task is None:
            return
        # Shielded: if the caller is cancelled, the graceful stop still completes in the task.
        await asyncio.shield(self._task)

    # --- spawning and output --------------------------------------------------------------------

    async def _spawn(self) -> bool:
        """Start one child; on failure log it, set ``returncode`` (127/126) and return False."""
        self._process = None
        self._spawned_at = time.monotonic()
        self.tail.clear()
        command = list(self.spec.command)
        env = child_env(self.spec.env, os.environ)
        argv, preexec = _launch(command, env, self.spec.cwd)
        pipes = (os.pipe(), os.pipe())  # our own pipes: see _watch for why
        (out_read, out_write), (err_read, err_write) = pipes
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                env=env,
                cwd=self.spec.cwd,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            os.close(out_read)
            os.close(err_read)
            self.returncode = (
                EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
            )
            self.tail.append(f"cannot start {command!r}: {exc}")
            self.log.error(
                "%s: cannot start %r: %s", self.spec.name, command, exc, extra=self._extra()
            )
            return False
        finally:
            os.close(out_write)
            os.close(err_write)
        self._process = process
        self.pid = process.pid
        GUARD.watch(process.pid)  # its process group id: it leads a new session
        self.log.info(
            "%s: started %r (pid %d, applied by %s)",
            self.spec.name,
            command,
            process.pid,
            self.spec.applied_by or "cemesh",
            extra={**self._extra(), "applied_by": self.spec.applied_by, "command": command},
        )
        await self._read(out_read, "stdout", logging.INFO)
        await self._read(err_read, "stderr", logging.WARNING)
        if self.on_start is not None:
            try:
                self.on_start(process.pid)
            except Exception:
                self.log.exception("%s: on_start failed", self.spec.name, extra=self._extra())
        return True

    async def _read(self, fd: int, stream: str, level: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        pipe = os.fdopen(fd, "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except Exception:
            pipe.close()
            raise
        self._transports.append(transport)
        self._readers.append(
            loop.create_task(self._pump(reader, stream, level), name=f"{self.spec.name} {stream}")
        )

    async def _pump(self, reader: asyncio.StreamReader, stream: str, level: int) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # over LINE_LIMIT: asyncio dropped what it had buffered
                self.log.warning(
                    "%s: dropped an output line longer than %d bytes",
                    self.spec.name,
                    LINE_LIMIT,
                    extra=self._extra(stream),
                )
                continue
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(text)
            self.log.log(level, "%s: %s", self.spec.name, text, extra=self._extra(stream))

    async def _close_output(self, timeout: float) -> None:  # noqa: ASYNC109
        """Let the readers log the last lines (for up to ``timeout``), then close the pipes."""
        readers, self._readers = self._readers, []
        if readers and timeout > 0:
            await asyncio.wait(readers, timeout=timeout)
        for task in readers:
            task.cancel()
        for transport in self._transports:
            transport.close()
        self._transports = []

    # --- supervision ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        try:
            if self._stopping.is_set():  # stop() came before start(): run nothing
                return
            await self._spawn()
            self._first_spawn.set()
            while True:
                process = self._process
                if process is not None:
                    code = await self._watch(process)
                else:
                    code = self.returncode if self.returncode is not None else EXIT_NOT_FOUND
                if self._stopping.is_set():
                    return
                self._notify_exit(code)
                if not self.restart:
                    return
                if time.monotonic() - self._spawned_at >= self.reset_after:
                    attempt = 0  # it ran long enough to count as healthy: start the backoff over
                delay = restart_delay(attempt, self.backoff_initial, self.backoff_max)
                attempt += 1
                self.log.warning(
                    "%s: exited with code %d; restarting in %.2fs",
                    self.spec.name,
                    code,
                    delay,
                    extra=self._extra(),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                if self._stopping.is_set():
                    return
                self.restarts += 1
                await self._spawn()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take cemesh down; the child is ended below
            self.log.exception("%s: supervisor failed", self.spec.name, extra=self._extra())
        finally:
            # Cancelled (loop shutting down) or failed: never leave the child running.
            process = self._process
            if process is not None and process.returncode is None:
                _signal_group(process.pid, signal.SIGKILL)
                GUARD.forget(process.pid)
            await self._close_output(0)
            if self._stopping.is_set():
                self.log.info("%s: stopped", self.spec.name, extra=self._extra())

    async def _watch(self, process: asyncio.subprocess.Process) -> int:
        """Wait for the child to exit (or for stop()); end its group; return its exit code.

        The child writes to pipes we made ourselves rather than asyncio's: an asyncio-owned pipe
        makes ``Process.wait()`` wait until every holder of the pipe is gone, so a grandchild
        still running would hide the child's exit.
        """
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not exited.done():
                exited.cancel()
        deadline = time.monotonic() + self.stop_grace
        if not exited.done():  # stop() was called
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=self.stop_grace)
            except TimeoutError:
                self.log.warning(
                    "%s: still running %.1fs after SIGTERM; sending SIGKILL",
                    self.spec.name,
                    self.stop_grace,
                    extra=self._extra(),
                )
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        await self._end_group(process.pid, deadline)
        GUARD.forget(process.pid)
        await self._close_output(_DRAIN_TIMEOUT)
        code = process.returncode
        assert code is not None
        self.returncode = code
        return code

    async def _end_group(self, pgid: int, deadline: float) -> None:
        """The leader is gone: SIGTERM what is left of its group, SIGKILL it at ``deadline``."""
        if not _group_alive(pgid):
            return
        _signal_group(pgid, signal.SIGTERM)
        # No event tells when the last member of a process group is gone: look every 50 ms.
        while _group_alive(pgid) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_GROUP_POLL)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)

    def _notify_exit(self, code: int) -> None:
        if self.on_exit is None:
            return
        try:
            self.on_exit(code)
        except Exception:
            self.log.exception("%s: on_exit failed", self.spec.name, extra=self._extra())
