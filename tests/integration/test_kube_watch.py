"""The one list + watch (broker/controlplane/kube/watch.py) against a real Kubernetes API server.

Each test runs its own API server (etcd + apiextensions-apiserver, the project's CRDs), since
they restart it or compact its etcd:

- after a restart whose etcd came back empty (resourceVersions start again), the watch that
  resumed from its old resourceVersion makes no progress; the progress bound relists, reports
  ``WatchStalled``, and the changes (the lost Broker deleted, the new one added) are announced
  exactly once: the bug ApiServerSource had, which waited silently forever;
- a 410 Gone (the watch's resourceVersion compacted away in etcd, watch cache off so that etcd
  answers) relists and announces exactly the changes made meanwhile, none twice;
- ApiServerSource's watcher, which is built on it, announces a Broker created after the restart.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from broker.controlplane.kube.client import KubeConnection
from broker.controlplane.kube.watch import STALLED, Backoff, CollectionWatch
from tests.support.servers import kube_apiserver as kube
from tests.support.servers.kube_apiserver import KubeApiServer
from tests.support.servers.kube_apiserver import private_server as private_server
from tests.support.servers.kube_apiserver import (
    private_server_without_watch_cache as private_server_without_watch_cache,
)

pytestmark = pytest.mark.timeout(120)

FAST = Backoff(initial=0.05, maximum=0.5)
WAIT = 30.0  # generous: the machine is shared
PROGRESS_BOUND = 3.0  # small for the test; the product default is 150 s


def broker_manifest(namespace: str, name: str) -> str:
    return json.dumps({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {"eventing.knative.dev/broker.class": "cemesh"}},
    })  # fmt: skip


class Changes:
    """An ``on_change`` that records (change, name) and lets a test wait for some."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, change: str, obj: dict[str, Any]) -> None:
        async with self._changed:
            self.seen.append((change, obj["metadata"]["name"]))
            self._changed.notify_all()

    async def wait_for(self, *wanted: tuple[str, str]) -> None:
        try:
            async with asyncio.timeout(WAIT), self._changed:
                await self._changed.wait_for(lambda: all(w in self.seen for w in wanted))
        except TimeoutError:
            raise AssertionError(f"expected {wanted}, saw {self.seen}") from None


@asynccontextmanager
async def following(watch: CollectionWatch) -> AsyncIterator[None]:
    task = asyncio.create_task(watch.run())
    try:
        async with asyncio.timeout(WAIT):
            await watch.synced.wait()
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def brokers_path(namespace: str) -> str:
    return f"/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers"


async def test_a_watch_after_a_restart_with_empty_etcd_relists_when_it_makes_no_progress(
    server: KubeApiServer,
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    server.kubectl("apply", "-f", "-", stdin=broker_manifest(namespace, "before"))
    changes = Changes()
    problems: list[tuple[str, str] | None] = []
    healthy_again = asyncio.Event()  # set when the watch works again after saying it stalled

    def on_problem(problem: tuple[str, str] | None) -> None:
        problems.append(problem)
        if problem is None and any(p is not None and p[0] == STALLED for p in problems):
            healthy_again.set()

    async with KubeConnection(await _configuration(server)) as connection:
        watch = CollectionWatch(
            connection, brokers_path(namespace), on_change=changes, backoff=FAST,
            on_problem=on_problem, progress_bound=PROGRESS_BOUND,
        )  # fmt: skip
        async with following(watch):
            await changes.wait_for(("add", "before"))
            server.stop()
            server.start()  # etcd comes back empty: the CRDs and the Broker are gone
            server.apply_crds(kube.PROJECT_CRDS)
            server.kubectl("apply", "-f", "-", stdin=broker_manifest(namespace, "after"))
            await changes.wait_for(("delete", "before"), ("add", "after"))
            assert watch.relists >= 1
            async with asyncio.timeout(WAIT):  # said it stalled, then works again
                await healthy_again.wait()
            server.kubectl("delete", "broker", "after", "-n", namespace)
            await changes.wait_for(("delete", "after"))
    assert sorted(changes.seen) == sorted(
        [("add", "before"), ("delete", "before"), ("add", "after"), ("delete", "after")]
    )


async def test_a_410_relists_and_announces_exactly_the_changes_made_meanwhile(
    server_without_watch_cache: KubeApiServer,
) -> None:
    server = server_without_watch_cache
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    for name in ("kept", "changed", "removed"):
        server.kubectl("apply", "-f", "-", stdin=broker_manifest(namespace, name))
    changes = Changes()
    async with KubeConnection(await _configuration(server)) as connection:
        watch = CollectionWatch(
            connection, brokers_path(namespace), on_change=changes, backoff=FAST,
            progress_bound=PROGRESS_BOUND * 20,  # only the 410 may relist here
        )  # fmt: skip
        async with following(watch):
            await changes.wait_for(("add", "kept"), ("add", "changed"), ("add", "removed"))
        # Not watching now: changes made meanwhile, then etcd compacts them away.
        server.kubectl("apply", "-f", "-", stdin=broker_manifest(namespace, "added"))
        server.kubectl("annotate", "broker", "changed", "-n", namespace, "example.com/x=1")
        server.kubectl("delete", "broker", "removed", "-n", namespace)
        _compact_etcd(server)
        relists = watch.relists
        async with following(watch):
            await changes.wait_for(("add", "added"), ("update", "changed"), ("delete", "removed"))
        assert watch.relists == relists + 1
    assert sorted(changes.seen) == sorted([
        ("add", "kept"), ("add", "changed"), ("add", "removed"),
        ("add", "added"), ("update", "changed"), ("delete", "removed"),
    ])  # fmt: skip


async def _configuration(server: KubeApiServer) -> Any:
    from broker.controlplane.kube.client import load_client_configuration

    return await load_client_configuration(str(server.kubeconfig))


def _compact_etcd(server: KubeApiServer) -> None:
    """Compact etcd at its current revision, through etcd's JSON gateway."""

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{server.etcd.url}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    revision = int(call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
    call("/v3/kv/compaction", {"revision": revision, "physical": True})


async def test_api_server_source_announces_a_broker_created_after_a_restart_with_empty_etcd(
    server: KubeApiServer,
) -> None:
    """The reported bug: the source resumed from its old resourceVersion and waited silently."""
    from broker.core.events import CloudEvent
    from broker.features.sources.apiserver import ApiServerWatcher

    namespace = f"t-{uuid.uuid4().hex[:8]}"
    events: list[CloudEvent] = []
    announced = asyncio.Event()
    states: list[tuple[str, str] | None] = []

    async def on_event(event: CloudEvent) -> None:
        events.append(event)
        if event.get("name") == "after":
            announced.set()

    watcher = ApiServerWatcher(
        resources=[{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}],
        namespace=namespace, kubeconfig=str(server.kubeconfig), on_event=on_event,
        on_state=lambda problem, _: states.append(problem), backoff=FAST,
        progress_bound=PROGRESS_BOUND,
    )  # fmt: skip
    task = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(WAIT):
            await watcher.ready.wait()
        server.stop()
        server.start()
        server.apply_crds(kube.PROJECT_CRDS)
        server.kubectl("apply", "-f", "-", stdin=broker_manifest(namespace, "after"))
        async with asyncio.timeout(WAIT):
            await announced.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [e.type for e in events] == ["dev.knative.apiserver.ref.add"]
    assert any(s is not None and s[0] == STALLED for s in states), states
