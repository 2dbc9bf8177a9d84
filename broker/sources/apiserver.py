"""ApiServerSource: Kubernetes objects as CloudEvents (K187-K193), the way Knative's adapter does.

What this module owns:

- the pure rules (the event mapping, admission, the owner filter, the relist diff) are
  :mod:`broker.sources.apiserver_objects`';
- the watcher (:class:`ApiServerWatcher`): LIST then WATCH per resource with bookmarks,
  resuming from the last resourceVersion after a dropped connection and relisting after
  410 Gone, so that nothing is lost and nothing is sent twice;
- its health (:class:`_Health`): a client configuration that cannot be loaded
  (``KubeconfigUnavailable``), an API server that cannot be reached (``ApiServerUnreachable``)
  or that answers with an error (``ApiServerRejected``) is retried with exponential backoff
  (:class:`Backoff`, capped), which starts over once a LIST or WATCH succeeds (so one blip on a
  healthy watch reconnects at once); the state goes to ``on_state`` and the log only when it
  changes (one line when watching fails, one when it works again), never per retry, and
  without tracebacks: the source's status says why it is not Ready;
- the :class:`ApiServerSource` runner plugged into :mod:`broker.sources` at the bottom.

Knative's adapter feeds a client-go Reflector into a ``cache.Store`` whose ``Replace`` does
nothing, so the initial LIST (and a relist) emits no event: objects that exist when the source
starts are not announced. This watcher does the same at start. After a 410 it does better than
Knative, which silently skips what happened during the gap: it diffs the relist against the
last known state and emits add/update/delete for exactly the changes.

Simplifications, on purpose: the plural in URLs and subjects is guessed from the kind
(``meta.UnsafeGuessKindToResource``, as Knative does) rather than discovered; a
``namespaceSelector`` is resolved to namespaces once when the watcher starts (Knative's
controller re-resolves it when namespaces change); ``filters`` (an experimental feature) and
``serviceAccountName`` are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from broker.errors import CemeshError
from broker.events import CloudEvent
from broker.labels import label_selector_string
from broker.sources.apiserver_objects import (
    ADD,
    DELETE,
    MODES,
    REFERENCE_MODE,
    UPDATE,
    Key,
    admit_api_server_source,
    controlled_by,
    diff_states,
    event_types,
    guess_plural,
    object_key,
    object_meta,
    to_cloudevent,
    version_of,
)

log = logging.getLogger(__name__)

_WATCH_TYPES = {"ADDED": ADD, "MODIFIED": UPDATE, "DELETED": DELETE}

OnEvent = Callable[[CloudEvent], Awaitable[None]]


# -- The watcher (I/O) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between failed LIST/WATCH attempts."""

    initial: float = 0.8
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (1 = the first retry)."""
        base = min(self.initial * self.factor ** max(attempt - 1, 0), self.maximum)
        return base * (1 + random.uniform(0, self.jitter))


class _Expired(Exception):
    """The server no longer has our resourceVersion (410 Gone): relist."""


UNREACHABLE = "ApiServerUnreachable"
REJECTED = "ApiServerRejected"
NO_CONFIG = "KubeconfigUnavailable"


class _WatchFailed(Exception):
    """The watch request or stream failed in a way a retry from the same version may fix."""

    def __init__(self, message: str, reason: str = UNREACHABLE) -> None:
        super().__init__(message)
        self.reason = reason


Problem = tuple[str, str] | None  # (reason, message) while watching fails; None when it works
OnState = Callable[[Problem, str], None]  # (problem, the API server URL once known)


class _Health:
    """Which parts of a watcher fail now (config, each collection); reports the first failure,
    or None, to ``on_state`` and the log only when that state changes (module docstring)."""

    def __init__(self, on_state: OnState | None) -> None:
        self.on_state = on_state
        self.failing: dict[object, tuple[str, str]] = {}
        self.reported: Problem = None
        self.source = ""

    def failed(self, part: object, reason: str, message: str) -> None:
        self.failing[part] = (reason, message)
        self._publish()

    def ok(self, part: object) -> None:
        if self.failing.pop(part, None) is not None or self.reported is not None:
            self._publish()

    def _publish(self) -> None:
        problem = next(iter(self.failing.values()), None)
        if (problem and problem[0]) == (self.reported and self.reported[0]):
            return  # the same state: retries say nothing new
        self.reported = problem
        if problem is None:
            log.info("ApiServerSource watching again", extra={"url": self.source})
        else:
            log.warning(
                "ApiServerSource cannot watch (%s): %s; retrying with backoff",
                problem[0],
                problem[1],
                extra={"why": problem[0]},
            )
        if self.on_state is not None:
            self.on_state(problem, self.source)


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """One LIST/WATCH collection: a resource of ``resources[]`` in one namespace (or all)."""

    api_version: str
    kind: str
    namespace: str | None  # None: every namespace
    label_selector: str = ""

    @property
    def path(self) -> str:
        group_version = self.api_version
        prefix = "/api/" if "/" not in group_version else "/apis/"
        scope = "" if self.namespace is None else f"namespaces/{quote(self.namespace, safe='')}/"
        return f"{prefix}{group_version}/{scope}{guess_plural(self.kind)}"


@dataclass
class _Cursor:
    """What one target's loop knows: its last resourceVersion and the objects it has seen."""

    resource_version: str | None = None
    objects: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    synced: bool = False
    connected: bool = False  # the current WATCH got its 200 (the API server works)


async def load_client_configuration(kubeconfig: str | None) -> Any:
    """A kubernetes_asyncio ``Configuration``: from ``kubeconfig``, else in-cluster, else
    ``$KUBECONFIG`` or ``~/.kube/config`` (like client-go's ``BuildConfigFromFlags``)."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig and not os.path.exists(kubeconfig):  # noqa: ASYNC240 (one stat, rarely)
        raise CemeshError(f"the kubeconfig file {kubeconfig} does not exist")
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration, persist_config=False
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                # KUBECONFIG is read now: kubernetes_asyncio reads it once, at import.
                await config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None,
                    client_configuration=configuration,
                    persist_config=False,
                )
    except (ConfigException, OSError) as exc:
        where = kubeconfig or (
            "in-cluster service account, then "
            + (os.environ.get("KUBECONFIG") or "~/.kube/config (no $KUBECONFIG)")
        )
        raise CemeshError(
            f"cannot load the Kubernetes client configuration from {where}: {exc}"
        ) from exc
    return configuration


class ApiServerWatcher:
    """Watches Kubernetes resources and hands each change, as a CloudEvent, to ``on_event``.

    For each resource (and each namespace watched): LIST for the current resourceVersion,
    then WATCH from it with bookmarks. Every event and BOOKMARK advances the resourceVersion;
    a dropped connection reconnects (with :class:`Backoff`) from the last one, so nothing is
    missed or repeated; a 410 Gone (HTTP status or ``ERROR`` event) relists and emits only
    the differences from the last known state. ``on_event`` is awaited before the next
    change of the same resource is read (back-pressure, per-resource order); an exception it
    raises is logged and the event dropped, as Knative does after its send retries (K193).

    ``ready`` is set once every collection has been listed and watches are starting: changes
    made after that are all reported.
    """

    def __init__(
        self,
        *,
        resources: list[Mapping[str, Any]],
        mode: str = REFERENCE_MODE,
        owner: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        namespace_selector: Mapping[str, Any] | None = None,
        kubeconfig: str | None = None,
        on_event: OnEvent,
        on_state: OnState | None = None,
        backoff: Backoff | None = None,
        watch_timeout: float = 300.0,
        page_size: int = 500,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be Reference or Resource, not {mode!r}")
        self.resources = [dict(r) for r in resources]
        self.mode = mode
        self.owner = dict(owner) if owner else None
        self.namespace = namespace
        self.namespace_selector = namespace_selector
        self.kubeconfig = kubeconfig
        self.on_event = on_event
        self.backoff = backoff or Backoff()
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.source = ""  # the API server URL, known once connected (K189)
        self.ready = asyncio.Event()
        self._cursors: dict[WatchTarget, _Cursor] = {}
        self._unsynced = 0  # collections not listed yet; ``ready`` is set when it reaches 0
        self._progress = asyncio.Condition()  # notified when a resourceVersion moves
        self._api: Any = None
        self.health = _Health(on_state)

    def resource_version(self, target: WatchTarget | None = None) -> str | None:
        """The last resourceVersion seen for ``target`` (the only one when None)."""
        if target is None:
            (target,) = self._cursors
        return self._cursors[target].resource_version

    @property
    def targets(self) -> list[WatchTarget]:
        return list(self._cursors)

    async def wait_for_resource_version(
        self, value: str, target: WatchTarget | None = None
    ) -> None:
        """Wait until ``target``'s resourceVersion is ``value`` (tests; bound it with a timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.resource_version(target) == value)

    async def _advance(self, cursor: _Cursor, resource_version: str) -> None:
        cursor.resource_version = resource_version
        async with self._progress:
            self._progress.notify_all()

    async def run(self) -> None:
        """Watch until cancelled."""
        from kubernetes_asyncio import client

        attempt = 0
        while True:
            try:
                configuration = await load_client_configuration(self.kubeconfig)
                break
            except CemeshError as exc:
                attempt += 1
                self.health.failed("config", NO_CONFIG, exc.message)
                await asyncio.sleep(self.backoff.delay(attempt))
        self.source = self.health.source = str(configuration.host).rstrip("/")
        self.health.ok("config")
        if self.health.on_state is not None and self.health.reported is None:
            self.health.on_state(None, self.source)  # the source URL is known now
        async with client.ApiClient(configuration) as api:
            self._api = api
            namespaces = await self._namespaces()
            for resource in self.resources:
                selector = label_selector_string(resource.get("selector"))
                for namespace in namespaces:
                    target = WatchTarget(
                        str(resource["apiVersion"]), str(resource["kind"]), namespace, selector
                    )
                    self._cursors.setdefault(target, _Cursor())
            self._unsynced = len(self._cursors)
            if not self._cursors:
                log.warning("no namespace matches spec.namespaceSelector; nothing to watch")
                self.ready.set()
                await asyncio.Event().wait()
            async with asyncio.TaskGroup() as group:
                for target, cursor in self._cursors.items():
                    group.create_task(self._follow(target, cursor))

    async def _namespaces(self) -> list[str | None]:
        """The namespaces to watch: one, all (None), or those a namespaceSelector matches."""
        selector = self.namespace_selector
        if selector is None:
            return [self.namespace]
        if not (selector.get("matchLabels") or selector.get("matchExpressions")):
            return [None]  # an empty selector matches every namespace
        attempt = 0
        while True:
            try:
                items, _ = await self._list("/api/v1/namespaces", label_selector_string(selector))
                names: list[str | None] = []
                names.extend(sorted(str(object_meta(ns).get("name")) for ns in items))
                self.health.ok("namespaces")
                return names
            except (_WatchFailed, _Expired) as exc:
                attempt += 1
                reason = exc.reason if isinstance(exc, _WatchFailed) else UNREACHABLE
                self.health.failed("namespaces", reason, f"listing namespaces: {exc}")
                await asyncio.sleep(self.backoff.delay(attempt))

    # One collection's LIST/WATCH loop -----------------------------------------------------

    async def _follow(self, target: WatchTarget, cursor: _Cursor) -> None:
        attempt = 0
        while True:
            cursor.connected = False
            try:
                if cursor.resource_version is None:
                    await self._relist(target, cursor)
                    self.health.ok(target)
                if await self._watch(target, cursor):
                    attempt = 0
                continue
            except _Expired:
                log.info("resourceVersion expired, relisting", extra={"path": target.path})
                cursor.resource_version = None
                continue
            except _WatchFailed as exc:
                if cursor.connected:
                    attempt = 0  # the watch worked until this blip: reconnect at once
                else:
                    self.health.failed(target, exc.reason, str(exc))
                attempt += 1
                log.debug(
                    "watch failed, reconnecting",
                    extra={"path": target.path, "error": str(exc), "attempt": attempt},
                )
            await asyncio.sleep(self.backoff.delay(attempt))

    async def _relist(self, target: WatchTarget, cursor: _Cursor) -> None:
        items, resource_version = await self._list(target.path, target.label_selector)
        if cursor.synced:
            # After a 410: emit what changed while we could not watch (Knative emits nothing).
            for change, obj in diff_states(cursor.objects, items):
                await self._emit(change, obj)
        # The first LIST emits nothing, like Knative's Reflector into a no-op Replace.
        cursor.objects = {object_key(obj): obj for obj in items}
        await self._advance(cursor, resource_version)
        if not cursor.synced:
            cursor.synced = True
            self._unsynced -= 1
            if not self._unsynced:
                self.ready.set()

    async def _list(self, path: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        resource_version = ""
        continue_token = ""
        while True:
            query: list[tuple[str, str]] = [("limit", str(self.page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if continue_token:
                query.append(("continue", continue_token))
            status, body = await self._get(path, query)
            if status == 410:
                raise _Expired(body.decode("utf-8", "replace"))  # a continue token expired
            if status != 200:
                raise _WatchFailed(f"LIST {path} answered {status}: {body[:200]!r}", REJECTED)
            document = orjson.loads(body)
            meta = document.get("metadata") or {}
            if not resource_version:
                resource_version = str(meta.get("resourceVersion") or "")
            kind = str(document.get("kind") or "").removesuffix("List")
            api_version = str(document.get("apiVersion") or "")
            for item in document.get("items") or []:
                # LIST items carry no apiVersion/kind; Knative's unstructured list fills them in.
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                items.append(item)
            continue_token = str(meta.get("continue") or "")
            if not continue_token:
                return items, resource_version

    async def _get(self, path: str, query: list[tuple[str, str]]) -> tuple[int, bytes]:
        import aiohttp

        try:
            response = await self._api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=60, connect=10),
            )
            async with response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _WatchFailed(f"GET {self.source}{path}: {exc}") from exc

    async def _watch(self, target: WatchTarget, cursor: _Cursor) -> bool:
        """Follow one WATCH stream to its end; True if it ended normally."""
        import aiohttp

        query = [
            ("watch", "1"),
            ("resourceVersion", cursor.resource_version or ""),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(self.watch_timeout))),
        ]
        if target.label_selector:
            query.append(("labelSelector", target.label_selector))
        # The server ends the watch after timeoutSeconds; a read that waits much longer than
        # that means a dead connection, which only a read timeout can tell.
        timeout = aiohttp.ClientTimeout(connect=10, sock_read=self.watch_timeout + 30)
        try:
            response = await self._api.call_api(
                target.path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
            async with response:
                if response.status == 410:
                    raise _Expired(f"WATCH {target.path} answered 410")
                if response.status != 200:
                    body = await response.read()
                    raise _WatchFailed(
                        f"WATCH {target.path} answered {response.status}: {body[:200]!r}",
                        REJECTED,
                    )
                cursor.connected = True
                self.health.ok(target)
                async for line in response.content:
                    if line.strip():
                        await self._handle(target, cursor, orjson.loads(line))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise _WatchFailed(f"WATCH {self.source}{target.path}: {exc}") from exc
        return True

    async def _handle(self, target: WatchTarget, cursor: _Cursor, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise _Expired(str(obj.get("message") or "410 Gone"))
            raise _WatchFailed(f"ERROR event: {obj.get('message') or obj}")
        resource_version = version_of(obj)
        if kind == "BOOKMARK":
            if resource_version:
                await self._advance(cursor, resource_version)
            return
        change = _WATCH_TYPES.get(str(kind))
        if change is None:
            log.warning("unknown watch event type ignored", extra={"type": kind})
            return
        key = object_key(obj)
        before = cursor.objects.get(key)
        if change == DELETE:
            cursor.objects.pop(key, None)
        else:
            cursor.objects[key] = obj
        if resource_version:
            await self._advance(cursor, resource_version)
        if change != DELETE and before is not None and version_of(before) == resource_version:
            return  # already reported (a replayed event): nothing changed
        await self._emit(change, obj)

    async def _emit(self, change: str, obj: Mapping[str, Any]) -> None:
        if not controlled_by(obj, self.owner):
            return
        event = to_cloudevent(change, obj, mode=self.mode, source=self.source)
        try:
            await self.on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Knative logs a failed send and goes on with the next change (K193).
            log.exception("ApiServerSource event not delivered", extra={"id": event.id})


# -- The source kind, as broker.sources runs it ---------------------------------------------
# Imported late: broker.sources.kinds imports this module at its bottom to register the kind.

from broker.errors import DeliveryError  # noqa: E402
from broker.sources.base import Source, SourceKind  # noqa: E402
from broker.sources.kinds import API_SERVER_SOURCE, register_source_kind  # noqa: E402


class ApiServerSource(Source):
    """Runs an :class:`ApiServerWatcher` for one ApiServerSource, sending to its sink.

    The watched namespace is the source's own, unless ``spec.namespaceSelector`` is set (an
    empty selector: every namespace), as in Knative. The framework's sender applies
    ``ceOverrides`` and retries; an event it still cannot deliver is logged and dropped (K193).
    """

    async def run(self) -> None:
        spec = self.spec.spec
        watcher = ApiServerWatcher(
            resources=list(spec["resources"]),
            mode=str(spec.get("mode") or REFERENCE_MODE),
            owner=spec.get("owner"),
            namespace=self.spec.namespace,
            namespace_selector=spec.get("namespaceSelector"),
            kubeconfig=self.context.settings.kubeconfig,
            on_event=self._send,
            on_state=lambda problem, source: self.report(problem, source_uri=source or None),
        )
        await watcher.run()

    async def _send(self, event: CloudEvent) -> None:
        try:
            await self.sink.send(event)
        except DeliveryError as exc:
            self.log.warning("event dropped: %s", exc.message)


register_source_kind(
    SourceKind(
        resource=API_SERVER_SOURCE,
        runner=ApiServerSource,
        check=admit_api_server_source,
        event_types=event_types,
    )
)
