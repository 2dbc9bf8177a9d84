"""The ``kubernetes`` serving backend: a Revision's replicas are the Pods of an existing Deployment.

cemesh does not create Pods. Each Revision names a Deployment that already exists (template
annotation ``cemesh.dev/deployment``, default the Service's name, in the Revision's namespace or
``cemesh.dev/deployment-namespace``); :meth:`KubernetesBackend.ensure` sets its ``scale``
subresource (``autoscaling/v1`` Scale) when the wanted replica count differs, and
:meth:`KubernetesBackend.ready` answers from a cache of the ready addresses of the matching
Endpoints object (annotation ``cemesh.dev/k8s-service``, default the Deployment's name).

The cache is kept by the one list + watch cemesh has,
:class:`~broker.controlplane.kube.watch.CollectionWatch`, one per Endpoints object
(``fieldSelector=metadata.name=...``): watched from the list's ``resourceVersion`` with
bookmarks, resumed after the server ends a watch (``timeoutSeconds``), relisted on ``410 Gone``
or when it makes no progress; any other failure is logged once per outage and retried with a
capped exponential backoff while the last known endpoints stay in the cache (the Pods usually
keep serving while the apiserver is away, as kube-proxy keeps routing). The watch never dies of
an error, so neither does the invoker.

Driver errors (``ApiException``, aiohttp / socket errors, kubeconfig errors) are translated here,
once, into :mod:`broker.core.errors`: 404 -> :class:`NotFound` naming the Deployment, 409 ->
:class:`Conflict` (retryable), 401/403 and other 4xx -> terminal :class:`CemeshError`, 429/5xx and
connection failures -> retryable :class:`CemeshError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from broker.controlplane.kube.client import KubeConnection
from broker.controlplane.kube.watch import DELETE, Backoff, CollectionWatch
from broker.core.errors import CemeshError, Conflict, NotFound
from broker.features.serving.backend import Replica, RevisionRef

__all__ = [
    "DEPLOYMENT_ANNOTATION",
    "DEPLOYMENT_NAMESPACE_ANNOTATION",
    "SERVICE_ANNOTATION",
    "KubernetesBackend",
    "Target",
    "ready_replicas",
    "target_for",
    "translate_error",
]

log = logging.getLogger(__name__)

DEPLOYMENT_ANNOTATION = "cemesh.dev/deployment"
DEPLOYMENT_NAMESPACE_ANNOTATION = "cemesh.dev/deployment-namespace"
SERVICE_ANNOTATION = "cemesh.dev/k8s-service"

# The scale subresource accepts JSON merge patch for every kind; say so instead of letting the
# client pick strategic-merge for a dict body (which only built-in kinds understand).
# (``_content_type`` is accepted at run time but missing from the library's stubs.)
_MERGE_PATCH_KWARGS: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
# Service-account files of a Pod (what load_incluster_config reads).
_SERVICE_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


# --- pure mapping -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """The Kubernetes objects behind one Revision."""

    namespace: str
    deployment: str
    endpoints: str  # the Service (and so the Endpoints object) in front of the Deployment's Pods

    def describe(self) -> str:
        return f"Deployment {self.namespace}/{self.deployment}"


def _annotations(template: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Revision template's annotations, whether given flat or under ``metadata``."""
    found = template.get("annotations")
    if not isinstance(found, Mapping):
        metadata = template.get("metadata")
        found = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return found if isinstance(found, Mapping) else {}


def target_for(revision: RevisionRef, template: Mapping[str, Any]) -> Target:
    """Which Deployment and Endpoints serve ``revision`` (defaults: the Service's name)."""
    annotations = _annotations(template)
    deployment = str(annotations.get(DEPLOYMENT_ANNOTATION) or revision.service)
    namespace = str(annotations.get(DEPLOYMENT_NAMESPACE_ANNOTATION) or revision.namespace)
    endpoints = str(annotations.get(SERVICE_ANNOTATION) or deployment)
    return Target(namespace, deployment, endpoints)


def _pick_port(ports: Any) -> int | None:
    """The port named ``http``, else the first one (the Service's only port, usually)."""
    if not isinstance(ports, list) or not ports:
        return None
    for port in ports:
        if isinstance(port, Mapping) and port.get("name") == "http":
            return int(port["port"])
    first = ports[0]
    return int(first["port"]) if isinstance(first, Mapping) and "port" in first else None


def ready_replicas(endpoints: Mapping[str, Any] | None) -> list[Replica]:
    """The ready replicas of a ``v1`` Endpoints object (as JSON), in the object's order.

    Only ``subsets[].addresses`` count (``notReadyAddresses`` are Pods failing readiness). The id
    is the Pod's name (``targetRef.name``) when known, else ``host:port``.
    """
    replicas: list[Replica] = []
    seen: set[str] = set()
    for subset in (endpoints or {}).get("subsets") or []:
        if not isinstance(subset, Mapping):
            continue
        port = _pick_port(subset.get("ports"))
        if port is None:
            continue
        for address in subset.get("addresses") or []:
            ip = address.get("ip") if isinstance(address, Mapping) else None
            if not ip:
                continue
            host = f"[{ip}]" if ":" in ip else ip  # IPv6 literals need brackets in a URL
            ref = address.get("targetRef") or {}
            replica_id = str(ref.get("name") or f"{host}:{port}")
            if replica_id in seen:
                continue
            seen.add(replica_id)
            replicas.append(Replica(replica_id, f"http://{host}:{port}"))
    return replicas


def _api_message(exc: ApiException) -> str:
    """The ``message`` of the Status object the apiserver answered with, else the reason."""
    body = exc.body
    if isinstance(body, bytes | str) and body:
        try:
            status = orjson.loads(body)
        except orjson.JSONDecodeError:
            status = None
        if isinstance(status, Mapping) and status.get("message"):
            return str(status["message"])
    return str(exc.reason or "no reason given")


def translate_error(exc: BaseException, doing: str) -> CemeshError:
    """Map a driver exception met while ``doing`` ("scaling Deployment ns/x") to cemesh's tree."""
    if isinstance(exc, CemeshError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = f"kube-apiserver answered {status} {doing}: {_api_message(exc)}"
        if status == 404:
            return NotFound(message)
        if status == 409:
            return Conflict(message, retryable=True)
        if status in (401, 403):
            return CemeshError(
                f"{message} (check the kubeconfig credentials and RBAC: get/patch on "
                "deployments/scale, get/list/watch on endpoints)",
                retryable=False,
            )
        retryable = status == 0 or status == 429 or status >= 500
        return CemeshError(message, retryable=retryable)
    if isinstance(exc, ConfigException):
        return CemeshError(f"no usable Kubernetes configuration {doing}: {exc}", retryable=False)
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return CemeshError(
            f"kube-apiserver unreachable {doing}: {type(exc).__name__}: {exc}", retryable=True
        )
    return CemeshError(f"unexpected error {doing}: {type(exc).__name__}: {exc}", retryable=True)


# Exceptions a call to the apiserver may raise; anything else is a bug and propagates.
_DRIVER_ERRORS = (ApiException, ConfigException, aiohttp.ClientError, OSError, TimeoutError)


# --- I/O ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Watcher:
    """The cached ready replicas of one Endpoints object, kept fresh by ``task``."""

    namespace: str
    name: str
    users: set[RevisionRef] = field(default_factory=set)
    replicas: list[Replica] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class KubernetesBackend:
    """Scales existing Deployments and routes to their ready endpoints (the Backend protocol).

    ``kubeconfig``: a kubeconfig file; None -> the in-cluster service account when running in a
    Pod, else ``~/.kube/config`` (``$KUBECONFIG`` is not consulted, as kubectl would; pass it).
    ``context``: a kubeconfig context (None: the current one). ``request_timeout``: seconds per
    apiserver call. ``resync_interval``: seconds a watch lasts before the endpoints are listed
    again (the server ends it). ``retry_backoff`` / ``max_backoff``: seconds between attempts
    after a failed list or watch, doubling up to the cap.
    """

    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        context: str | None = None,
        request_timeout: float = 10.0,
        resync_interval: float = 300.0,
        retry_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self._request_timeout = request_timeout
        self._resync_interval = max(1, int(resync_interval))
        self._retry_backoff = retry_backoff
        self._max_backoff = max_backoff
        self._connection: KubeConnection | None = None
        self._api_lock = asyncio.Lock()
        self._targets: dict[RevisionRef, Target] = {}
        self._watchers: dict[tuple[str, str], _Watcher] = {}
        self._scale_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Replaced on every change of any cache: waiters wake, re-check, wait on the new one.
        self._changed = asyncio.Event()
        self._stopped = False

    # -- Backend protocol --------------------------------------------------------------------

    async def ensure(
        self, revision: RevisionRef, template: Mapping[str, Any], replicas: int
    ) -> None:
        """Set the Deployment's scale to ``replicas`` unless it already is; start watching its
        endpoints. Raises :class:`CemeshError` (``NotFound`` for a missing Deployment)."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if self._stopped:
            raise CemeshError("the kubernetes backend is stopped", retryable=False)
        target = target_for(revision, template)
        self._track(revision, target)
        key = (target.namespace, target.deployment)
        lock = self._scale_locks.setdefault(key, asyncio.Lock())
        async with lock:  # one read-compare-patch at a time per Deployment
            doing = f"scaling {target.describe()} for {_describe(revision)}"
            try:
                apps = k8s.AppsV1Api(await self._client())
                scale = await apps.read_namespaced_deployment_scale(
                    target.deployment, target.namespace, _request_timeout=self._request_timeout
                )
                current = (scale.spec.replicas if scale.spec else None) or 0
                if current == replicas:
                    return
                await apps.patch_namespaced_deployment_scale(
                    target.deployment,
                    target.namespace,
                    {"spec": {"replicas": replicas}},
                    _request_timeout=self._request_timeout,
                    **_MERGE_PATCH_KWARGS,
                )
            except CemeshError as exc:  # the configuration could not be loaded
                log.warning("%s", exc.message)
                raise
            except _DRIVER_ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    error: CemeshError = NotFound(
                        f"{target.describe()} not found (it backs {_describe(revision)}; create "
                        f"it, or name another with the {DEPLOYMENT_ANNOTATION} annotation)"
                    )
                else:
                    error = translate_error(exc, doing)
                log.warning("%s", error.message)
                raise error from exc
        log.info("scaled %s from %d to %d replicas", target.describe(), current, replicas)

    def ready(self, revision: RevisionRef) -> list[Replica]:
        """The cached ready replicas (the same list until it changes; do not mutate it)."""
        target = self._targets.get(revision)
        if target is None:
            return []
        watcher = self._watchers.get((target.namespace, target.endpoints))
        return watcher.replicas if watcher is not None else []

    async def wait_ready(self, revision: RevisionRef, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until the cache holds a ready replica of ``revision``; False after ``timeout``."""
        return await self._wait(lambda: bool(self.ready(revision)), timeout)

    async def wait_replicas(self, revision: RevisionRef, count: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until exactly ``count`` replicas of ``revision`` are ready (0: drained);
        False after ``timeout``. Not part of the Backend protocol."""
        return await self._wait(lambda: len(self.ready(revision)) == count, timeout)

    async def _wait(self, done: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def forget(self, revision: RevisionRef) -> None:
        """Stop watching for ``revision``; the Deployment is left as it is."""
        target = self._targets.pop(revision, None)
        if target is not None:
            task = self._release(revision, (target.namespace, target.endpoints))
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            self._notify()

    async def stop(self) -> None:
        """Stop every watch and close the client. Deployments are left as they are."""
        self._stopped = True
        tasks = [w.task for w in self._watchers.values() if w.task is not None]
        self._watchers.clear()
        self._targets.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
        self._notify()

    # -- client ------------------------------------------------------------------------------

    async def _client(self) -> k8s.ApiClient:
        """The typed API client of :meth:`_connect`'s connection."""
        return (await self._connect()).api_client

    async def _connect(self) -> KubeConnection:
        """One connection of our own (the library's global default stays untouched)."""
        if self._stopped:
            raise CemeshError("the kubernetes backend is stopped", retryable=False)
        async with self._api_lock:
            if self._connection is None:
                configuration = k8s.Configuration()
                try:
                    if self._kubeconfig is None and _in_cluster():
                        load_incluster_config(client_configuration=configuration)
                    else:
                        await load_kube_config(
                            config_file=self._kubeconfig,
                            context=self._context,
                            client_configuration=configuration,
                            persist_config=False,
                        )
                except Exception as exc:  # missing file, bad YAML, no such context, ...
                    source = self._kubeconfig or "the default kubeconfig or in-cluster config"
                    raise CemeshError(
                        f"cannot load the Kubernetes configuration from {source}: "
                        f"{type(exc).__name__}: {exc}",
                        retryable=False,
                    ) from exc
                self._connection = KubeConnection(configuration)
            return self._connection

    # -- endpoints cache ---------------------------------------------------------------------

    def _track(self, revision: RevisionRef, target: Target) -> None:
        previous = self._targets.get(revision)
        if previous == target:
            return
        self._targets[revision] = target
        if previous is not None:  # rare: a Revision's template is immutable
            self._release(revision, (previous.namespace, previous.endpoints))
        key = (target.namespace, target.endpoints)
        watcher = self._watchers.get(key)
        if watcher is None:
            watcher = self._watchers[key] = _Watcher(target.namespace, target.endpoints)
            watcher.task = asyncio.get_running_loop().create_task(
                self._follow(watcher), name=f"k8s-endpoints-{key[0]}/{key[1]}"
            )
        watcher.users.add(revision)
        self._notify()

    def _release(self, revision: RevisionRef, key: tuple[str, str]) -> asyncio.Task[None] | None:
        """Drop ``revision`` from the watcher of ``key``; cancel it (and return its task) when
        no Revision uses it any more."""
        watcher = self._watchers.get(key)
        if watcher is None:
            return None
        watcher.users.discard(revision)
        if watcher.users:
            return None
        del self._watchers[key]
        if watcher.task is not None:
            watcher.task.cancel()
        return watcher.task

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _set(self, watcher: _Watcher, endpoints: Mapping[str, Any] | None) -> None:
        replicas = ready_replicas(endpoints)
        if replicas != watcher.replicas:
            log.debug("endpoints %s/%s: %d ready", watcher.namespace, watcher.name, len(replicas))
            watcher.replicas = replicas
            self._notify()

    async def _follow(self, watcher: _Watcher) -> None:
        """Keep ``watcher``'s replicas from a list + watch of its Endpoints object."""
        doing = f"watching Endpoints {watcher.namespace}/{watcher.name}"
        backoff = Backoff(initial=self._retry_backoff, maximum=self._max_backoff)
        attempt = 0
        while True:  # ensure() tells its caller why the configuration does not load
            try:
                connection = await self._connect()
                break
            except CemeshError as exc:
                attempt += 1
                log.debug("%s: %s", doing, exc.message)
                await asyncio.sleep(backoff.delay(attempt))
        failing = False

        async def on_change(change: str, endpoints: dict[str, Any]) -> None:
            self._set(watcher, None if change == DELETE else endpoints)

        def on_problem(problem: tuple[str, str] | None) -> None:
            nonlocal failing
            if problem is None and failing:
                log.info("%s: kube-apiserver reachable again", doing)
            elif problem is not None and not failing:  # loud once per outage
                log.warning("%s: %s", doing, problem[1])
            failing = problem is not None

        watch = CollectionWatch(
            connection,
            f"/api/v1/namespaces/{watcher.namespace}/endpoints",
            field_selector=f"metadata.name={watcher.name}",
            on_change=on_change,
            on_problem=on_problem,
            backoff=backoff,
            watch_timeout=self._resync_interval,
        )
        await watch.run()


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(_SERVICE_TOKEN)


def _describe(revision: RevisionRef) -> str:
    return f"Revision {revision.namespace}/{revision.revision} of Service {revision.service}"
