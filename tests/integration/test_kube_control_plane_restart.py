"""The Kubernetes control plane's Broker and Trigger watches across API server trouble (issue 13).

tests/integration/test_kube_watch.py checks :class:`CollectionWatch` alone; here a whole cemesh
(``control_plane=kubernetes``) runs against an API server of the test's own, events flow
through its Broker the whole time, and the API server is taken away under it:

- **restart with a 410**: the API server restarts (etcd kept) with its watch cache off, and
  while it is down etcd's revision moves and is compacted, so the watches resume from a
  resourceVersion that is gone: 410, relist. The data plane never stops: every event POSTed
  before, during and after is delivered once (none lost, none twice: the relist changes
  nothing, so no Trigger is unsubscribed or subscribed again), and a Trigger created after
  the restart becomes Ready and gets its events;
- **restart whose etcd comes back empty** (resourceVersions start again from 1): the watches
  resumed from their old resourceVersion make no progress, the progress bound
  (``kube_watch_progress_bound``) relists, and the Broker and Triggers applied again afterwards
  (new uids) become Ready and are served: events sent after are delivered once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.controlplane.controller import Controller
from broker.controlplane.kube.resource_store import KubeResourceStore
from broker.controlplane.kube.store import BROKERS, TRIGGERS
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.servers import kube_apiserver as kube
from tests.support.servers.kube_apiserver import KubeApiServer
from tests.support.servers.kube_apiserver import private_server as private_server
from tests.support.servers.kube_apiserver import (
    private_server_without_watch_cache as private_server_without_watch_cache,
)
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.timeout(240)

WAIT = 60.0  # generous: the machine is shared
PROGRESS_BOUND = 3.0  # small for the test; the product default is 150 s


def manifests(namespace: str, subscriber_url: str, *triggers: str) -> str:
    """The Broker ``default`` (cemesh's class) and Triggers each taking the type of its name."""
    objects: list[dict[str, Any]] = [{
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": "default", "namespace": namespace,
                     "annotations": {"eventing.knative.dev/broker.class": "cemesh"}},
    }]  # fmt: skip
    for name in triggers:
        objects.append({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"broker": "default", "filter": {"attributes": {"type": name}},
                     "subscriber": {"uri": subscriber_url}},
        })  # fmt: skip
    return "\n---\n".join(json.dumps(o) for o in objects)


async def kubectl(server: KubeApiServer, *args: str, stdin: str | None = None) -> None:
    """kubectl in a worker thread: the in-process cemesh keeps serving meanwhile."""
    await asyncio.to_thread(server.kubectl, *args, stdin=stdin)


async def wait_ready(server: KubeApiServer, namespace: str, *what: str) -> None:
    await kubectl(server, "wait", "--for=condition=Ready", f"--timeout={int(WAIT)}s", *what,
                  "-n", namespace)  # fmt: skip


def plane(cemesh: RunningCemesh) -> KubeResourceStore:
    """The Kubernetes store behind the running controller (white-box)."""
    found = cemesh.runtime.kube_plane
    assert isinstance(found, Controller)
    assert isinstance(found.store, KubeResourceStore)
    return found.store


def relists(cemesh: RunningCemesh) -> int:
    """How often the Broker and Trigger watches relisted (white-box)."""
    p = plane(cemesh)
    return sum(w.relists for kind in (BROKERS, TRIGGERS) for w in p.watches(kind))


class Producer:
    """POSTs events ``{prefix}-0``, ``{prefix}-1``, ... to the Broker until stopped, each
    until it is accepted (202); ``accepted`` lists the ids that were."""

    def __init__(self, cemesh: RunningCemesh, namespace: str, event_type: str) -> None:
        self.cemesh = cemesh
        self.path = f"/{namespace}/default"
        self.event_type = event_type
        self.source = f"/restart/{uuid.uuid4().hex}"
        self.accepted: list[str] = []
        self._stop = asyncio.Event()

    async def send(self, event_id: str) -> None:
        headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": self.source,
                   "ce-type": self.event_type, "content-type": "application/json"}  # fmt: skip
        async with asyncio.timeout(WAIT):
            while True:
                answer = await self.cemesh.post_event(self.path, headers, b"{}")
                if answer.status_code == 202:
                    self.accepted.append(event_id)
                    return
                await asyncio.sleep(0.05)  # not served (yet): try again shortly

    async def run(self, prefix: str) -> None:
        index = 0
        while not self._stop.is_set():
            await self.send(f"{prefix}-{index}")
            index += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):  # a steady trickle, not a flood
                    await self._stop.wait()

    @contextlib.asynccontextmanager
    async def running(self, prefix: str) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run(prefix))
        try:
            yield
        finally:
            self._stop.set()
            await task


async def delivered_once_each(subscriber: RecordingSubscriber, wanted: set[str]) -> None:
    """Until every id of ``wanted`` arrived; then none arrived twice."""
    async with asyncio.timeout(WAIT):
        while not wanted <= {r.event.id for r in subscriber.received if r.event}:
            with contextlib.suppress(AssertionError):
                await subscriber.wait_for(len(subscriber.received) + 1, timeout=WAIT)
    counts = Counter(r.event.id for r in subscriber.received if r.event)
    twice = {event_id: n for event_id, n in counts.items() if n > 1}
    assert not twice, f"delivered more than once: {twice}"


def move_and_compact_etcd(server: KubeApiServer) -> None:
    """Write keys outside the API server's prefix, so that etcd's revision moves at least two
    past every watch's resourceVersion (a watch from R asks for R+1 on, which compacting at
    R+1 would still allow), and compact at the new revision, through etcd's JSON gateway."""

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{server.etcd.url}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    for _ in range(3):  # base64 of "cemesh-test/moved" and "x"
        written = call("/v3/kv/put", {"key": "Y2VtZXNoLXRlc3QvbW92ZWQ=", "value": "eA=="})
    call("/v3/kv/compaction", {"revision": int(written["header"]["revision"]), "physical": True})


async def test_the_control_plane_relists_after_a_410_across_an_api_server_restart(
    server_without_watch_cache: KubeApiServer, tmp_path: Path
) -> None:
    server = server_without_watch_cache
    namespace = f"r-{uuid.uuid4().hex[:8]}"
    async with RecordingSubscriber() as subscriber:
        await kubectl(server, "apply", "-f", "-",
                      stdin=manifests(namespace, subscriber.url, "first"))  # fmt: skip
        async with running_cemesh(
            tmp_path / "cemesh", control_plane="kubernetes", kubeconfig=str(server.kubeconfig),
            kube_namespaces=[namespace], kube_lease_namespace=namespace,
        ) as cemesh:  # fmt: skip
            await wait_ready(server, namespace, "broker/default", "trigger/first")
            before = relists(cemesh)
            producer = Producer(cemesh, namespace, "first")
            async with producer.running("first"):
                await subscriber.wait_for(5, timeout=WAIT)
                await asyncio.to_thread(server.apiserver.stop)
                await asyncio.to_thread(move_and_compact_etcd, server)
                await asyncio.to_thread(server.apiserver.start)
                async with asyncio.timeout(WAIT):  # every watch met the 410 and relisted
                    while relists(cemesh) < before + 2:  # noqa: ASYNC110 (white-box counter)
                        await asyncio.sleep(0.1)
                await kubectl(server, "apply", "-f", "-",
                              stdin=manifests(namespace, subscriber.url, "first",
                                              "second"))  # fmt: skip
                await wait_ready(server, namespace, "trigger/second")
                later = Producer(cemesh, namespace, "second")
                for index in range(5):
                    await later.send(f"second-{index}")
            await delivered_once_each(subscriber, {*producer.accepted, *later.accepted})
            assert len(producer.accepted) >= 5
            # What each Trigger got: its own type only.
            for received in subscriber.received:
                assert received.event is not None
                assert received.event.id.startswith(received.event.type)


async def test_the_control_plane_serves_what_is_applied_after_a_restart_with_empty_etcd(
    server: KubeApiServer, tmp_path: Path
) -> None:
    namespace = f"r-{uuid.uuid4().hex[:8]}"
    async with RecordingSubscriber() as subscriber:
        await kubectl(server, "apply", "-f", "-",
                      stdin=manifests(namespace, subscriber.url, "first"))  # fmt: skip
        async with running_cemesh(
            tmp_path / "cemesh", control_plane="kubernetes", kubeconfig=str(server.kubeconfig),
            kube_namespaces=[namespace], kube_lease_namespace=namespace,
            kube_watch_progress_bound=PROGRESS_BOUND,
        ) as cemesh:  # fmt: skip
            await wait_ready(server, namespace, "broker/default", "trigger/first")
            before = Producer(cemesh, namespace, "first")
            for index in range(5):
                await before.send(f"first-{index}")
            await delivered_once_each(subscriber, set(before.accepted))
            old_uid = plane(cemesh).watches(TRIGGERS)[0].objects[(namespace, "first")]
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)  # etcd comes back empty
            await asyncio.to_thread(server.apply_crds, kube.PROJECT_CRDS)
            await kubectl(server, "apply", "-f", "-",
                          stdin=manifests(namespace, subscriber.url, "first",
                                          "second"))  # fmt: skip
            await wait_ready(server, namespace, "broker/default", "trigger/first",
                             "trigger/second")  # fmt: skip
            # The watches relisted (their old resourceVersion made no progress) and hold the
            # new objects, not the lost ones.
            new = plane(cemesh).watches(TRIGGERS)[0].objects[(namespace, "first")]
            assert new["metadata"]["uid"] != old_uid["metadata"]["uid"]
            after = Producer(cemesh, namespace, "first")
            later = Producer(cemesh, namespace, "second")
            for index in range(5, 10):
                await after.send(f"first-{index}")
                await later.send(f"second-{index}")
            await delivered_once_each(
                subscriber, {*before.accepted, *after.accepted, *later.accepted}
            )
            assert relists(cemesh) >= 2
