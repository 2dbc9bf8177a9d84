"""A small fake kube-apiserver for the ``kubernetes`` serving backend: Deployment scale + Endpoints.

:class:`FakeScaleApiServer` is real HTTP on 127.0.0.1 (a raw ASGI app under uvicorn, in the
test's event loop) and speaks exactly what ``broker.features.serving.kubernetes`` uses:

- ``GET|PUT|PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale``: ``autoscaling/v1``
  Scale objects with a ``resourceVersion`` (one global counter, as etcd's revision). PATCH takes
  ``application/merge-patch+json``, ``application/strategic-merge-patch+json`` (the client's
  default for a dict body; the same as a merge for a Scale) and ``application/json-patch+json``;
  anything else gets 415. A PUT or patch carrying a stale ``metadata.resourceVersion`` gets 409.
- ``GET /api/v1/namespaces/{ns}/endpoints/{name}`` and the LIST
  ``GET /api/v1/namespaces/{ns}/endpoints[?fieldSelector=metadata.name=X]``, with ``watch=true``
  (``resourceVersion``, ``timeoutSeconds``): a chunked stream of JSON lines replaying the changes
  after the given version, then following new ones; a version older than :meth:`compact` gets
  the ``ERROR`` event with code 410.

Errors are Kubernetes ``Status`` objects (404 NotFound names ``deployments.apps "x"``). Requests
need ``Authorization: Bearer <token>`` (the one :meth:`write_kubeconfig` writes), else 401.

Test controls: :meth:`add_deployment` makes a :class:`FakeDeployment` whose replicas are *real*
HTTP servers on loopback (one :class:`RecordingSubscriber` per Pod, answering 200 with the Pod's
name): scaling it to N starts or stops servers until N run, then (once ``ready_gate`` is set,
as it is by default) publishes N ready addresses in its Endpoints. :meth:`stop` and
:meth:`start` take the server down and back up on the same port (connections refused meanwhile);
:meth:`set_endpoints` / :meth:`delete_endpoints` change Endpoints directly; :meth:`compact` and
:meth:`expire_watches` make watches meet 410 Expired.
``requests`` records what the client sent (method, path, query, content type, body).

What a real API server does that this one does not: no Pods or ReplicaSets (replicas are the
servers), one subset per Pod (they share 127.0.0.1 and differ by port, where real Pods share the
port and differ by IP), and ``labelSelector`` is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from tests.support.subscriber import LoopbackServer, RecordingSubscriber

TOKEN = "fake-scale-token"  # a test credential for a loopback server

_SCALE_PATCH_TYPES = (
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
)


@dataclass
class Request:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes


@dataclass
class FakeDeployment:
    """One Deployment: its spec replicas and the Pods (real loopback servers) behind it."""

    server: FakeScaleApiServer
    namespace: str
    name: str
    service: str | None  # the Endpoints object's name; None: no Service in front
    replicas: int = 0
    resource_version: int = 0
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    pods: list[tuple[str, RecordingSubscriber]] = field(default_factory=list)
    # Cleared by a test to hold new Pods unready (their Endpoints stay as they were).
    ready_gate: asyncio.Event = field(default_factory=asyncio.Event)
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    _pod_counter: int = 0
    _task: asyncio.Task[None] | None = None

    def scale(self) -> dict[str, Any]:
        """The ``autoscaling/v1`` Scale object."""
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": str(self.resource_version),
                "creationTimestamp": "2024-01-01T00:00:00Z",
            },
            "spec": {"replicas": self.replicas},
            "status": {"replicas": len(self.pods), "selector": f"app={self.name}"},
        }

    def set_replicas(self, replicas: int) -> None:
        if replicas != self.replicas:
            self.replicas = replicas
            self.resource_version = self.server.next_version()
            self._settled.clear()
            self._dirty.set()

    async def wait_settled(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until the running Pods match the spec and their Endpoints are published."""
        async with asyncio.timeout(timeout):
            await self._settled.wait()

    async def _reconcile_forever(self) -> None:
        """The Deployment + endpoints controllers in one loop: Pods to spec, then Endpoints."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            while len(self.pods) > self.replicas:
                _, pod = self.pods.pop()
                # Out of the Endpoints first, as a terminating Pod is, then stopped.
                self._publish()
                await pod.__aexit__(None, None, None)
            while len(self.pods) < self.replicas:
                pod_name = f"{self.name}-{self._pod_counter}"
                self._pod_counter += 1
                pod = RecordingSubscriber(_answer_with(pod_name))
                await pod.__aenter__()
                self.pods.append((pod_name, pod))
            await self.ready_gate.wait()
            self._publish()
            if not self._dirty.is_set():
                self._settled.set()

    def _publish(self) -> None:
        if self.service is None:
            return
        subsets = [
            {
                "addresses": [
                    {
                        "ip": "127.0.0.1",
                        "targetRef": {"kind": "Pod", "namespace": self.namespace, "name": name},
                    }
                ],
                "ports": [{"name": "http", "port": _port(pod.url), "protocol": "TCP"}],
            }
            for name, pod in self.pods
        ]
        self.server.set_endpoints(self.namespace, self.service, subsets)

    async def _close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, pod in self.pods:
            await pod.__aexit__(None, None, None)
        self.pods.clear()


def _answer_with(text: str) -> Any:
    return lambda _received: (200, [("content-type", "text/plain")], text.encode())


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@dataclass(eq=False)  # kept in a set: hashed by identity
class _Watch:
    namespace: str
    name: str | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class FakeScaleApiServer:
    """The fake kube-apiserver; ``async with FakeScaleApiServer() as api: api.url``."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.url = ""
        self.port = 0
        self.requests: list[Request] = []
        self.deployments: dict[tuple[str, str], FakeDeployment] = {}
        self.endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self._version = 1
        # (resourceVersion, namespace, name, event) for watch replays; compact() empties it.
        self._history: list[tuple[int, str, str, dict[str, Any]]] = []
        self._compacted = 0
        self._watches: set[_Watch] = set()
        self._closing = asyncio.Event()
        self._server = LoopbackServer(self._app, name="fake kube-apiserver")

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> FakeScaleApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        for deployment in self.deployments.values():
            await deployment._close()

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1: a free port the first time, the same one after."""
        self._closing = asyncio.Event()
        self.url = await self._server.start()
        self.port = self._server.port

    async def stop(self) -> None:
        """Stop listening: open watches end, new connections are refused. Idempotent."""
        self._closing.set()  # watch streams end, so the graceful shutdown does not wait on them
        await self._server.stop()

    def write_kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        """Write a kubeconfig whose current context points at this server; return ``path``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": "default"},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # -- test controls -----------------------------------------------------------------------

    def next_version(self) -> int:
        self._version += 1
        return self._version

    def add_deployment(
        self, namespace: str, name: str, *, replicas: int = 0, service: str | None = ""
    ) -> FakeDeployment:
        """Create a Deployment (and, unless ``service`` is None, its Endpoints, named ``service``
        or the Deployment's name); Pods start in the background as for any scale change."""
        endpoints = name if service == "" else service
        deployment = FakeDeployment(self, namespace, name, endpoints)
        deployment.resource_version = self.next_version()
        deployment.ready_gate.set()
        self.deployments[(namespace, name)] = deployment
        if endpoints is not None:
            self.set_endpoints(namespace, endpoints, [])
        deployment._task = asyncio.create_task(deployment._reconcile_forever())
        deployment.set_replicas(replicas)
        if replicas == 0:
            deployment._settled.set()
        return deployment

    def set_endpoints(self, namespace: str, name: str, subsets: list[dict[str, Any]]) -> None:
        """Create or replace an Endpoints object (``subsets`` as Kubernetes writes them)."""
        key = (namespace, name)
        existing = self.endpoints.get(key)
        version = self.next_version()
        obj: dict[str, Any] = {
            "kind": "Endpoints",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": (existing or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()),
                "resourceVersion": str(version),
            },
        }
        if subsets:  # Kubernetes omits an empty subsets list
            obj["subsets"] = copy.deepcopy(subsets)
        self.endpoints[key] = obj
        self._emit(
            version, namespace, name, {"type": "MODIFIED" if existing else "ADDED", "object": obj}
        )

    def delete_endpoints(self, namespace: str, name: str) -> None:
        obj = self.endpoints.pop((namespace, name))
        version = self.next_version()
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(version)}}
        self._emit(version, namespace, name, {"type": "DELETED", "object": obj})

    def compact(self) -> None:
        """Forget the history: watches from an older resourceVersion get 410 Expired."""
        self._history.clear()
        self._compacted = self._version

    def expire_watches(self) -> None:
        """Open watches get the 410 Expired ERROR event and end (the client must list again)."""
        gone = _status(410, "Expired", "too old resource version")
        for watch in self._watches:
            watch.queue.put_nowait({"type": "ERROR", "object": gone})

    def _emit(self, version: int, namespace: str, name: str, event: dict[str, Any]) -> None:
        self._history.append((version, namespace, name, event))
        for watch in self._watches:
            if watch.namespace == namespace and watch.name in (None, name):
                watch.queue.put_nowait(event)

    # -- HTTP --------------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        request = Request(
            scope["method"], scope["path"], query, headers.get("content-type", ""), body
        )
        self.requests.append(request)
        if headers.get("authorization") != f"Bearer {self.token}":
            await _json(send, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        parts = scope["path"].strip("/").split("/")
        match parts:
            case ["apis", "apps", "v1", "namespaces", ns, "deployments", name, "scale"]:
                await self._scale(request, ns, name, send)
            case ["api", "v1", "namespaces", ns, "endpoints", name] if request.method == "GET":
                obj = self.endpoints.get((ns, name))
                if obj is None:
                    await _json(send, 404, _not_found("endpoints", name))
                else:
                    await _json(send, 200, obj)
            case ["api", "v1", "namespaces", ns, "endpoints"] if request.method == "GET":
                name_filter = _name_selector(query.get("fieldSelector", ""))
                if query.get("watch") in ("true", "1"):
                    await self._watch(ns, name_filter, query, receive, send)
                else:
                    await _json(send, 200, self._list(ns, name_filter))
            case _:
                await _json(
                    send,
                    404,
                    _status(404, "NotFound", "the server could not find the requested resource"),
                )

    def _list(self, namespace: str, name: str | None) -> dict[str, Any]:
        items = [
            obj
            for (ns, n), obj in sorted(self.endpoints.items())
            if ns == namespace and name in (None, n)
        ]
        return {
            "kind": "EndpointsList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    async def _scale(self, request: Request, namespace: str, name: str, send: Any) -> None:
        deployment = self.deployments.get((namespace, name))
        if deployment is None:
            await _json(send, 404, _not_found("deployments.apps", name, group="apps"))
            return
        if request.method == "GET":
            await _json(send, 200, deployment.scale())
            return
        if request.method not in ("PUT", "PATCH"):
            await _json(send, 405, _status(405, "MethodNotAllowed", "method not allowed"))
            return
        media_type = request.content_type.split(";")[0].strip().lower()
        if request.method == "PATCH" and media_type not in _SCALE_PATCH_TYPES:
            message = (
                "the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(_SCALE_PATCH_TYPES)}"
            )
            await _json(send, 415, _status(415, "UnsupportedMediaType", message))
            return
        try:
            patch = json.loads(request.body)
            if request.method == "PUT":
                desired = patch
            elif media_type == "application/json-patch+json":
                desired = _apply_json_patch(deployment.scale(), patch)
            else:
                desired = _merge(deployment.scale(), patch)
        except (ValueError, TypeError, KeyError) as exc:
            await _json(send, 400, _status(400, "BadRequest", f"invalid patch: {exc}"))
            return
        if not isinstance(desired, dict):
            await _json(send, 400, _status(400, "BadRequest", "the body is not a Scale object"))
            return
        metadata = desired.get("metadata") or {}
        version = metadata.get("resourceVersion")
        if version not in (None, "", str(deployment.resource_version)):
            message = (
                f'Operation cannot be fulfilled on deployments.apps "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
            await _json(send, 409, _status(409, "Conflict", message))
            return
        if metadata.get("name") not in (None, name):
            await _json(
                send, 400, _status(400, "BadRequest", "the name of the object does not match")
            )
            return
        replicas = (desired.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            message = (
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                f"{replicas!r}: must be greater than or equal to 0"
            )
            await _json(send, 422, _status(422, "Invalid", message))
            return
        deployment.set_replicas(replicas)
        await _json(send, 200, deployment.scale())

    async def _watch(
        self,
        namespace: str,
        name: str | None,
        query: dict[str, str],
        receive: Any,
        send: Any,
    ) -> None:
        watch = _Watch(namespace, name)
        since = query.get("resourceVersion", "")
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],  # chunked: no length
        }
        if since and since != "0" and int(since) < self._compacted:
            await send(start)
            gone = _status(410, "Expired", f"too old resource version: {since} ({self._compacted})")
            await _line(send, {"type": "ERROR", "object": gone})
            await send({"type": "http.response.body", "body": b""})
            return
        if since and since != "0":
            for version, ns, n, event in self._history:
                if version > int(since) and ns == namespace and name in (None, n):
                    watch.queue.put_nowait(event)
        else:  # no version: the current state as ADDED events, then changes
            for obj in self._list(namespace, name)["items"]:
                watch.queue.put_nowait({"type": "ADDED", "object": obj})
        self._watches.add(watch)
        timeout = float(query.get("timeoutSeconds") or 1800)
        disconnected = asyncio.create_task(_until_disconnect(receive))
        closing = asyncio.create_task(self._closing.wait())
        try:
            await send(start)
            async with asyncio.timeout(timeout):
                while True:
                    next_event = asyncio.create_task(watch.queue.get())
                    done, _ = await asyncio.wait(
                        {next_event, disconnected, closing}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if next_event not in done:
                        next_event.cancel()
                        break
                    event = next_event.result()
                    await _line(send, event)
                    if event["type"] == "ERROR":
                        break
        except TimeoutError:
            pass  # the server-side timeoutSeconds: the stream just ends
        finally:
            self._watches.discard(watch)
            disconnected.cancel()
            closing.cancel()
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b""})


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _name_selector(selector: str) -> str | None:
    """The name a ``metadata.name=X`` (or ``==``) field selector asks for; None: all."""
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if key.strip() == "metadata.name":
            return value.lstrip("=").strip()
    return None


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> Any:
    """The RFC 6902 subset a Scale needs: add / replace / test on object paths."""
    result = copy.deepcopy(document)
    for op in operations:
        *parents, leaf = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        node = result
        for part in parents:
            node = node[part]
        if op["op"] in ("add", "replace"):
            node[leaf] = op["value"]
        elif op["op"] == "test":
            if node.get(leaf) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            raise ValueError(f"unsupported op {op['op']!r}")
    return result


def _status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        status["details"] = details
    return status


def _not_found(kind: str, name: str, *, group: str = "") -> dict[str, Any]:
    plural = kind.split(".")[0]
    details = {"name": name, "kind": plural} | ({"group": group} if group else {})
    return _status(404, "NotFound", f'{kind} "{name}" not found', **details)


async def _json(send: Any, status: int, document: Any) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _line(send: Any, event: dict[str, Any]) -> None:
    body = json.dumps(event).encode() + b"\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})
