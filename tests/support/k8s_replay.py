"""A small fake kube-apiserver for tests: real HTTP on 127.0.0.1, LIST and WATCH as Kubernetes does.

:class:`FakeKubeApiServer` keeps objects per collection and a history of changes, each with a
resourceVersion from one global counter (as etcd's revision). It answers:

- LIST ``GET /api/v1[/namespaces/{ns}]/{plural}`` and
  ``/apis/{group}/{version}[/namespaces/{ns}]/{plural}``
  (``labelSelector`` honoured; items without apiVersion/kind, as typed lists come; the list's
  ``metadata.resourceVersion`` is the current one);
- WATCH (``?watch=1&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S``): a chunked
  stream of JSON lines replaying the history after N and then following new changes; a
  ``resourceVersion`` older than the last compaction gets the ``ERROR`` event Kubernetes sends
  (code 410, reason Expired) and the stream ends;
- ``/version`` (the recorded one), ``/api`` and ``/apis`` discovery.

Test controls: ``apply`` (append a change), ``hold`` and ``release`` (open watches stop and
resume receiving), ``send_bookmarks``, ``compact`` (forget the history: older resourceVersions
get 410), ``expire_watches`` (open watches get the 410 ERROR event) and ``drop_watches`` (open
watch connections are cut mid-stream).
:func:`write_kubeconfig` writes a kubeconfig pointing at it; :func:`read_watch_stream` reads a
recorded stream (the project's own in tests/data/k8s, or those of the extra conformance pass).

What a real API server does that this one does not: an object leaving a label selector is not
turned into DELETED for watchers, and there is no pagination (``limit`` is ignored).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import yaml

from tests.support.subscriber import LoopbackServer

TOKEN = "cemesh-test-token"

# Collections the server knows before anything is stored: (apiVersion, kind) -> plural.
KNOWN_KINDS: dict[tuple[str, str], str] = {
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("v1", "Namespace"): "namespaces",
    ("v1", "ConfigMap"): "configmaps",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "ReplicaSet"): "replicasets",
    ("batch/v1", "Job"): "jobs",
    ("events.k8s.io/v1", "Event"): "events",
    ("fixture.example.com/v1", "Widget"): "widgets",
}
CLUSTER_SCOPED = {"namespaces"}


# -- Label selectors, parsed independently of the code under test -------------------------


def _split_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a ``labelSelector`` string (=, ==, !=, in, notin, k, !k)."""
    for requirement in _split_requirements(selector):
        words = requirement.split()
        if len(words) >= 2 and words[1] in ("in", "notin"):
            key = words[0]
            values = {v.strip() for v in requirement.split("(", 1)[1].rstrip(")").split(",")}
            inside = key in labels and labels[key] in values
            if inside != (words[1] == "in"):
                return False
        elif "!=" in requirement:
            key, value = (s.strip() for s in requirement.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = (s.strip() for s in requirement.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


# -- Recorded streams ----------------------------------------------------------------------


def read_watch_stream(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(type, object)`` pairs of a recorded watch stream (``.ndjson``/``.jsonl``, one a line)."""
    pairs = []
    for line in path.read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            pairs.append((event["type"], event["object"]))
    return pairs


def read_yaml_objects(path: Path) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML file (the kspan captures)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]


def write_kubeconfig(path: Path, server: str, *, token: str = TOKEN) -> Path:
    """Write a kubeconfig whose current context reaches ``server`` with a bearer token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


# -- The server ----------------------------------------------------------------------------


@dataclass
class Request:
    """One request the server answered."""

    path: str
    query: dict[str, str]
    authorization: str

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("1", "true")


@dataclass
class _Change:
    rv: int
    type: str
    collection: tuple[str, str]  # (apiVersion, plural)
    obj: dict[str, Any]


@dataclass
class _Watch:
    collection: tuple[str, str]
    namespace: str | None
    selector: str
    bookmarks: bool
    cursor: int  # last resourceVersion sent
    bookmark_sent: int = 0
    ended: bool = False
    queue: list[dict[str, Any]] = field(default_factory=list)


class _Dropped(Exception):
    """Raised inside the app to make uvicorn cut a watch connection mid-stream."""


class FakeKubeApiServer:
    """A kube-apiserver stand-in on ``http://127.0.0.1:PORT`` (``url``); see the module doc."""

    def __init__(self, *, first_resource_version: int = 1000, version_file: Path | None = None):
        self.url = ""
        self.requests: list[Request] = []
        self._rv = first_resource_version
        self._compacted = 0  # a watch from a resourceVersion below this gets 410
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._kinds = {
            (api_version, plural): kind for (api_version, kind), plural in KNOWN_KINDS.items()
        }
        self._history: list[_Change] = []
        self._watches: set[int] = set()
        self._watch_objects: dict[int, _Watch] = {}
        self._changed = asyncio.Condition()
        self._held = False
        self._drop_generation = 0
        self._expire_generation = 0
        self._expire_status: dict[str, Any] | None = None
        self._bookmark_generation = 0
        self._closing = False
        self._version = (
            json.loads(version_file.read_text())
            if version_file is not None
            else {"major": "1", "minor": "36", "gitVersion": "v1.36.0-fake"}
        )
        # log_level critical: drop_watches() makes uvicorn log each cut connection
        self._server = LoopbackServer(self._app, name="fake kube-apiserver", log_level="critical")

    # -- lifecycle

    async def __aenter__(self) -> FakeKubeApiServer:
        self.url = await self._server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
        await self._server.stop()

    # -- state

    @property
    def resource_version(self) -> int:
        """The current (latest) resourceVersion."""
        return self._rv

    def objects(self, api_version: str, plural: str) -> list[dict[str, Any]]:
        """The stored objects of a collection (copies)."""
        return [copy.deepcopy(o) for o in self._objects.get((api_version, plural), {}).values()]

    async def apply(self, type_: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Record one change (ADDED, MODIFIED or DELETED) of ``obj``; return it as stored.

        The stored object gets the next resourceVersion (the recorded one is replaced, as the
        real server would assign its own); DELETED keeps the last stored state and bumps it.
        """
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown change type {type_!r}")
        stored = copy.deepcopy(dict(obj))
        api_version, kind = stored["apiVersion"], stored["kind"]
        plural = KNOWN_KINDS.get((api_version, kind)) or kind.lower() + "s"
        collection = (api_version, plural)
        self._kinds.setdefault(collection, kind)
        meta = stored.setdefault("metadata", {})
        key = (meta.get("namespace") or "", meta["name"])
        async with self._changed:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            bucket = self._objects.setdefault(collection, {})
            if type_ == "DELETED":
                bucket.pop(key, None)
            else:
                bucket[key] = stored
            self._history.append(_Change(self._rv, type_, collection, stored))
            self._changed.notify_all()
        return copy.deepcopy(stored)

    async def replay(
        self, changes: Iterable[tuple[str, Mapping[str, Any]]]
    ) -> list[dict[str, Any]]:
        """:meth:`apply` each recorded ``(type, object)``; the stored objects, in order."""
        return [await self.apply(type_, obj) for type_, obj in changes]

    async def hold(self) -> None:
        """Open watches stop receiving changes (they still happen) until :meth:`release`."""
        async with self._changed:
            self._held = True

    async def release(self) -> None:
        async with self._changed:
            self._held = False
            self._changed.notify_all()

    async def send_bookmarks(self) -> None:
        """Every open watch that allowed bookmarks gets a BOOKMARK at the current version."""
        async with self._changed:
            self._bookmark_generation += 1
            self._changed.notify_all()

    async def compact(self) -> int:
        """Forget the history up to now: a watch from an older resourceVersion gets 410."""
        async with self._changed:
            self._compacted = self._rv
            self._history = []
            return self._compacted

    async def expire_watches(self, status: Mapping[str, Any] | None = None) -> None:
        """Open watches get the 410 Expired ERROR event (``status``: a recorded one), then end."""
        async with self._changed:
            self._expire_status = dict(status) if status is not None else None
            self._expire_generation += 1
            self._changed.notify_all()

    async def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no final chunk, as a network failure)."""
        async with self._changed:
            self._drop_generation += 1
            self._changed.notify_all()

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    async def wait_for_watches(self, count: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``count`` watch streams are open and caught up."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._caught_up() >= count)

    async def wait_for_requests(
        self,
        predicate: Callable[[Request], bool],
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[Request]:
        """Wait until ``count`` requests satisfy ``predicate``; return them."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: len([r for r in self.requests if predicate(r)]) >= count
            )
        return [r for r in self.requests if predicate(r)]

    def _caught_up(self) -> int:
        return sum(1 for w in self._watch_objects.values() if not w.ended and w.cursor >= self._rv)

    # -- HTTP

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = Request(scope["path"], query, headers.get("authorization", ""))
        async with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
        if request.authorization != f"Bearer {TOKEN}":
            await _json(send, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        path = scope["path"].rstrip("/")
        if path == "/version":
            await _json(send, 200, self._version)
            return
        if path == "/api":
            await _json(send, 200, {"kind": "APIVersions", "versions": ["v1"]})
            return
        if path == "/apis":
            await _json(send, 200, self._group_list())
            return
        target = self._parse(path)
        if target is None:
            await _json(send, 404, _status(404, "NotFound", f"the server could not find {path}"))
            return
        collection, namespace = target
        if request.is_watch:
            await self._serve_watch(collection, namespace, query, receive, send)
        else:
            await _json(
                send, 200, self._list(collection, namespace, query.get("labelSelector", ""))
            )

    def _parse(self, path: str) -> tuple[tuple[str, str], str | None] | None:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            api_version, rest = parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = None
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) != 1 or (api_version, rest[0]) not in self._kinds:
            return None
        return (api_version, rest[0]), namespace

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for api_version, _ in self._kinds:
            if "/" in api_version:
                group, version = api_version.split("/")
                groups.setdefault(group, []).append(version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                    "preferredVersion": {
                        "groupVersion": f"{group}/{versions[0]}",
                        "version": versions[0],
                    },
                }
                for group, versions in sorted(groups.items())
            ],
        }

    def _visible(self, obj: Mapping[str, Any], namespace: str | None, selector: str) -> bool:
        meta = obj.get("metadata") or {}
        if namespace is not None and (meta.get("namespace") or "") != namespace:
            return False
        return selector_matches(selector, meta.get("labels") or {})

    def _list(
        self, collection: tuple[str, str], namespace: str | None, selector: str
    ) -> dict[str, Any]:
        items = []
        for obj in self._objects.get(collection, {}).values():
            if self._visible(obj, namespace, selector):
                item = copy.deepcopy(obj)
                if not collection[0].count("."):  # built-in types: typed lists omit these
                    item.pop("apiVersion", None)
                    item.pop("kind", None)
                items.append(item)
        return {
            "kind": f"{self._kinds[collection]}List",
            "apiVersion": collection[0],
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _serve_watch(
        self,
        collection: tuple[str, str],
        namespace: str | None,
        query: Mapping[str, str],
        receive: Any,
        send: Any,
    ) -> None:
        requested = query.get("resourceVersion", "")
        start = int(requested) if requested.isdigit() else 0
        watch = _Watch(
            collection,
            namespace,
            query.get("labelSelector", ""),
            query.get("allowWatchBookmarks") == "true",
            cursor=start,
            bookmark_sent=self._bookmark_generation,
        )
        timeout = float(query.get("timeoutSeconds") or 1800)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        if start and start < self._compacted:
            message = f"too old resource version: {start} ({self._compacted})"
            await _line(send, {"type": "ERROR", "object": _status(410, "Expired", message)})
            await send({"type": "http.response.body", "body": b""})
            return
        if start == 0:  # "any version": the current state as ADDED, then follow
            for obj in self._objects.get(collection, {}).values():
                if self._visible(obj, namespace, watch.selector):
                    watch.queue.append({"type": "ADDED", "object": copy.deepcopy(obj)})
            watch.cursor = self._rv
        ident = id(watch)
        disconnected = asyncio.Event()

        async def wait_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
            async with self._changed:
                self._changed.notify_all()

        listener = asyncio.create_task(wait_disconnect())
        drop, expire = self._drop_generation, self._expire_generation
        self._watches.add(ident)
        self._watch_objects[ident] = watch
        try:
            async with asyncio.timeout(timeout):
                while True:
                    async with self._changed:
                        self._changed.notify_all()  # wait_for_watches may be waiting
                        await self._changed.wait_for(
                            lambda: (
                                self._closing
                                or disconnected.is_set()
                                or self._drop_generation != drop
                                or self._expire_generation != expire
                                or bool(watch.queue)
                                or (
                                    watch.bookmarks
                                    and self._bookmark_generation != watch.bookmark_sent
                                )
                                or (not self._held and self._pending(watch))
                            )
                        )
                        if self._drop_generation != drop:
                            raise _Dropped
                        if self._closing or disconnected.is_set():
                            break
                        if self._expire_generation != expire:
                            message = f"too old resource version: {watch.cursor} ({self._rv})"
                            status = self._expire_status or _status(410, "Expired", message)
                            watch.queue.append({"type": "ERROR", "object": status})
                        if not self._held:
                            for change in self._history:
                                if (
                                    change.rv > watch.cursor
                                    and change.collection == collection
                                    and self._visible(change.obj, namespace, watch.selector)
                                ):
                                    watch.queue.append(
                                        {
                                            "type": change.type,
                                            "object": copy.deepcopy(change.obj),
                                        }
                                    )
                            watch.cursor = self._rv
                        if watch.bookmarks and self._bookmark_generation != watch.bookmark_sent:
                            watch.bookmark_sent = self._bookmark_generation
                            watch.queue.append(self._bookmark(collection, watch.cursor))
                        batch, watch.queue = watch.queue, []
                    ended = False
                    for event in batch:
                        await _line(send, event)
                        ended = ended or event["type"] == "ERROR"
                    if ended:
                        break
        except TimeoutError:
            pass  # the server's watch timeout: end the stream normally
        finally:
            listener.cancel()
            watch.ended = True
            self._watches.discard(ident)
            self._watch_objects.pop(ident, None)
        await send({"type": "http.response.body", "body": b""})

    def _pending(self, watch: _Watch) -> bool:
        return self._rv > watch.cursor

    def _bookmark(self, collection: tuple[str, str], rv: int) -> dict[str, Any]:
        return {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": collection[0],
                "kind": self._kinds[collection],
                "metadata": {"resourceVersion": str(rv)},
            },
        }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


async def _json(send: Any, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _line(send: Any, event: Mapping[str, Any]) -> None:
    await send(
        {
            "type": "http.response.body",
            "body": json.dumps(event).encode() + b"\n",
            "more_body": True,
        }
    )
