"""The Kubernetes-backed store (broker/controlplane/kube/store.py) and Lease election on a real API
server.

With the project's CRDs (and its Lease shim: this API server has no coordination.k8s.io):

- a status write goes through the status subresource, keeps ``metadata.generation``, and is
  retried after a 409 caused by another writer; one computed for an older generation (the
  spec changed meanwhile) is not written;
- finalizers are added and removed (idempotently), and removing the last one of an object
  being deleted lets it go;
- errors are the project's: NotFound for a missing object, InvalidResource (422) naming the
  field, StoreError for an unreachable server;
- of two electors on one Lease exactly one leads; when it stops renewing, the other takes over.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broker.controlplane.kube.client import KubeConnection, load_client_configuration
from broker.controlplane.kube.lease import LeaderElector
from broker.controlplane.kube.store import BROKERS, KubeStore
from broker.core.errors import InvalidResource, NotFound, StoreError
from tests.support.servers.kube_apiserver import KubeApiServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def store(kube_apiserver: KubeApiServer) -> AsyncIterator[KubeStore]:
    configuration = await load_client_configuration(str(kube_apiserver.kubeconfig))
    async with KubeConnection(configuration) as connection:
        yield KubeStore(connection)


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def apply_broker(server: KubeApiServer, namespace: str, name: str, **spec: Any) -> None:
    body = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"eventing.knative.dev/broker.class": "cemesh"}},
            "spec": spec}  # fmt: skip
    server.kubectl("apply", "-f", "-", stdin=json.dumps(body))


STATUS = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}


async def test_a_status_write_keeps_the_generation_and_is_retried_after_another_writer(
    kube_apiserver: KubeApiServer, store: KubeStore, namespace: str
) -> None:
    apply_broker(kube_apiserver, namespace, "default")
    read = await store.get(BROKERS, namespace, "default")
    # Another writer changes the object (a label: the generation stays) after our read.
    kube_apiserver.kubectl("label", "broker", "default", "-n", namespace, "team=a")
    written = await store.update_status(BROKERS, read, STATUS)
    assert written is not None
    assert written["status"]["conditions"][0]["status"] == "True"
    assert written["metadata"]["generation"] == read["metadata"]["generation"]
    assert written["metadata"]["labels"] == {"team": "a"}


async def test_a_status_computed_for_an_older_generation_is_not_written(
    kube_apiserver: KubeApiServer, store: KubeStore, namespace: str
) -> None:
    apply_broker(kube_apiserver, namespace, "default")
    read = await store.get(BROKERS, namespace, "default")
    apply_broker(kube_apiserver, namespace, "default", delivery={"retry": 4})  # generation 2
    assert await store.update_status(BROKERS, read, STATUS) is None
    assert not (await store.get(BROKERS, namespace, "default")).get("status")


async def test_finalizers_are_added_once_and_removing_the_last_lets_a_deleted_object_go(
    kube_apiserver: KubeApiServer, store: KubeStore, namespace: str
) -> None:
    apply_broker(kube_apiserver, namespace, "default")
    await store.add_finalizer(BROKERS, namespace, "default", "cemesh.dev/bus-cleanup")
    again = await store.add_finalizer(BROKERS, namespace, "default", "cemesh.dev/bus-cleanup")
    assert again["metadata"]["finalizers"] == ["cemesh.dev/bus-cleanup"]
    kube_apiserver.kubectl("delete", "broker", "default", "-n", namespace, "--wait=false")
    held = await store.get(BROKERS, namespace, "default")
    assert held["metadata"]["deletionTimestamp"]
    await store.remove_finalizer(BROKERS, namespace, "default", "cemesh.dev/bus-cleanup")
    with pytest.raises(NotFound):
        await store.get(BROKERS, namespace, "default")
    # Removing it again, from an object that is gone, is no error.
    assert await store.remove_finalizer(BROKERS, namespace, "default", "x") is None


async def test_api_errors_become_the_projects_errors(
    kube_apiserver: KubeApiServer, store: KubeStore, namespace: str
) -> None:
    with pytest.raises(NotFound):
        await store.get(BROKERS, namespace, "absent")
    apply_broker(kube_apiserver, namespace, "default")
    read = await store.get(BROKERS, namespace, "default")
    with pytest.raises(InvalidResource):
        await store.update_status(BROKERS, read, {"observedGeneration": "not a number"})
    configuration = await load_client_configuration(str(kube_apiserver.kubeconfig))
    configuration.host = "https://127.0.0.1:1"  # nothing listens there
    async with KubeConnection(configuration) as connection:
        with pytest.raises(StoreError):
            await KubeStore(connection).get(BROKERS, namespace, "default")


async def test_of_two_electors_one_leads_and_the_other_takes_over_when_it_stops(
    store: KubeStore, namespace: str
) -> None:
    changes: list[tuple[str, bool]] = []
    took_over = asyncio.Event()

    def elector(identity: str) -> LeaderElector:
        def on_change(leading: bool) -> None:
            changes.append((identity, leading))
            if identity == "b" and leading:
                took_over.set()

        return LeaderElector(store, namespace=namespace, identity=identity, duration=2,
                             renew_interval=0.3, on_change=on_change)  # fmt: skip

    first, second = elector("a"), elector("b")
    assert await first.try_acquire()
    assert not await second.try_acquire()
    tasks = [asyncio.create_task(e.run()) for e in (first, second)]
    try:
        async with asyncio.timeout(20):
            while not first.is_leader:  # noqa: ASYNC110 (its first round)
                await asyncio.sleep(0.05)
        assert not second.is_leader
        tasks[0].cancel()  # "a" stops renewing (a SIGKILLed replica)
        await asyncio.gather(tasks[0], return_exceptions=True)
        async with asyncio.timeout(20):
            await took_over.wait()
        lease = await store.get_lease(namespace, "cemesh-controller")
        assert lease is not None and lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert ("a", True) in changes and ("b", True) in changes
