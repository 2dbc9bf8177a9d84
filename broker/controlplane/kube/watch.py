"""List + watch of one Kubernetes collection: the one watch implementation cemesh has.

:class:`CollectionWatch` keeps a local copy of one collection (a path such as
``/apis/eventing.knative.dev/v1/brokers`` or ``/apis/.../namespaces/ns/triggers``, with
optional label and field selectors, e.g. ``metadata.name=X`` for one object) and tells
``on_change`` of every add, update and delete:

- LIST (paged) gives the objects and the collection's resourceVersion; WATCH from it with
  ``allowWatchBookmarks``; every event and BOOKMARK moves the resourceVersion, so a dropped
  connection resumes where it was, with nothing missed or repeated;
- 410 Gone (HTTP status, or an ``ERROR`` event with code 410) relists, and ``on_change`` gets
  exactly the differences between the last known state and the new list (:func:`diff_states`);
- failures reconnect with exponential :class:`Backoff`, which starts over once a WATCH is
  accepted (one blip on a healthy watch reconnects at once);
- **no progress** (no event and no bookmark within ``progress_bound`` seconds, across
  reconnects) relists too. Why: after an API server restart whose etcd came back empty,
  resourceVersions start again from 1. A watch resumed from the old, now future,
  resourceVersion is accepted and then filters out every event (their versions are all lower):
  it waits silently forever. Only a bound on progress notices. When that relist finds changes
  the watch had missed, it says so (a warning, and ``WatchStalled`` through ``on_problem``
  until the new watch is accepted); when it finds none, the collection was only quiet: API
  servers send bookmarks only as their cache's resourceVersion moves (a quiet custom resource
  may get none for minutes), so that case is logged at INFO and costs one LIST per bound.

Whether the first LIST is announced is the caller's choice (``announce_initial``): Knative's
ApiServerSource announces nothing for objects that exist when it starts; a controller wants
them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from broker.controlplane.kube.client import ApiUnreachable, KubeConnection

log = logging.getLogger(__name__)

ADD, UPDATE, DELETE = "add", "update", "delete"
_WATCH_TYPES = {"ADDED": ADD, "MODIFIED": UPDATE, "DELETED": DELETE}

# Reasons of problems, as statuses show them (CamelCase).
UNREACHABLE = "ApiServerUnreachable"
REJECTED = "ApiServerRejected"
STALLED = "WatchStalled"

Key = tuple[str, str]  # (namespace, name)
OnChange = Callable[[str, dict[str, Any]], Awaitable[None]]
# (reason, message) while the watch fails; None once it works (again).
OnProblem = Callable[[tuple[str, str] | None], None]


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _uid(obj: Mapping[str, Any]) -> object:
    return (obj.get("metadata") or {}).get("uid")


def diff_states(
    known: Mapping[Key, Mapping[str, Any]], listed: Iterable[Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any]]]:
    """The changes that turn ``known`` into ``listed``: (add|update|delete, object) pairs.

    Same key and resourceVersion is no change. A different ``uid`` under the same name means
    the object was deleted and created again during the gap: delete, then add. Deletes carry
    the last known object (as a watch's DELETED event would).
    """
    changes: list[tuple[str, Mapping[str, Any]]] = []
    seen: set[Key] = set()
    for obj in listed:
        key = object_key(obj)
        seen.add(key)
        before = known.get(key)
        if before is None:
            changes.append((ADD, obj))
        elif _uid(before) != _uid(obj):
            changes.append((DELETE, before))
            changes.append((ADD, obj))
        elif resource_version_of(before) != resource_version_of(obj):
            changes.append((UPDATE, obj))
    changes.extend((DELETE, before) for key, before in known.items() if key not in seen)
    return changes


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


class Expired(Exception):
    """The server no longer has our resourceVersion (410 Gone), or the watch stalled: relist."""

    def __init__(self, message: str, reason: str = "Expired") -> None:
        super().__init__(message)
        self.reason = reason


class WatchFailed(Exception):
    """A LIST or WATCH failed in a way a retry from the same version may fix."""

    def __init__(self, message: str, reason: str = UNREACHABLE) -> None:
        super().__init__(message)
        self.reason = reason


def selector_query(label_selector: str = "", field_selector: str = "") -> list[tuple[str, str]]:
    """The query parameters of a LIST or WATCH restricted by the given selectors."""
    query = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query


async def list_collection(
    connection: KubeConnection,
    path: str,
    label_selector: str = "",
    page_size: int = 500,
    *,
    field_selector: str = "",
) -> tuple[list[dict[str, Any]], str]:
    """Every object of a collection (paged) and the resourceVersion of the list.

    LIST items carry no apiVersion/kind; they are filled in from the list's, as client-go's
    unstructured lists do. Raises :class:`Expired` (a continue token expired) or
    :class:`WatchFailed`.
    """
    items: list[dict[str, Any]] = []
    resource_version = ""
    continue_token = ""
    while True:
        query = [("limit", str(page_size)), *selector_query(label_selector, field_selector)]
        if continue_token:
            query.append(("continue", continue_token))
        try:
            status, document = await connection.request("GET", path, query=query)
        except ApiUnreachable as exc:
            raise WatchFailed(exc.message) from exc
        if status == 410:
            raise Expired(f"LIST {path}: continue token expired")
        if status != 200 or not isinstance(document, dict):
            raise WatchFailed(f"LIST {path} answered {status}: {str(document)[:200]}", REJECTED)
        meta = document.get("metadata") or {}
        if not resource_version:
            resource_version = str(meta.get("resourceVersion") or "")
        kind = str(document.get("kind") or "").removesuffix("List")
        api_version = str(document.get("apiVersion") or "")
        for item in document.get("items") or []:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            items.append(item)
        continue_token = str(meta.get("continue") or "")
        if not continue_token:
            return items, resource_version


class CollectionWatch:
    """A local copy of one collection, kept by LIST + WATCH (module docstring).

    ``objects`` is the last known state by (namespace, name); ``resource_version`` the last
    one seen; ``synced`` is set after the first LIST (and its announcements); ``relists``
    counts the relists after 410 or a stall. ``on_change`` is awaited before the next change
    is read (back-pressure, order kept); an exception from it is logged, and the change is
    not retried (the copy has moved on).
    """

    def __init__(
        self,
        connection: KubeConnection,
        path: str,
        *,
        on_change: OnChange,
        label_selector: str = "",
        field_selector: str = "",
        announce_initial: bool = True,
        on_problem: OnProblem | None = None,
        backoff: Backoff | None = None,
        watch_timeout: float = 300.0,
        progress_bound: float = 150.0,
        page_size: int = 500,
    ) -> None:
        self.connection = connection
        self.path = path
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_change = on_change
        self.announce_initial = announce_initial
        self.on_problem = on_problem
        self.backoff = backoff or Backoff()
        self.watch_timeout = watch_timeout
        self.progress_bound = progress_bound
        self.page_size = page_size
        self.objects: dict[Key, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.relists = 0
        self.connected = False  # the current WATCH was accepted
        self._last_progress = time.monotonic()
        self._progress = asyncio.Condition()
        self._stalled = ""  # why the running relist happens, when the watch made no progress

    async def wait_for_resource_version(self, value: str) -> None:
        """Wait until the resourceVersion is ``value`` (tests; bound it with a timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.resource_version == value)

    async def _advance(self, resource_version: str) -> None:
        self.resource_version = resource_version
        self._last_progress = time.monotonic()
        async with self._progress:
            self._progress.notify_all()

    def _report(self, problem: tuple[str, str] | None) -> None:
        if self.on_problem is not None:
            self.on_problem(problem)

    async def run(self) -> None:
        """Follow the collection until cancelled."""
        attempt = 0
        while True:
            self.connected = False
            try:
                if self.resource_version is None:
                    await self._relist()
                await self._watch()
                attempt = 0
                continue
            except Expired as exc:
                if exc.reason == STALLED:
                    self._stalled = str(exc)
                else:
                    log.info("resourceVersion expired, relisting", extra={"path": self.path})
                self.resource_version = None
                self.relists += 1
                continue
            except WatchFailed as exc:
                if self.connected:
                    attempt = 0  # the watch worked until this blip: reconnect at once
                else:
                    self._report((exc.reason, str(exc)))
                attempt += 1
                log.debug(
                    "watch failed, reconnecting",
                    extra={"path": self.path, "error": str(exc), "attempt": attempt},
                )
            await asyncio.sleep(self.backoff.delay(attempt))

    async def _relist(self) -> None:
        items, resource_version = await list_collection(
            self.connection,
            self.path,
            self.label_selector,
            self.page_size,
            field_selector=self.field_selector,
        )
        initial = not self.synced.is_set()
        changes = diff_states(self.objects, items) if not initial or self.announce_initial else []
        self.objects = {object_key(obj): obj for obj in items}
        await self._advance(resource_version)
        if self._stalled:
            self._say_stalled(self._stalled, len(changes))
            self._stalled = ""
        for change, obj in changes:
            await self._announce(change, dict(obj))
        self.synced.set()

    def _say_stalled(self, why: str, missed: int) -> None:
        """After a relist for lack of progress: a watch that had missed changes was stale (a
        warning, and ``on_problem`` until the relist's watch is accepted); one that had missed
        nothing was only quiet (the API server sent no bookmark), which is no problem."""
        if not missed:
            log.info("%s; relisted, nothing was missed", why, extra={"path": self.path})
            return
        message = f"{why}; relisted: the watch had missed {missed} change(s)"
        log.warning(message, extra={"path": self.path})
        self._report((STALLED, message))

    def _stall_left(self) -> float:
        """Seconds left before the lack of progress counts as a stall; raises when none."""
        left = self._last_progress + self.progress_bound - time.monotonic()
        if left <= 0:
            raise Expired(
                f"no event or bookmark on {self.path} for {self.progress_bound:g}s from "
                f"resourceVersion {self.resource_version}",
                STALLED,
            )
        return left

    async def _watch(self) -> None:
        """Follow one WATCH stream to its end (the server ends it after ``watch_timeout``)."""
        self._stall_left()
        query = [
            ("watch", "1"),
            ("resourceVersion", self.resource_version or ""),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(self.watch_timeout))),
            *selector_query(self.label_selector, self.field_selector),
        ]
        import aiohttp

        try:
            # A read that waits much longer than the server's timeout is a dead connection.
            async with self.connection.stream(
                self.path, query, read_timeout=self.watch_timeout + 30
            ) as response:
                if response.status == 410:
                    raise Expired(f"WATCH {self.path} answered 410")
                if response.status != 200:
                    body = await response.read()
                    raise WatchFailed(
                        f"WATCH {self.path} answered {response.status}: {body[:200]!r}", REJECTED
                    )
                self.connected = True
                self._report(None)
                while True:
                    async with asyncio.timeout(self._stall_left()):
                        line = await response.content.readline()
                    if not line:
                        return
                    if line.strip():
                        await self._handle(orjson.loads(line))
        except TimeoutError as exc:
            if self._last_progress + self.progress_bound <= time.monotonic():
                self._stall_left()  # raises Expired(STALLED)
            raise WatchFailed(f"WATCH {self.connection.url}{self.path}: timed out") from exc
        except ApiUnreachable as exc:
            raise WatchFailed(exc.message) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise WatchFailed(f"WATCH {self.connection.url}{self.path}: {exc}") from exc

    async def _handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise Expired(str(obj.get("message") or "410 Gone"))
            raise WatchFailed(f"ERROR event: {obj.get('message') or obj}")
        resource_version = resource_version_of(obj)
        if kind == "BOOKMARK":
            if resource_version:
                await self._advance(resource_version)
            return
        change = _WATCH_TYPES.get(str(kind))
        if change is None:
            log.warning("unknown watch event type ignored", extra={"type": kind})
            return
        key = object_key(obj)
        before = self.objects.get(key)
        if change == DELETE:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if resource_version:
            await self._advance(resource_version)
        if (
            change != DELETE
            and before is not None
            and resource_version_of(before) == (resource_version)
        ):
            return  # already announced (a replayed event): nothing changed
        await self._announce(change, obj)

    async def _announce(self, change: str, obj: dict[str, Any]) -> None:
        try:
            await self.on_change(change, obj)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a watched change was not handled", extra={"path": self.path})
