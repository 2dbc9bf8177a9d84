"""ApiServerSource: Kubernetes objects as CloudEvents (K187-K193), the way Knative's adapter does.

What this module owns:

- the event mapping (:func:`to_cloudevent`, pure): types ``dev.knative.apiserver.resource.*``
  (``Resource`` mode, data = the object) and ``dev.knative.apiserver.ref.*`` (``Reference``
  mode, data = ``{kind, namespace, name, apiVersion}``); ``source`` = the API server URL;
  ``subject`` = Knative's guessed self link ``/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>``;
  extensions ``kind``, ``name``, ``namespace``, ``apiversion`` for Trigger filters;
- admission of the resource's spec (:func:`admit_api_server_source`);
- the watcher (:class:`ApiServerWatcher`): one
  :class:`broker.controlplane.kube.watch.CollectionWatch` (the project's one list + watch:
  bookmarks, resume from the last resourceVersion, relist after 410 Gone or when no progress is made
  within a bound, backoff) per resource and namespace, whose changes it turns into events;
- its health (:class:`_Health`): a client configuration that cannot be loaded
  (``KubeconfigUnavailable``), an API server that cannot be reached (``ApiServerUnreachable``),
  that answers with an error (``ApiServerRejected``) or whose watch stalled (``WatchStalled``,
  then relisted) goes to ``on_state`` and the log only when the state changes (one line when
  watching fails, one when it works again), never per retry, and without tracebacks: the
  source's status says why it is not Ready;
- the :class:`ApiServerSource` runner plugged into :mod:`broker.features.sources` at the bottom.

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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from broker.controlplane.kube.client import KubeConnection, load_client_configuration
from broker.controlplane.kube.store import guess_plural
from broker.controlplane.kube.watch import (
    UNREACHABLE,
    Backoff,
    CollectionWatch,
    Expired,
    WatchFailed,
    list_collection,
)
from broker.core.errors import CemeshError, DeliveryError
from broker.core.events import CloudEvent
from broker.core.labels import label_selector_string
from broker.features.sources.apiserver_objects import (
    MODES,
    REF_EVENT_TYPES,
    REFERENCE_MODE,
    RESOURCE_EVENT_TYPES,
    RESOURCE_MODE,
    admit_api_server_source,
    controlled_by,
    event_types,
    object_meta,
    object_reference,
    self_link,
    to_cloudevent,
)
from broker.features.sources.base import Source, SourceKind
from broker.features.sources.kinds import API_SERVER_SOURCE

log = logging.getLogger(__name__)

OnEvent = Callable[[CloudEvent], Awaitable[None]]

__all__ = [
    "MODES",
    "REFERENCE_MODE",
    "REF_EVENT_TYPES",
    "RESOURCE_EVENT_TYPES",
    "RESOURCE_MODE",
    "admit_api_server_source",
    "controlled_by",
    "event_types",
    "guess_plural",
    "load_client_configuration",
    "object_reference",
    "self_link",
    "to_cloudevent",
]

NO_CONFIG = "KubeconfigUnavailable"

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

    def report(self, part: object, problem: Problem) -> None:
        if problem is None:
            self.ok(part)
        else:
            self.failed(part, *problem)

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


class ApiServerWatcher:
    """Watches Kubernetes resources and hands each change, as a CloudEvent, to ``on_event``.

    One :class:`~broker.controlplane.kube.watch.CollectionWatch` per resource (and namespace
    watched): LIST, then WATCH with bookmarks, resuming from the last resourceVersion after a
    dropped connection, relisting after 410 Gone or when the watch makes no progress within
    ``progress_bound`` (an API server whose etcd came back empty), and then emitting only the
    differences from the last known state. ``on_event`` is awaited before the next change of
    the same resource is read (back-pressure, per-resource order); an exception it raises is
    logged and the event dropped, as Knative does after its send retries (K193).

    ``ready`` is set once every collection has been listed and watches are starting: changes
    made after that are all reported. The first LIST announces nothing (module docstring).
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
        progress_bound: float = 150.0,
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
        self.progress_bound = progress_bound
        self.page_size = page_size
        self.source = ""  # the API server URL, known once connected (K189)
        self.ready = asyncio.Event()
        self._watches: dict[WatchTarget, CollectionWatch] = {}
        self.health = _Health(on_state)

    def watch_of(self, target: WatchTarget | None = None) -> CollectionWatch:
        """The collection watch of ``target`` (the only one when None)."""
        if target is None:
            (target,) = self._watches
        return self._watches[target]

    def resource_version(self, target: WatchTarget | None = None) -> str | None:
        """The last resourceVersion seen for ``target`` (the only one when None)."""
        return self.watch_of(target).resource_version

    @property
    def targets(self) -> list[WatchTarget]:
        return list(self._watches)

    async def wait_for_resource_version(
        self, value: str, target: WatchTarget | None = None
    ) -> None:
        """Wait until ``target``'s resourceVersion is ``value`` (tests; bound it with a timeout)."""
        await self.watch_of(target).wait_for_resource_version(value)

    async def run(self) -> None:
        """Watch until cancelled."""
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
        async with KubeConnection(configuration) as connection:
            namespaces = await self._namespaces(connection)
            for resource in self.resources:
                selector = label_selector_string(resource.get("selector"))
                for namespace in namespaces:
                    target = WatchTarget(
                        str(resource["apiVersion"]), str(resource["kind"]), namespace, selector
                    )
                    if target not in self._watches:
                        self._watches[target] = self._collection_watch(connection, target)
            if not self._watches:
                log.warning("no namespace matches spec.namespaceSelector; nothing to watch")
                self.ready.set()
                await asyncio.Event().wait()
            async with asyncio.TaskGroup() as group:
                for watch in self._watches.values():
                    group.create_task(watch.run())
                group.create_task(self._set_ready_when_synced())

    def _collection_watch(self, connection: KubeConnection, target: WatchTarget) -> CollectionWatch:
        async def on_change(change: str, obj: dict[str, Any]) -> None:
            await self._emit(change, obj)

        return CollectionWatch(
            connection,
            target.path,
            label_selector=target.label_selector,
            on_change=on_change,
            announce_initial=False,  # like Knative's Reflector into a no-op Replace
            on_problem=lambda problem: self.health.report(target, problem),
            backoff=self.backoff,
            watch_timeout=self.watch_timeout,
            progress_bound=self.progress_bound,
            page_size=self.page_size,
        )

    async def _set_ready_when_synced(self) -> None:
        for watch in self._watches.values():
            await watch.synced.wait()
        self.ready.set()

    async def _namespaces(self, connection: KubeConnection) -> list[str | None]:
        """The namespaces to watch: one, all (None), or those a namespaceSelector matches."""
        selector = self.namespace_selector
        if selector is None:
            return [self.namespace]
        if not (selector.get("matchLabels") or selector.get("matchExpressions")):
            return [None]  # an empty selector matches every namespace
        attempt = 0
        while True:
            try:
                items, _ = await list_collection(
                    connection, "/api/v1/namespaces", label_selector_string(selector)
                )
                names: list[str | None] = []
                names.extend(sorted(str(object_meta(ns).get("name")) for ns in items))
                self.health.ok("namespaces")
                return names
            except (WatchFailed, Expired) as exc:
                attempt += 1
                reason = exc.reason if isinstance(exc, WatchFailed) else UNREACHABLE
                self.health.failed("namespaces", reason, f"listing namespaces: {exc}")
                await asyncio.sleep(self.backoff.delay(attempt))

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


# -- The source kind, as broker.features.sources runs it
# ---------------------------------------------


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
            progress_bound=self.context.settings.kube_watch_progress_bound,
            on_event=self._send,
            on_state=lambda problem, source: self.report(problem, source_uri=source or None),
        )
        await watcher.run()

    async def _send(self, event: CloudEvent) -> None:
        try:
            await self.sink.send(event)
        except DeliveryError as exc:
            self.log.warning("event dropped: %s", exc.message)


API_SERVER_SOURCE_KIND = SourceKind(
    resource=API_SERVER_SOURCE,
    runner=ApiServerSource,
    check=admit_api_server_source,
    event_types=event_types,
)
