"""The function invoker: the component that runs Services' Revisions and routes requests to them.

Fed ``snapshot.components["invoker"]`` (:mod:`broker.features.serving.specs`), it keeps one
:class:`~broker.features.serving.activator.Activator` and one autoscaler per Revision, and a
:class:`~broker.features.serving.traffic.TrafficSplit` per Service:

- **Requests** reach a Service at ``/services/{namespace}/{name}[/tags/{tag}][/path]`` over HTTP
  (raw ASGI, every method), or in-process when the dispatcher delivers to such a URL
  (``DeliveryClient.add_local_route``: no HTTP hop through cemesh itself). The split picks the
  Revision, the activator a replica (holding the request while none is free), and the request
  goes on to it with its method, path suffix, query, headers and body (POSTs through the
  dispatcher's HTTP client, other methods through httpx). 404 only when no such Service exists;
  503 + ``Retry-After`` when it exists but its route serves nothing (the reason in the body),
  its Revision failed, or nothing answers in time; 504 when the replica did not answer within
  the Revision's ``timeoutSeconds``; 502 when a replica gave no response.
- **Autoscaling**: every :data:`SAMPLE_INTERVAL` the activators' concurrency and request counts
  go into each Revision's :class:`~broker.features.serving.metrics_window.MetricWindow`; every
  ``invoker_autoscaler_tick`` seconds (Knative: 2 s)
  :func:`~broker.features.serving.autoscaler.decide` gives the desired count and the backend is
  brought to it. A request waiting at zero scales the Revision up at once. New Revisions start at
  :func:`~broker.features.serving.autoscaler. initial_replicas`. The clock is injectable and
  :meth:`Invoker.tick` runs one round, so tests drive time themselves.
- **Status**: the replicas (ready and desired), the autoscaler's reason, whether a replica ever
  listened (``replicaReadyOnce``: reconcile makes the Revision Ready only then) and why the
  Revision cannot serve (``runtimeError``: an image-only container on the process backend; a
  replica that exited before any listened, ``ExitCode`` with the code and its last output
  lines; :data:`CRASH_LOOP_EXITS` exits in a row with none listening in between,
  ``CrashLoopBackOff``; no replica listening within the Revision's progress deadline,
  ``ProgressDeadlineExceeded``) are written into the Revision's status when they change (and
  re-checked every :data:`STATUS_RESYNC_ROUNDS` rounds, in case a controller write raced ours);
  reconcile keeps them and sums them up on the Service. A failed Revision keeps being retried
  with the backend's crash-loop backoff (it becomes Ready again as soon as a replica listens),
  its requests answered 503 meanwhile; once its progress deadline has passed and no route sends
  it traffic, it is scaled to zero (no endless crash loop).
- **Startup**: a Revision that listened before (``RevisionSpec.proven``, e.g. after cemesh
  restarted) starts replicas only when a route sends it traffic or it has a min-scale; others
  start at zero and wake on their first request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import httpx

from broker.core.asgi import HttpHandler, Receive, Scope, Send, read_body
from broker.core.config import Settings
from broker.core.errors import CemeshError, DeliveryError
from broker.core.tasks import cancel_and_wait
from broker.dataplane.dispatch.http import LocalRoutingClient, Response
from broker.features.components import RuntimeContext
from broker.features.serving.activator import Activator, HoldTimeout, Overloaded
from broker.features.serving.autoscaler import (
    Decision,
    ScalerState,
    activation_replicas,
    decide,
    initial_replicas,
)
from broker.features.serving.backend import Backend, RevisionRef
from broker.features.serving.invoker_metrics import InvokerMetrics
from broker.features.serving.process import NotRunnable, ProcessBackend
from broker.features.serving.revision_state import RevisionState, write_statuses
from broker.features.serving.service_http import (
    PREFIX,
    json_response,
    parse_service_path,
    request_headers,
    send_response,
)
from broker.features.serving.specs import (
    COMPONENT,
    CRASH_LOOP,
    EXIT_CODE,
    PROGRESS_DEADLINE,
    RevisionSpec,
    RouteSpec,
)
from broker.features.serving.traffic import TrafficSplit
from broker.features.supervisor import exit_summary

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.5  # seconds: at least one sample in every 1 s bucket of the metric window
STATUS_RESYNC_ROUNDS = 10  # decision rounds between re-checks of the written statuses
CRASH_LOOP_EXITS = 3  # exits in a row, none listening in between, that make a crash loop


def create_backend(settings: Settings) -> Backend:
    """The backend named by ``invoker_backend``."""
    if settings.invoker_backend == "kubernetes":
        from broker.features.serving.kubernetes import KubernetesBackend

        return KubernetesBackend(settings.kubeconfig, context=settings.kube_context)
    return ProcessBackend()


class Invoker:
    """The :class:`~broker.features.components.Component` that runs Services (module docstring)."""

    name = COMPONENT

    def __init__(
        self,
        context: RuntimeContext,
        *,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        autoscale: bool = True,
    ) -> None:
        self._context = context
        self._settings = context.settings
        self._client: LocalRoutingClient = context.client
        self.backend = backend or create_backend(context.settings)
        self.clock = clock
        self._rng = rng or random.Random()
        self._autoscale = autoscale
        self._revisions: dict[tuple[str, str], RevisionState] = {}  # (namespace, revision name)
        self._routes: dict[tuple[str, str], TrafficSplit] = {}  # (namespace, service name)
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._rounds = 0
        self._local_prefix = f"{context.settings.base_url}{PREFIX}"
        self._notifies = isinstance(self.backend, ProcessBackend)
        if isinstance(self.backend, ProcessBackend):
            self.backend.drain = self._drain
            self.backend.on_change = self._replicas_changed
            self.backend.on_exit = self._replica_exited
        self._hold = context.settings.invoker_hold_timeout
        self._http: httpx.AsyncClient | None = None  # methods other than POST (HTTP route)
        self._routes_why: dict[tuple[str, str], str] = {}
        self.metrics = InvokerMetrics(self._revisions.values, self.backend)
        context.metrics.add_source(self.metrics.families)

    # --- Component --------------------------------------------------------------------------

    @property
    def routes(self) -> Mapping[str, HttpHandler]:
        return {PREFIX: self._handle_http}

    async def apply(self, specs: Mapping[str, Any]) -> None:
        revisions = {
            (s.namespace, s.name): s for s in specs.values() if isinstance(s, RevisionSpec)
        }
        for key in [k for k in self._revisions if k not in revisions]:
            await self._forget(self._revisions.pop(key))
        for key, spec in revisions.items():
            state = self._revisions.get(key)
            if state is None:
                self._revisions[key] = await self._start(spec)
            elif state.spec.template != spec.template:
                # Only a SinkBinding (K_SINK) changes a Revision's template: its replicas are
                # started again with the new environment.
                await self._forget(state)
                self._revisions[key] = await self._start(spec)
            elif state.spec != spec:  # a new config-autoscaler changes the policy
                state.spec = spec
                state.activator.container_concurrency = spec.container_concurrency
        self._routes = {
            (r.namespace, r.name): TrafficSplit(r.targets, self._rng)
            for r in specs.values()
            if isinstance(r, RouteSpec)
        }
        self._routes_why = {
            (r.namespace, r.name): r.why for r in specs.values() if isinstance(r, RouteSpec)
        }
        if self._autoscale and self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="invoker-autoscaler"
            )
        self._client.add_local_route(self._local_prefix, self._local_post)
        # The controller writes statuses after this returns, possibly over ours: compare with
        # the store again at the next round.
        for state in self._revisions.values():
            state.written = None

    async def stop(self) -> None:
        self._client.remove_local_route(self._local_prefix)
        await cancel_and_wait(self._loop_task)
        self._loop_task = None
        for task in list(self._tasks):
            task.cancel()
        for state in self._revisions.values():
            state.activator.close()
        self._revisions.clear()
        self._routes = {}
        await self.backend.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- introspection (tests, bench) -------------------------------------------------------

    def revision(self, namespace: str, name: str) -> RevisionState | None:
        return self._revisions.get((namespace, name))

    # --- revisions ----------------------------------------------------------------------------

    async def _start(self, spec: RevisionSpec) -> RevisionState:
        ref = RevisionRef(spec.namespace, spec.service, spec.name)
        state: RevisionState
        activator = Activator(
            ref,
            self.backend,
            container_concurrency=spec.container_concurrency,
            queue_size=self._settings.invoker_queue_size,
            clock=lambda: self.clock(),  # late-bound: tests move the invoker's clock
            wake=lambda: self._wake(state),
        )
        state = RevisionState(spec, activator)
        initial = initial_replicas(spec.policy)
        reason = f"initial scale {initial}"
        if spec.proven and not spec.routed:
            # It served before (cemesh restarted): no traffic, no replicas, unless min-scale.
            initial = spec.policy.min_scale
            reason = f"restarted without traffic: min-scale {initial}"
            state.scaler = ScalerState(initialized=True)
        await self._scale(state, initial, reason)
        log.info(
            "revision started",
            extra={"revision": f"{spec.namespace}/{spec.name}", "replicas": initial},
        )
        return state

    async def _forget(self, state: RevisionState) -> None:
        state.activator.close()
        self.metrics.forget(state)
        try:
            await self.backend.forget(state.ref)
        except CemeshError as exc:
            log.warning("revision not stopped cleanly", extra={"why": exc.message})
        log.info("revision stopped", extra={"revision": f"{state.ref.namespace}/{state.spec.name}"})

    async def _scale(self, state: RevisionState, desired: int, reason: str) -> None:
        state.reason = reason
        if desired == state.desired and state.ensured:
            return
        if desired != state.desired:
            log.info(
                "scaling revision",
                extra={
                    "revision": f"{state.ref.namespace}/{state.spec.name}",
                    "from": state.desired,
                    "to": desired,
                    "reason": reason,
                },
            )
        state.desired = desired
        if desired > 0 and state.waiting_since is None and not self.backend.ready(state.ref):
            state.waiting_since = self.clock()  # the progress deadline runs from here
        try:
            await self.backend.ensure(state.ref, state.spec.template, desired)
        except NotRunnable as exc:
            state.error = ("ContainerMissingCommand", exc.message)
        except CemeshError as exc:
            state.error = ("BackendError", exc.message)
            log.warning(
                "backend could not scale revision",
                extra={"revision": f"{state.ref.namespace}/{state.spec.name}", "why": exc.message},
            )
        else:
            state.ensured = True
            state.error = None

    def _wake(self, state: RevisionState) -> None:
        """A request waits and no replica is ready: start the replicas the waiting ones need.

        The first request at zero activates the Revision; later ones arriving before a replica
        is ready add replicas when their number needs more (:func:`activation_replicas`).
        """
        if state.waking or state.activator.closed:
            return
        if state.desired > 0:
            more = activation_replicas(
                state.spec.policy, waiting=state.activator.waiting, decided=state.desired
            )
            if more > state.desired:
                self._spawn(self._scale(state, more, "activating: a burst is waiting"))
            return
        state.waking = True
        self.metrics.cold_start_began(state, self.clock())
        self._spawn(self._activate(state))

    async def _activate(self, state: RevisionState) -> None:
        try:
            now = self.clock()
            self._sample(state, now)
            decision = self._decide(state, now)
            desired = activation_replicas(
                state.spec.policy, waiting=state.activator.waiting, decided=decision.desired
            )
            await self._scale(state, desired, "activating: a request is waiting at zero replicas")
        finally:
            state.waking = False
        # The statuses are written once a replica listens (or the hold ran out), not while it
        # starts: the write and the reconcile it triggers would take CPU from the starting
        # replica, and the request waiting for it (a function's cold start).
        if await self.backend.wait_ready(state.ref, self._hold) and not self._notifies:
            self.metrics.replica_listening(state, self.clock())
            state.activator.replicas_changed()
        await self._write_statuses(resync=False)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _replicas_changed(self, ref: RevisionRef) -> None:
        state = self._revisions.get((ref.namespace, ref.revision))
        if state is not None:
            state.activator.replicas_changed()
            if self.backend.ready(ref):
                self._listening(state)

    def _listening(self, state: RevisionState) -> None:
        """A replica of ``state`` listens: the Revision can serve; say so without waiting."""
        self.metrics.replica_listening(state, self.clock())
        state.waiting_since = None
        state.exits = 0
        changed = not state.ready_once or state.failure is not None
        state.ready_once = True
        state.failure = None
        if changed:
            self._spawn(self._write_statuses(resync=False))

    def _replica_exited(self, ref: RevisionRef, code: int, tail: list[str]) -> None:
        """A replica of ``ref`` exited (process backend): a failure when none listens."""
        state = self._revisions.get((ref.namespace, ref.revision))
        if state is None or self.backend.ready(ref):
            return
        state.exits += 1
        if state.ready_once and state.exits < CRASH_LOOP_EXITS:
            return  # it served before: one exit is a restart, not yet a failure
        reason = CRASH_LOOP if state.ready_once else EXIT_CODE
        if reason == CRASH_LOOP:
            what = f"replicas exited {state.exits} times in a row without listening; last exit"
        else:
            what = "the replica exited before it listened on $PORT, with"
        message = f"{what} {exit_summary(code, tail)}"
        if state.failure != (reason, message):
            state.failure = (reason, message)
            log.warning(
                "revision cannot serve",
                extra={"revision": f"{ref.namespace}/{ref.revision}", "why": message},
            )
            self._spawn(self._write_statuses(resync=False))

    async def _drain(self, ref: RevisionRef, replica_id: str) -> None:
        state = self._revisions.get((ref.namespace, ref.revision))
        if state is not None:
            await state.activator.drained(replica_id, state.spec.timeout)

    # --- autoscaling ------------------------------------------------------------------------------

    def _sample(self, state: RevisionState, now: float) -> None:
        average, requests = state.activator.sample(now)
        state.window.record(now, average, requests)

    async def tick(self, now: float | None = None) -> None:
        """One round: sample every Revision, decide, scale, write changed statuses."""
        now = self.clock() if now is None else now
        for state in list(self._revisions.values()):
            self._sample(state, now)
        await self._decide_all(now)
        self._rounds += 1
        await self._write_statuses(resync=self._rounds % STATUS_RESYNC_ROUNDS == 0)

    def _decide(self, state: RevisionState, now: float) -> Decision:
        """The autoscaler's decision for ``state`` now; its memory moves on with it."""
        stable, panic = state.window.averages(now, state.spec.policy)
        decision = decide(
            state.spec.policy,
            state.scaler,
            ready_replicas=len(self.backend.ready(state.ref)),
            stable=stable,
            panic=panic,
            now=now,
        )
        state.scaler = decision.state
        return decision

    def _check_progress(self, state: RevisionState, now: float) -> None:
        """ProgressDeadlineExceeded when replicas were wanted and none listened in time."""
        if state.desired <= 0 or self.backend.ready(state.ref):
            state.waiting_since = None
            if self.backend.ready(state.ref):
                self._listening(state)
            return
        if state.waiting_since is None:
            state.waiting_since = now
            return
        deadline = state.spec.progress_deadline
        if now - state.waiting_since >= deadline and state.problem is None:
            state.failure = (
                PROGRESS_DEADLINE,
                f"no replica listened on $PORT within the progress deadline ({deadline:g}s)",
            )
            log.warning(
                "revision cannot serve",
                extra={
                    "revision": f"{state.ref.namespace}/{state.spec.name}",
                    "why": state.failure[1],
                },
            )

    def _gave_up(self, state: RevisionState, now: float) -> bool:
        """Replicas were wanted for a whole progress deadline and none listened."""
        since = state.waiting_since
        return since is None or now - since >= state.spec.progress_deadline

    async def _decide_all(self, now: float) -> None:
        for state in list(self._revisions.values()):
            if state.waking or state.activator.closed:
                continue
            self._check_progress(state, now)
            decision = self._decide(state, now)
            state.panic = decision.panic
            if state.failure is not None and not state.spec.routed and self._gave_up(state, now):
                # Failed for a whole progress deadline, and nothing routes to it: stop the crash
                # loop (Knative scales a failed Revision to zero too). Traffic moving to it
                # starts it again.
                await self._scale(state, 0, f"failed ({state.failure[0]}); no traffic")
                continue
            await self._scale(state, decision.desired, decision.reason)
            if not self._notifies:
                state.activator.replicas_changed()

    async def _run(self) -> None:
        tick = self._settings.invoker_autoscaler_tick
        interval = min(SAMPLE_INTERVAL, tick)
        next_decision = self.clock() + tick
        while True:
            await asyncio.sleep(interval)
            try:
                now = self.clock()
                if now >= next_decision:
                    next_decision = now + tick
                    await self.tick(now)
                else:
                    for state in list(self._revisions.values()):
                        self._sample(state, now)
                        if not self._notifies:
                            state.activator.replicas_changed()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive one bad round
                log.exception("autoscaler round failed")

    async def _write_statuses(self, *, resync: bool) -> None:
        states = list(self._revisions.values())
        await write_statuses(self._context.store, self.backend, states, resync=resync)

    # --- requests ---------------------------------------------------------------------------------

    async def invoke(
        self,
        namespace: str,
        name: str,
        tag: str | None,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float | None = None,  # noqa: ASYNC109
        method: str = "POST",
    ) -> Response:
        """Send one request to Service ``namespace/name`` (or its ``tag``) and return the answer.

        Raises DeliveryError when the chosen replica gave no response (at-least-once callers
        retry it).
        """
        split = self._routes.get((namespace, name))
        if split is None:
            return json_response(404, f"Service {namespace}/{name} does not exist")
        why = self._routes_why.get((namespace, name)) or "no Revision is Ready"
        revision = split.for_tag(tag) if tag is not None else split.choose()
        if revision is None:
            if tag is not None and split.targets:
                return json_response(404, f"Service {namespace}/{name} has no tag {tag!r}")
            return json_response(503, f"Service {namespace}/{name} has no Ready route: {why}", True)
        state = self._revisions.get((namespace, revision))
        if state is None:
            return json_response(503, f"Revision {namespace}/{revision} is not running", True)
        activator = state.activator
        problem = state.problem
        if problem is not None and not self.backend.ready(state.ref):
            return json_response(503, f"Revision {revision}: {problem[1]}", True)
        limit = state.spec.timeout if timeout is None else min(timeout, state.spec.timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            replica = await activator.acquire(min(self._hold, limit))
        except Overloaded:
            return json_response(503, f"Revision {revision}: too many requests waiting", True)
        except HoldTimeout:
            return json_response(
                503, f"Revision {revision}: no replica became available in time", True
            )
        try:
            remaining = max(limit - (loop.time() - started), 0.001)
            try:
                # The invoker owns the deadline; the client's own is a backstop past it.
                async with asyncio.timeout(remaining):
                    return await self._forward(
                        method, replica.url + path, headers, body, remaining + 1.0
                    )
            except TimeoutError:
                return json_response(
                    504,
                    f"Revision {revision}: no response within {remaining:g}s "
                    f"(timeoutSeconds {state.spec.timeout:g})",
                )
        finally:
            activator.release(replica.id)

    async def _forward(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109
    ) -> Response:
        if method == "POST":
            return await self._client.post(url, headers, body, timeout=timeout)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=None, follow_redirects=False)
        try:
            answer = await self._http.request(
                method, url, headers=headers, content=body or None, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{method} {url}: {exc}", retryable=True) from exc
        return Response(
            answer.status_code,
            [
                (key.lower(), value)
                for key, value in answer.headers.raw
                if key.lower() not in (b"content-encoding",)
            ],
            answer.content,
        )

    def _local_post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
    ) -> Coroutine[Any, Any, Response]:
        return self._invoke_url(url, headers, body, timeout)

    async def _invoke_url(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109
    ) -> Response:
        parsed = parse_service_path(url[len(self._local_prefix) :])
        if parsed is None:
            return json_response(404, f"{url} names no Service")
        namespace, name, tag, path = parsed
        return await self.invoke(namespace, name, tag, path, headers, body, timeout)

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        parsed = parse_service_path(scope["path"][len(PREFIX) :])
        response: Response
        if parsed is None:
            response = json_response(404, "use /services/{namespace}/{name}[/tags/{tag}]")
        else:
            body = await read_body(receive, self._settings.max_request_bytes)
            if body is None:
                response = json_response(413, "request body too large")
            else:
                namespace, name, tag, path = parsed
                query = scope.get("query_string") or b""
                if query:
                    path = f"{path}?{query.decode('latin-1')}"
                headers = request_headers(scope)
                try:
                    response = await self.invoke(
                        namespace, name, tag, path, headers, body, method=scope["method"]
                    )
                except DeliveryError as exc:
                    response = json_response(502, exc.message)
        await send_response(send, response, head=scope["method"] == "HEAD")
