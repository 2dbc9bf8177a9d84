"""The ``process`` backend: each replica of a Revision is a supervised local child process.

A replica runs the Revision's container ``command`` + ``args`` (Kubernetes semantics; ``image``
is not used) with the container's ``env``, then Knative's runtime contract on top (it wins, as
these names are reserved): ``PORT`` (a free loopback port), ``K_SERVICE``, ``K_CONFIGURATION``
and ``K_REVISION``; in ``workingDir`` when given, through
:class:`~broker.features.supervisor.SupervisedProcess` (so no replica outlives cemesh, even after a
SIGKILL): stdout and stderr go to cemesh's log, and a replica that exits is started again (on the
same port) after a crash-loop backoff that doubles from :data:`CRASH_BACKOFF_INITIAL` up to
:data:`CRASH_BACKOFF_MAX` and starts over once a run lasted :data:`CRASH_BACKOFF_RESET`. Every
exit is reported to ``on_exit(revision, code, tail)`` with the last output lines, so the invoker
can say why a Revision is not Ready. A replica is ready once its port accepts a TCP connection;
it leaves the ready list the moment its process exits, and comes back when the restarted process
listens again.

Scaling down takes replicas out of the ready list first and stops them only once the invoker
says they are idle (``drain``), so no request in flight is cut off.

A container without ``command`` cannot run here: :class:`NotRunnable` names the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from broker.core.errors import CemeshError
from broker.features.serving.backend import Replica, RevisionRef
from broker.features.serving.specs import APPLIED_BY, BINDING_ENV
from broker.features.supervisor import ProcessSpec, SupervisedProcess

log = logging.getLogger(__name__)

# Connection attempts while a replica starts: the first after PROBE_FIRST s, each wait then
# doubling up to PROBE_INTERVAL, so a replica that listens quickly is seen within a millisecond
# or two (a function's cold start) and a slow one costs a hundred attempts a second at most.
PROBE_FIRST = 0.001
PROBE_INTERVAL = 0.01
# Crash-loop backoff of a replica that keeps exiting (Kubernetes' CrashLoopBackOff doubles from
# 10 s to 5 min; local processes start in milliseconds, so cemesh starts lower and caps lower).
CRASH_BACKOFF_INITIAL = 0.2
CRASH_BACKOFF_MAX = 60.0
CRASH_BACKOFF_RESET = 30.0  # a run this long counts as healthy: the backoff starts over
Drain = Callable[[RevisionRef, str], Awaitable[None]]
ExitReport = Callable[[RevisionRef, int, list[str]], None]


class NotRunnable(CemeshError):
    """The Revision's container cannot run as a local process (``field`` names why)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def process_command(template: Mapping[str, Any]) -> tuple[list[str], dict[str, str], str | None]:
    """(argv, env, cwd) of a Revision's container; NotRunnable when it has no command."""
    containers = template.get("containers") or [{}]
    container = containers[0]
    command = list(container.get("command") or [])
    if not command:
        raise NotRunnable(
            "spec.template.spec.containers[0].command",
            "is required by the process backend (it runs command + args as a local process; "
            f"image {container.get('image')!r} alone runs only on the kubernetes backend)",
        )
    env = {
        str(item["name"]): str(item.get("value") or "")
        for item in container.get("env") or ()
        if isinstance(item, Mapping) and item.get("name")
    }
    env.update(template.get(BINDING_ENV) or {})  # a SinkBinding's K_SINK wins, as in Knative
    return command + list(container.get("args") or []), env, container.get("workingDir")


def runtime_env(revision: RevisionRef) -> dict[str, str]:
    """Knative's runtime contract: what every replica learns about the Revision it serves."""
    return {
        "K_SERVICE": revision.service,
        "K_CONFIGURATION": revision.service,  # a Service's Configuration has its name
        "K_REVISION": revision.revision,
    }


class _Replica:
    """One child process of a Revision and its readiness."""

    def __init__(self, owner: _Revision, replica_id: str, port: int, spec: ProcessSpec) -> None:
        self.owner = owner
        self.id = replica_id
        self.port = port
        self.replica = Replica(replica_id, f"http://127.0.0.1:{port}")
        self.ready = False
        self.process = SupervisedProcess(
            spec,
            backoff_initial=CRASH_BACKOFF_INITIAL,
            backoff_max=CRASH_BACKOFF_MAX,
            reset_after=CRASH_BACKOFF_RESET,
            stop_grace=5.0,
            logger=logging.getLogger("broker.features.serving.function"),
            on_start=self._started,
            on_exit=self._exited,
        )
        self._probe: asyncio.Task[None] | None = None

    def _started(self, pid: int) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self._probe = asyncio.get_running_loop().create_task(
            self._wait_listening(pid), name=f"probe {self.process.spec.name}"
        )

    def _exited(self, code: int) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self.ready:
            self.ready = False
            self.owner.changed()
        on_exit = self.owner.backend.on_exit
        if on_exit is not None:
            on_exit(self.owner.ref, code, list(self.process.tail))

    async def _wait_listening(self, pid: int) -> None:
        # Until the port accepts a connection; the supervisor cancels us if the process exits.
        pause = PROBE_FIRST
        while self.process.pid == pid and self.process.running:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(pause)
                pause = min(pause * 2, PROBE_INTERVAL)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.ready = True
            self.owner.changed()
            return

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self.ready = False
        await self.process.stop()


class _Revision:
    """The replicas of one Revision."""

    def __init__(self, backend: ProcessBackend, ref: RevisionRef) -> None:
        self.backend = backend
        self.ref = ref
        self.replicas: list[_Replica] = []
        self.ready_list: list[Replica] = []
        self.has_ready = asyncio.Event()
        self.stopping: set[asyncio.Task[None]] = set()

    def changed(self) -> None:
        self.ready_list = [r.replica for r in self.replicas if r.ready]
        if self.ready_list:
            self.has_ready.set()
        else:
            self.has_ready.clear()
        if self.backend.on_change is not None:
            self.backend.on_change(self.ref)


class ProcessBackend:
    """:class:`~broker.features.serving.backend.Backend` running replicas as local child processes.

    ``drain(revision, replica_id)``, when given, is awaited before a replica that is being
    scaled away is stopped (the invoker returns once no request is in flight on it).
    ``on_change(revision)`` is called whenever the ready replicas of a Revision change, and
    ``on_exit(revision, code, tail)`` whenever one of its replicas exits (module docstring).
    """

    def __init__(
        self,
        *,
        drain: Drain | None = None,
        on_change: Callable[[RevisionRef], None] | None = None,
        on_exit: ExitReport | None = None,
    ) -> None:
        self.drain = drain
        self.on_change = on_change
        self.on_exit = on_exit
        self._revisions: dict[RevisionRef, _Revision] = {}
        self._ids = itertools.count(1)
        self._ports: set[int] = set()

    def _free_port(self) -> int:
        # The kernel hands out a free port; keep our own set so two replicas never share one.
        for _ in range(100):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in self._ports:
                self._ports.add(port)
                return port
        raise CemeshError("no free loopback port for a replica", retryable=True)

    async def ensure(
        self, revision: RevisionRef, template: Mapping[str, Any], replicas: int
    ) -> None:
        state = self._revisions.get(revision)
        if state is None:
            state = self._revisions[revision] = _Revision(self, revision)
        if len(state.replicas) < replicas:
            argv, env, cwd = process_command(template)
            starts = []
            while len(state.replicas) < replicas:
                replica_id = f"r{next(self._ids)}"
                port = self._free_port()
                spec = ProcessSpec(
                    name=f"revision/{revision.namespace}/{revision.revision}/{replica_id}",
                    command=argv,
                    env={**env, **runtime_env(revision), "PORT": str(port)},
                    cwd=cwd,
                    applied_by=str(template.get(APPLIED_BY) or ""),
                )
                replica = _Replica(state, replica_id, port, spec)
                state.replicas.append(replica)
                starts.append(replica.process.start())
            await asyncio.gather(*starts)
        while len(state.replicas) > replicas:
            # Replicas not ready yet go first, then the newest.
            victim = next((r for r in reversed(state.replicas) if not r.ready), None)
            victim = victim or state.replicas[-1]
            state.replicas.remove(victim)
            state.changed()  # out of the ready list before anything else
            task = asyncio.get_running_loop().create_task(self._retire(state, victim))
            state.stopping.add(task)
            task.add_done_callback(state.stopping.discard)

    async def _retire(self, state: _Revision, replica: _Replica) -> None:
        try:
            if self.drain is not None and replica.ready:
                await self.drain(state.ref, replica.id)
        finally:
            await replica.stop()
            self._ports.discard(replica.port)

    def ready(self, revision: RevisionRef) -> list[Replica]:
        state = self._revisions.get(revision)
        return state.ready_list if state is not None else []

    async def wait_ready(self, revision: RevisionRef, timeout: float) -> bool:  # noqa: ASYNC109
        state = self._revisions.get(revision)
        if state is None:
            state = self._revisions[revision] = _Revision(self, revision)
        try:
            async with asyncio.timeout(timeout):
                await state.has_ready.wait()
        except TimeoutError:
            return False
        return True

    def replica_count(self, revision: RevisionRef) -> int:
        """Replicas that exist (starting, ready or restarting), not counting those stopping."""
        state = self._revisions.get(revision)
        return len(state.replicas) if state is not None else 0

    async def forget(self, revision: RevisionRef) -> None:
        state = self._revisions.pop(revision, None)
        if state is None:
            return
        replicas, state.replicas = state.replicas, []
        state.changed()
        for task in state.stopping:
            task.cancel()  # no more draining: stop them now (_retire still stops the process)
        await asyncio.gather(*(r.stop() for r in replicas), *state.stopping, return_exceptions=True)
        for replica in replicas:
            self._ports.discard(replica.port)

    async def stop(self) -> None:
        for revision in list(self._revisions):
            await self.forget(revision)
