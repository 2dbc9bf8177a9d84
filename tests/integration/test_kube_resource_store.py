"""The Kubernetes API behind the storage seam (broker/controlplane/kube/resource_store.py), on a
real API server (the project's CRDs and Lease shim):

- reads come from the watch caches: an object kubectl applies is listed and got once its watch
  event arrived, which moves the revision, and ``next_revision`` returns on that event (long
  before its bound); with nothing changing it returns after its bound, unchanged;
- create, replace (unconditional, or guarded by a stale resourceVersion: Conflict) and delete go
  to the API server; a missing object is NotFound;
- ``update_statuses`` writes through the status subresource, counts what it wrote, and skips a
  status computed for another generation, an unchanged one and an absent object;
- ``claim_lease``: of concurrent claimants exactly one wins, a later claim loses, and a winner
  prunes expired claims under its prefix only;
- the one controller runs on it: with a resync interval far beyond the test's bounds, a Broker
  and a Trigger applied after cemesh started turn Ready, and a Trigger edited to a bad
  subscriber turns not Ready: the watches woke the controller, no poll did.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.controlplane.kube.client import KubeConnection, load_client_configuration
from broker.controlplane.kube.resource_store import KubeResourceStore, claim_object_name
from broker.controlplane.kube.store import BROKERS, LEASES, KubeStore
from broker.controlplane.resource_store import ResourceStore, StatusChange
from broker.core.errors import Conflict, NotFound
from tests.support.cemesh import running_cemesh
from tests.support.servers.kube_apiserver import KubeApiServer

pytestmark = pytest.mark.timeout(120)
GROUP = "eventing.knative.dev"
WAIT = 30.0


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def store(kube_apiserver: KubeApiServer, namespace: str) -> AsyncIterator[KubeResourceStore]:
    configuration = await load_client_configuration(str(kube_apiserver.kubeconfig))
    async with KubeConnection(configuration) as connection:
        resources = KubeResourceStore(
            KubeStore(connection, namespaces=[namespace]), lease_namespace=namespace
        )
        resources.start()
        try:
            yield resources
        finally:
            await resources.stop()


def broker(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Broker",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"eventing.knative.dev/broker.class": "cemesh"}},
            "spec": spec}  # fmt: skip


async def until_listed(
    store: KubeResourceStore, check: Callable[[list[dict[str, Any]]], bool]
) -> None:
    """Until ``check`` holds of the listed objects, waking on each revision move."""
    async with asyncio.timeout(WAIT):
        while True:
            revision = await store.revision()
            if check(await store.list()):
                return
            await store.next_revision(revision, WAIT)


def names(objects: list[dict[str, Any]]) -> set[str]:
    return {o["metadata"]["name"] for o in objects}


async def test_the_kubernetes_store_satisfies_the_seam_and_wakes_on_watch_events(
    kube_apiserver: KubeApiServer, store: KubeResourceStore, namespace: str
) -> None:
    seam: ResourceStore = store  # the Protocol, checked by mypy
    assert await seam.list() == []  # waits for the first LIST, of an empty namespace
    revision = await seam.revision()
    waiter = asyncio.create_task(seam.next_revision(revision, WAIT))
    started = time.monotonic()
    kube_apiserver.kubectl("apply", "-f", "-", stdin=json.dumps(broker(namespace, "a")))
    moved = await asyncio.wait_for(waiter, WAIT)
    assert moved != revision
    assert time.monotonic() - started < WAIT / 2  # woken by the event, not by the bound
    await until_listed(store, lambda objects: names(objects) == {"a"})
    got = await seam.get(GROUP, "Broker", namespace, "a")
    assert got["kind"] == "Broker" and got["apiVersion"] == f"{GROUP}/v1"
    assert [o["metadata"]["name"] for o in await seam.list(GROUP, "Broker", namespace)] == ["a"]
    assert await seam.list(GROUP, "Broker", "elsewhere") == []
    # Quiet: the wait ends at its bound, the revision unchanged.
    still = await seam.revision()
    assert await seam.next_revision(still, 0.3) == still


async def test_create_replace_and_delete_go_to_the_api_server(
    store: KubeResourceStore, namespace: str
) -> None:
    created = await store.create(broker(namespace, "b"))
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    # Unconditional replace (no resourceVersion): the current object's is used.
    replaced = await store.replace(broker(namespace, "b", delivery={"retry": 3}))
    assert replaced["spec"]["delivery"] == {"retry": 3}
    assert replaced["metadata"]["generation"] == 2
    stale = broker(namespace, "b", delivery={"retry": 4})
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        await store.replace(stale)
    with pytest.raises(Conflict):
        await store.create(broker(namespace, "b"))
    await until_listed(store, lambda objects: names(objects) == {"b"})
    deleted = await store.delete(GROUP, "Broker", namespace, "b")
    assert deleted["metadata"]["uid"] == created["metadata"]["uid"]
    await until_listed(store, lambda objects: not objects)
    with pytest.raises(NotFound):
        await store.get(GROUP, "Broker", namespace, "b")
    with pytest.raises(NotFound):
        await store.delete(GROUP, "Broker", namespace, "b")


async def test_update_statuses_counts_what_it_wrote_and_skips_stale_unchanged_and_absent(
    store: KubeResourceStore, namespace: str
) -> None:
    await store.create(broker(namespace, "c"))
    await until_listed(store, lambda objects: names(objects) == {"c"})
    status = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}

    def change(name: str, generation: int | None, new: dict[str, Any]) -> StatusChange:
        return StatusChange(GROUP, "Broker", namespace, name, new, generation=generation)

    stale = change("c", 7, status)  # computed for a generation the object does not have
    assert await store.update_statuses([stale, change("absent", 1, status)]) == 0
    assert await store.update_statuses([change("c", 1, status)]) == 1
    await until_listed(store, lambda objects: objects[0].get("status") == status)
    assert await store.update_statuses([change("c", 1, status)]) == 0  # unchanged
    written = await store.api.get(BROKERS, namespace, "c")
    assert written["status"] == status and written["metadata"]["generation"] == 1


async def test_a_claim_is_won_once_and_winners_prune_expired_claims_under_their_prefix(
    store: KubeResourceStore, namespace: str
) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    results = await asyncio.gather(
        *(store.claim_lease("tick/x/1", f"holder-{i}", later) for i in range(5))
    )
    assert sorted(results) == [False, False, False, False, True]
    assert await store.claim_lease("tick/x/1", "late", later) is False
    past = datetime.now(UTC) - timedelta(minutes=5)
    assert await store.claim_lease("tick/old", "me", past)
    assert await store.claim_lease("other/old", "me", past)
    assert await store.claim_lease("tick/x/2", "me", later, prune_prefix="tick/")
    left = {
        lease["metadata"]["name"] for lease in await store.api.list(LEASES, namespace=namespace)
    }
    assert claim_object_name("tick/old") not in left
    assert {claim_object_name(n) for n in ("other/old", "tick/x/1", "tick/x/2")} <= left


async def test_the_controller_on_the_kubernetes_store_is_woken_by_watch_events_not_polls(
    kube_apiserver: KubeApiServer, namespace: str, tmp_path: Path
) -> None:
    async with running_cemesh(
        tmp_path, control_plane="kubernetes", kubeconfig=str(kube_apiserver.kubeconfig),
        kube_namespaces=[namespace], kube_lease_namespace=namespace, resync_interval=3600,
    ):  # fmt: skip
        trigger = {"apiVersion": f"{GROUP}/v1", "kind": "Trigger",
                   "metadata": {"name": "t", "namespace": namespace},
                   "spec": {"broker": "default",
                            "subscriber": {"uri": "http://subscriber.example/"}}}  # fmt: skip
        manifests = [broker(namespace, "default"), trigger]
        await asyncio.to_thread(kube_apiserver.kubectl, "apply", "-f", "-",
                                stdin="\n---\n".join(json.dumps(m) for m in manifests))  # fmt: skip
        for what in ("broker/default", "trigger/t"):
            await asyncio.to_thread(kube_apiserver.kubectl, "wait", "--for=condition=Ready",
                                    f"--timeout={int(WAIT)}s", what, "-n", namespace)  # fmt: skip
        trigger["spec"]["subscriber"] = {"uri": "not-absolute"}
        await asyncio.to_thread(kube_apiserver.kubectl, "apply", "-f", "-",
                                stdin=json.dumps(trigger))  # fmt: skip
        await asyncio.to_thread(kube_apiserver.kubectl, "wait", "--for=condition=Ready=False",
                                f"--timeout={int(WAIT)}s", "trigger/t",
                                "-n", namespace)  # fmt: skip
