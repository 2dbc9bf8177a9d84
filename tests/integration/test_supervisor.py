"""broker.features.supervisor with real child processes (``sys.executable -c ...``).

The supervisor runs ContainerSource commands (K185's K_SINK/K_CE_OVERRIDES consumers) and, later,
the invoker's process replicas: it logs their output, restarts them with exponential backoff,
and stops them (and what they started) with SIGTERM then SIGKILL, signalling only their own
process group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.features.supervisor import (
    EXIT_NOT_FOUND,
    INHERITED_ENV,
    ProcessSpec,
    SupervisedProcess,
    child_env,
    restart_delay,
)

pytestmark = pytest.mark.timeout(30)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


class Recorder(logging.Handler):
    """Collects log records and callback calls; tests wait on it instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.starts: list[tuple[float, int]] = []  # (monotonic time, pid)
        self.exits: list[tuple[float, int]] = []  # (monotonic time, returncode)
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    def on_start(self, pid: int) -> None:
        self.starts.append((time.monotonic(), pid))
        self._changed.set()

    def on_exit(self, code: int) -> None:
        self.exits.append((time.monotonic(), code))
        self._changed.set()

    def lines(self, stream: str) -> list[str]:
        return [
            r.getMessage().split(": ", 1)[1]
            for r in self.records
            if getattr(r, "stream", None) == stream
        ]

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    handler = Recorder()
    logger = logging.getLogger("tests.supervisor")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)


def supervised(recorder: Recorder, command: list[str], **options: object) -> SupervisedProcess:
    return SupervisedProcess(
        ProcessSpec(name="test/child", command=command, env={"GREETING": "hello"}),
        logger=logging.getLogger("tests.supervisor"),
        on_exit=recorder.on_exit,
        on_start=recorder.on_start,
        **options,  # type: ignore[arg-type]
    )


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def wait_gone(pid: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    # The kernel signals no event when an unrelated process dies: look every 20 ms.
    async with asyncio.timeout(timeout):
        while not gone(pid):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def test_restart_delay_doubles_from_initial_up_to_maximum() -> None:
    assert [restart_delay(n, 1.0, 30.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(10_000, 0.5, 7.0) == 7.0
    with pytest.raises(ValueError):
        restart_delay(-1, 1.0, 2.0)


def test_child_env_inherits_only_the_listed_variables_and_spec_env_wins() -> None:
    parent = {"PATH": "/bin", "HOME": "/root", "CEMESH_DATABASE_URL": "secret", "LANG": "C"}
    env = child_env({"LANG": "C.UTF-8", "K_SINK": "http://x"}, parent)
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "K_SINK": "http://x",
    }
    assert "PATH" in INHERITED_ENV and "VIRTUAL_ENV" in INHERITED_ENV


async def test_output_lines_are_logged_with_process_name_and_stream(recorder: Recorder) -> None:
    child = supervised(
        recorder,
        python("""
            import os, sys, time
            print(os.environ["GREETING"], "out")
            print("trouble", file=sys.stderr)
            print("leaked" if "CEMESH_SECRET" in os.environ else "clean", flush=True)
            time.sleep(60)
        """),
    )
    os.environ["CEMESH_SECRET"] = "x"
    try:
        await child.start()
    finally:
        del os.environ["CEMESH_SECRET"]
    try:
        await recorder.until(
            lambda: len(recorder.lines("stdout")) >= 2 and recorder.lines("stderr") != []
        )
        assert recorder.lines("stdout") == ["hello out", "clean"]
        assert recorder.lines("stderr") == ["trouble"]
        out = next(r for r in recorder.records if getattr(r, "stream", None) == "stdout")
        err = next(r for r in recorder.records if getattr(r, "stream", None) == "stderr")
        assert (out.levelno, out.child) == (logging.INFO, "test/child")  # type: ignore[attr-defined]
        assert err.levelno == logging.WARNING
        assert child.running and child.pid is not None
    finally:
        await child.stop()
    assert not child.running
    assert recorder.exits == []  # a stop is not an exit to report


async def test_exited_child_is_restarted_with_growing_delay(recorder: Recorder) -> None:
    child = supervised(
        recorder,
        python("import sys; print('up', flush=True); sys.exit(3)"),
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    await child.start()
    try:
        await recorder.until(lambda: len(recorder.starts) >= 5)
    finally:
        await child.stop()
    assert [code for _, code in recorder.exits[:4]] == [3, 3, 3, 3]
    assert child.restarts >= 4
    expected = [0.05, 0.1, 0.2, 0.2]
    for attempt, delay in enumerate(expected):
        exited_at = recorder.exits[attempt][0]
        restarted_at = recorder.starts[attempt + 1][0]
        assert restarted_at - exited_at >= delay * 0.9, (attempt, restarted_at - exited_at)
    announced = [
        r.args[2]  # type: ignore[index]
        for r in recorder.records
        if r.getMessage().startswith("test/child: exited")
    ]
    assert announced[:4] == expected


async def test_backoff_starts_over_after_a_long_enough_run(recorder: Recorder) -> None:
    child = supervised(
        recorder,
        python("import sys; sys.exit(1)"),
        backoff_initial=0.05,
        backoff_max=5.0,
        reset_after=0.0,  # every run counts as healthy
    )
    await child.start()
    try:
        await recorder.until(lambda: len(recorder.starts) >= 4)
    finally:
        await child.stop()
    announced = [
        r.args[2]  # type: ignore[index]
        for r in recorder.records
        if r.getMessage().startswith("test/child: exited")
    ]
    assert announced[:3] == [0.05, 0.05, 0.05]


async def test_stop_ends_the_child_and_what_it_started(recorder: Recorder) -> None:
    child = supervised(
        recorder,
        python("""
            import subprocess, sys, time
            grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print("grandchild", grandchild.pid, flush=True)
            time.sleep(60)
        """),
        stop_grace=2.0,
    )
    await child.start()
    await recorder.until(lambda: recorder.lines("stdout") != [])
    grandchild = int(recorder.lines("stdout")[0].split()[1])
    pid = child.pid
    assert pid is not None and not gone(grandchild)
    async with asyncio.timeout(5):
        await child.stop()
    assert not child.running and child.returncode == -15
    await wait_gone(pid)
    await wait_gone(grandchild)
    await child.stop()  # idempotent


async def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace(
    recorder: Recorder,
) -> None:
    child = supervised(
        recorder,
        python("""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ready", flush=True)
            time.sleep(60)
        """),
        stop_grace=0.3,
    )
    await child.start()
    await recorder.until(lambda: recorder.lines("stdout") == ["ready"])
    started = time.monotonic()
    await child.stop()
    assert time.monotonic() - started >= 0.3
    assert child.returncode == -9
    assert any("sending SIGKILL" in r.getMessage() for r in recorder.records)


async def test_grandchild_holding_the_output_pipe_does_not_hide_the_exit(
    recorder: Recorder,
) -> None:
    child = supervised(
        recorder,
        python("""
            import subprocess, sys
            grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print("grandchild", grandchild.pid, flush=True)
            sys.exit(5)
        """),
        backoff_initial=30.0,
        stop_grace=1.0,
    )
    await child.start()
    try:
        await recorder.until(lambda: recorder.exits != [], timeout=5)
        assert recorder.exits[0][1] == 5
        grandchild = int(recorder.lines("stdout")[0].split()[1])
        await wait_gone(grandchild)  # the rest of its group ended with it, as in a container
    finally:
        await child.stop()


async def test_command_not_found_is_logged_and_retried_without_raising(
    recorder: Recorder,
) -> None:
    child = supervised(
        recorder, ["/nonexistent/cemesh-no-such-command"], backoff_initial=0.02, backoff_max=0.05
    )
    await child.start()  # does not raise
    try:
        await recorder.until(lambda: len(recorder.exits) >= 3)
    finally:
        await child.stop()
    assert {code for _, code in recorder.exits} == {EXIT_NOT_FOUND}
    assert not child.running and child.pid is None
    errors = [r for r in recorder.records if r.levelno == logging.ERROR]
    assert "cannot start" in errors[0].getMessage()
    assert "cemesh-no-such-command" in errors[0].getMessage()


async def test_stop_during_backoff_returns_at_once_and_never_restarts(
    recorder: Recorder,
) -> None:
    child = supervised(recorder, python("import sys; sys.exit(2)"), backoff_initial=30.0)
    await child.start()
    await recorder.until(lambda: recorder.exits != [])
    async with asyncio.timeout(2):
        await child.stop()
    assert child.restarts == 0 and len(recorder.starts) == 1
    assert child.returncode == 2


async def test_no_restart_when_restart_is_off(recorder: Recorder) -> None:
    child = supervised(recorder, python("import sys; sys.exit(4)"), restart=False)
    await child.start()
    await recorder.until(lambda: recorder.exits != [])
    await child.stop()
    assert [code for _, code in recorder.exits] == [4] and child.restarts == 0


async def test_stop_before_start_is_safe_and_runs_nothing(recorder: Recorder) -> None:
    child = supervised(recorder, python("print('should not run')"))
    await child.stop()
    await child.start()
    await child.stop()
    assert recorder.starts == [] and child.pid is None


def test_a_runnable_command_starts_through_setpriv_without_a_preexec_fn(tmp_path: Path) -> None:
    """The parent-death signal is set by setpriv, so Python vforks instead of copying cemesh
    (a preexec_fn forces a full fork); a command that cannot run keeps the old path, so its
    error is the one the exec itself gives."""
    from broker.features.supervisor import _SETPRIV, _launch

    assert _SETPRIV is not None, "setpriv (util-linux) is part of every Debian-like system"
    env = {"PATH": os.environ["PATH"]}
    argv, preexec = _launch([sys.executable, "-c", "pass"], env, None)
    assert argv == [_SETPRIV, "--pdeathsig", "KILL", "--", sys.executable, "-c", "pass"]
    assert preexec is None
    argv, preexec = _launch(["no-such-command-anywhere"], env, None)
    assert argv == ["no-such-command-anywhere"] and preexec is not None
    script = tmp_path / "not-executable.sh"
    script.write_text("exit 0\n")
    argv, preexec = _launch(["./not-executable.sh"], env, str(tmp_path))
    assert argv == ["./not-executable.sh"] and preexec is not None
