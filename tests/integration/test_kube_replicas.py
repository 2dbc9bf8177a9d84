"""Two cemesh replicas on one Kubernetes API server: one status writer, stable statuses.

Both replicas run the Kubernetes control plane against the test API server (project CRDs and
Lease shim); each serves the data plane, and the Lease decides which writes. Checked:

- exactly one replica leads, and the Broker and Trigger become Ready;
- statuses are stable: after an unrelated change (a label) both replicas reconcile again and
  nothing is written (the Broker's resourceVersion stays where the label left it);
- when the leader shuts down it releases the Lease and the other takes over: a Trigger created
  afterwards becomes Ready. (A leader that dies without releasing is replaced once the Lease
  expires: tests/integration/test_kube_store.py.)

- on a durable bus (Redis streams) shared by both, events sent to either replica are each
  delivered once (competing consumers of the Trigger's group), and after one replica shuts down
  the other carries on with nothing lost. (In-process replicas stop gracefully; two cemesh
  processes, the leader SIGKILLed: tests/durability/test_kube_replicas_sigkill.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.controlplane.controller import Controller
from broker.controlplane.kube.policy import ClusterPolicy
from broker.controlplane.kube.resource_store import KubeResourceStore
from broker.controlplane.kube.store import BROKERS
from tests.support.cemesh import running_cemesh
from tests.support.servers.kube_apiserver import KubeApiServer
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.timeout(180)

WAIT = 60.0


def manifests(namespace: str, *triggers: str) -> str:
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {
            "name": "default",
            "namespace": namespace,
            "annotations": {"eventing.knative.dev/broker.class": "cemesh"},
        },
    }
    objects: list[dict[str, Any]] = [broker]
    for name in triggers:
        objects.append(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"broker": "default", "subscriber": {"uri": f"http://{name}.example/"}},
            }
        )
    return "\n---\n".join(json.dumps(o) for o in objects)  # fmt: skip


def plane(cemesh: Any) -> Controller:
    found = cemesh.runtime.kube_plane
    assert isinstance(found, Controller)
    assert isinstance(found.policy, ClusterPolicy)
    return found


def cluster(controller: Controller) -> KubeResourceStore:
    """The controller's store: the Kubernetes API (white-box)."""
    store = controller.store
    assert isinstance(store, KubeResourceStore)
    return store


async def until(check: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not check():  # noqa: ASYNC110 (leadership has no event to wait on from outside)
            await asyncio.sleep(0.1)


async def test_two_replicas_elect_one_status_writer_keep_statuses_stable_and_hand_over(
    kube_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    kube_apiserver.kubectl("apply", "-f", "-", stdin=manifests(namespace, "first"))
    settings = {"control_plane": "kubernetes", "kubeconfig": str(kube_apiserver.kubeconfig),
                "kube_namespaces": [namespace], "kube_lease_namespace": namespace}  # fmt: skip
    stacks = [contextlib.AsyncExitStack(), contextlib.AsyncExitStack()]
    try:
        replicas = [
            await stack.enter_async_context(running_cemesh(tmp_path / name, **settings))
            for stack, name in zip(stacks, ("a", "b"), strict=True)
        ]
        planes = [plane(r) for r in replicas]
        await until(lambda: any(p.policy.writing for p in planes))
        assert sum(p.policy.writing for p in planes) == 1
        for what in ("broker/default", "trigger/first"):
            await asyncio.to_thread(kube_apiserver.kubectl, "wait", "--for=condition=Ready",
                                    "--timeout=60s", what, "-n", namespace)  # fmt: skip

        # Stable: an unrelated change makes both reconcile; neither writes anything.
        kube_apiserver.kubectl("label", "broker", "default", "-n", namespace, "team=x")
        # (kubectl label -o json prints the object before the server's answer: read it again)
        version = kube_apiserver.kubectl(
            "get",
            "broker",
            "default",
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ).stdout
        for p in planes:
            [watch] = cluster(p).watches(BROKERS)  # white-box: wait until each saw the label
            await until(lambda w=watch: broker_version(w, namespace) == version)
            await p.sync()
        after = await cluster(planes[0]).api.get(BROKERS, namespace, "default")
        assert after["metadata"]["resourceVersion"] == version

        # The leader shuts down; the other takes over and serves a new Trigger's status.
        leader = 0 if planes[0].policy.writing else 1
        await stacks[leader].aclose()
        await until(lambda: planes[1 - leader].policy.writing)
        kube_apiserver.kubectl("apply", "-f", "-", stdin=manifests(namespace, "first", "second"))
        await asyncio.to_thread(kube_apiserver.kubectl, "wait", "--for=condition=Ready",
                                "--timeout=60s", "trigger/second", "-n", namespace)  # fmt: skip
    finally:
        for stack in stacks:
            await stack.aclose()


def broker_version(watch: Any, namespace: str) -> str | None:
    broker = watch.objects.get((namespace, "default"))
    return None if broker is None else broker["metadata"]["resourceVersion"]


async def test_two_replicas_on_a_durable_bus_deliver_each_event_once_and_one_carries_on(
    kube_apiserver: KubeApiServer, redis_server: Any, tmp_path: Path
) -> None:
    """Both replicas take events and compete for them on one Redis stream: each is delivered
    once; after one replica shuts down, the other still serves the Broker and its Trigger."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    settings = {"control_plane": "kubernetes", "kubeconfig": str(kube_apiserver.kubeconfig),
                "kube_namespaces": [namespace], "kube_lease_namespace": namespace,
                "default_channel": "RedisStreamChannel", "redis_url": redis_server.url}  # fmt: skip
    async with RecordingSubscriber() as subscriber:
        objects = [json.loads(o) for o in manifests(namespace, "t").split("\n---\n")]
        objects[1]["spec"]["subscriber"] = {"uri": subscriber.url}
        kube_apiserver.kubectl("apply", "-f", "-",
                               stdin="\n---\n".join(json.dumps(o) for o in objects))  # fmt: skip
        stacks = [contextlib.AsyncExitStack(), contextlib.AsyncExitStack()]
        try:
            replicas = [
                await stack.enter_async_context(running_cemesh(tmp_path / name, **settings))
                for stack, name in zip(stacks, ("a", "b"), strict=True)
            ]
            await asyncio.to_thread(kube_apiserver.kubectl, "wait", "--for=condition=Ready",
                                    "--timeout=60s", "trigger/t", "-n", namespace)  # fmt: skip
            for p in (plane(r) for r in replicas):  # both serve the Trigger by now
                await until(lambda p=p: bool(p.synced.is_set()))
            async with httpx.AsyncClient(timeout=10) as http:

                async def send(replica: Any, i: int) -> None:
                    answer = await http.post(
                        f"{replica.url}/{namespace}/default",
                        headers=event_headers(f"e-{i}"),
                        content=b"{}",
                    )
                    assert answer.status_code == 202, answer.text

                for i in range(20):
                    await send(replicas[i % 2], i)
                await subscriber.wait_for(20, timeout=60)
                await stacks[0].aclose()  # one replica goes away
                for i in range(20, 30):
                    await send(replicas[1], i)
                await subscriber.wait_for(30, timeout=60)
            ids = sorted(r.headers["ce-id"] for r in subscriber.received)
            assert ids == sorted(f"e-{i}" for i in range(30))  # each once: none lost, none twice
        finally:
            for stack in stacks:
                await stack.aclose()


def event_headers(event_id: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/test",
            "ce-type": "com.example.order", "content-type": "application/json"}  # fmt: skip
