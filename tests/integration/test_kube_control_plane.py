"""cemesh as a Knative Broker class, on a real Kubernetes API server (issue 13).

cemesh runs with ``control_plane=kubernetes`` against the test API server (etcd +
apiextensions-apiserver, ``tests/support/servers/kube_apiserver.py``) with the project's CRDs,
and, in the ``shared_conformance`` pass, with Knative's own CRDs from
``../shared/fixtures/knative-crds`` (plus the project's Lease shim). Objects are applied with
``kubectl``; subscribers are real HTTP servers. What is checked:

- a cemesh-class Broker becomes Ready with its URL (``kubectl wait``), with Knative's
  conditions, ``observedGeneration`` and cemesh's finalizer; a Trigger to a ``uri`` and one to a
  Knative Service whose status carries an address become Ready with ``subscriberUri``;
- events POSTed to the Broker's URL reach each matching subscriber once; a spec change (a new
  filter) is picked up, with a new ``observedGeneration``;
- an ``MTChannelBasedBroker`` Broker beside it, and its Trigger, get no status, no finalizer;
- a Trigger to a Service without an address is not Ready (``DestinationNotReady``) and turns
  Ready when the Service gets one (watched, not polled); one to a core Service, which this
  API server cannot list, is not Ready (``DestinationNotReadable``) and holds nothing else up;
- deleting a Trigger retires its consumer group on the bus, then removes the finalizer;
- deleting a Broker retires its Triggers' groups and deletes its topic on the bus, then removes
  its finalizer (kept while the bus refuses: Redis down, the stream still there on the server
  until Redis is back); its Triggers stay, BrokerReady False (``BrokerDoesNotExist``);
- switching the Broker's class away releases it (finalizers removed, nothing served).

Core kinds (ConfigMaps, core Services) are not served by this API server; their paths are
tested against recorded responses in tests/unit/test_kube_control.py. Here, a Trigger naming
a core Service and a Broker naming a ConfigMap are not Ready and say why.

The API server keeps an audit log: what cemesh requested must be granted by
deploy/kubernetes's roles, and those roles must grant nothing else. Ready transitions are
posted as core Events (refused here, 404; their shape: tests/integration/test_kube_events.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from broker.controlplane.eventing.types import bus_of_channel
from broker.controlplane.kube.client import USER_AGENT
from broker.controlplane.kube.policy import FINALIZER
from broker.core.spec import broker_topic, trigger_group
from tests.conftest import shared_fixture_dir
from tests.support.cemesh import running_cemesh
from tests.support.servers import kube_apiserver as kube
from tests.support.servers.kube_apiserver import KubeApiServer
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.timeout(180)

WAIT = "60s"  # kubectl wait bound: generous, the machine is shared


AUDIT_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"


@pytest.fixture(
    scope="module",
    params=["project-crds", pytest.param("knative-crds", marks=pytest.mark.shared_conformance)],
)
def crd_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeApiServer]:
    """An API server of this module, with an audit log of every request (``audit.log``)."""
    base_dir = tmp_path_factory.mktemp(f"kube-{request.param}")
    (base_dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
    crds = (
        (kube.PROJECT_CRDS,)
        if request.param == "project-crds"
        else (shared_fixture_dir("knative-crds"), kube.PROJECT_CRDS / "lease-shim.yaml")
    )
    server = kube.launch(
        base_dir,
        crds=crds,
        apiserver_args=[
            f"--audit-policy-file={base_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={base_dir / 'audit.log'}",
        ],
    )
    try:
        yield server
    finally:
        server.stop()


def broker(name: str, broker_class: str) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name,
                     "annotations": {"eventing.knative.dev/broker.class": broker_class}},
    }  # fmt: skip


def configured_broker(name: str, config_map: str) -> dict[str, Any]:
    configured = broker(name, "cemesh")
    configured["spec"] = {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": config_map}}
    return configured


def trigger(name: str, broker_name: str, subscriber: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": broker_name, "filter": {"attributes": {"type": "com.example.order"}},
                 "subscriber": subscriber},
    }  # fmt: skip


def knative_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"image": "example.com/fn"}]}}},
    }


def service_ref(name: str) -> dict[str, Any]:
    return {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}}


class Cluster:
    """kubectl in one namespace of the test API server."""

    def __init__(self, server: KubeApiServer, namespace: str) -> None:
        self.server = server
        self.namespace = namespace

    def apply(self, *objects: dict[str, Any]) -> None:
        stream = "\n---\n".join(json.dumps(o) for o in objects)
        self.server.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=stream)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self.server.kubectl("get", kind, name, "-n", self.namespace, "-o", "json")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def wait(self, what: str, condition: str = "condition=Ready") -> None:
        self.server.kubectl("wait", f"--for={condition}", f"--timeout={WAIT}", what,
                            "-n", self.namespace)  # fmt: skip

    def set_address(self, service: str, url: str | None) -> None:
        """Play Knative Serving: the Service's status, Ready with an address or not yet."""
        status: dict[str, Any] = {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Ready", "status": "True" if url else "Unknown",
                 "reason": "" if url else "RevisionMissing",
                 "message": "" if url else "Configuration is waiting for a Revision.",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
        }  # fmt: skip
        if url:
            status["url"] = url
            status["address"] = {"url": url}
        self.server.kubectl(
            "patch", "services.serving.knative.dev", service, "-n", self.namespace,
            "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def cloudevent(event_id: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/test",
            "ce-type": "com.example.order", "content-type": "application/json"}  # fmt: skip


async def test_a_cemesh_class_broker_on_kubernetes_serves_its_triggers_and_leaves_others_alone(
    crd_server: KubeApiServer, tmp_path: Path
) -> None:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(crd_server, namespace)
    async with RecordingSubscriber() as by_uri, RecordingSubscriber() as by_service:
        cluster.apply(knative_service("fn"), knative_service("late"))
        cluster.set_address("fn", by_service.url)
        cluster.set_address("late", None)
        cluster.apply(
            broker("default", "cemesh"),
            broker("other", "MTChannelBasedBroker"),
            configured_broker("configured", "bus-config"),
            trigger("to-uri", "default", {"uri": by_uri.url}),
            trigger("to-service", "default", service_ref("fn")),
            trigger("to-late", "default", service_ref("late")),
            trigger(
                "to-core",
                "default",
                {"ref": {"apiVersion": "v1", "kind": "Service", "name": "web"}},
            ),
            trigger("of-other", "other", {"uri": by_uri.url}),
        )
        async with running_cemesh(
            tmp_path, control_plane="kubernetes", kubeconfig=str(crd_server.kubeconfig),
            kube_namespaces=[namespace], kube_lease_namespace=namespace,
        ) as cemesh:  # fmt: skip
            await asyncio.to_thread(cluster.wait, "broker/default")
            await asyncio.to_thread(cluster.wait, "trigger/to-uri")
            await asyncio.to_thread(cluster.wait, "trigger/to-service")
            made = cluster.get("brokers", "default")
            url = f"{cemesh.url}/{namespace}/default"
            assert made["status"]["address"]["url"] == url
            assert made["status"]["observedGeneration"] == made["metadata"]["generation"]
            assert FINALIZER in made["metadata"]["finalizers"]
            for name in ("Addressable", "IngressReady", "FilterReady", "Ready"):
                assert conditions(made)[name]["status"] == "True", name
            assert cluster.get("triggers", "to-uri")["status"]["subscriberUri"] == by_uri.url
            to_service = cluster.get("triggers", "to-service")
            assert to_service["status"]["subscriberUri"] == by_service.url
            for name in ("BrokerReady", "SubscriberResolved", "SubscriptionReady"):
                assert conditions(to_service)[name]["status"] == "True", name

            # The Service without an address: not Ready, saying why; Ready once it has one.
            late = conditions(cluster.get("triggers", "to-late"))
            assert late["Ready"]["status"] == "False"
            assert late["SubscriberResolved"]["reason"] == "DestinationNotReady"
            assert "waiting for a Revision" in late["SubscriberResolved"]["message"]

            # This API server serves no core Services: a Trigger naming one says so, alone.
            await eventually(lambda: "Ready" in conditions(cluster.get("triggers", "to-core")))
            core = conditions(cluster.get("triggers", "to-core"))
            assert core["SubscriberResolved"]["reason"] == "DestinationNotReadable"
            assert core["Ready"]["status"] == "False"

            # Nor ConfigMaps: a Broker whose spec.config names one is not Ready, saying why.
            await eventually(lambda: "Ready" in conditions(cluster.get("brokers", "configured")))
            configured = conditions(cluster.get("brokers", "configured"))
            assert configured["Ready"]["status"] == "False"
            assert configured["Ready"]["reason"] == "ConfigNotFound"

            # Brokers of another class, and their Triggers: untouched.
            for kind, name in (("brokers", "other"), ("triggers", "of-other")):
                untouched = cluster.get(kind, name)
                assert "status" not in untouched or not untouched["status"], untouched
                assert not untouched["metadata"].get("finalizers"), untouched

            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(url, headers=cloudevent("e-1"), content=b"{}")
                assert answer.status_code == 202, answer.text
            await by_uri.wait_for(1)
            await by_service.wait_for(1)

            cluster.set_address("late", by_service.url)
            await asyncio.to_thread(cluster.wait, "trigger/to-late")
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(url, headers=cloudevent("e-2"), content=b"{}")
                assert answer.status_code == 202, answer.text
            await by_uri.wait_for(2)
            await by_service.wait_for(3)  # e-2 through to-service and to-late
            assert sorted(r.headers["ce-id"] for r in by_uri.received) == ["e-1", "e-2"]
            assert sorted(r.headers["ce-id"] for r in by_service.received) == ["e-1", "e-2", "e-2"]

            # A spec change is picked up: a new filter, a new observedGeneration.
            crd_server.kubectl(
                "patch", "trigger", "to-service", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"filter": {"attributes": {"type": "com.example.x"}}}}),
            )  # fmt: skip
            await asyncio.to_thread(cluster.wait, "trigger/to-service",
                                    "jsonpath={.status.observedGeneration}=2")  # fmt: skip
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(url, headers=cloudevent("e-3"), content=b"{}")
                assert answer.status_code == 202, answer.text
            await by_uri.wait_for(3)
            await by_service.wait_for(4)  # e-3 through to-late only: to-service filters it out
            assert sorted(r.headers["ce-id"] for r in by_service.received) == [
                "e-1", "e-2", "e-2", "e-3"]  # fmt: skip

            # Deleting a Trigger: its consumer group goes, then its finalizer, then it.
            uid = cluster.get("triggers", "to-uri")["metadata"]["uid"]
            bus = cemesh.runtime.buses[bus_of_channel(cemesh.runtime.settings.default_channel)]
            topic = broker_topic(namespace, "default")
            assert trigger_group(uid) in bus._topics.get(topic, {})  # white-box: memory bus
            crd_server.kubectl("delete", "trigger", "to-uri", "-n", namespace, "--wait=false")
            await asyncio.to_thread(cluster.wait, "trigger/to-uri", "delete")
            assert trigger_group(uid) not in bus._topics.get(topic, {})

            # Switching the Broker to another class releases it and its Triggers.
            cluster.apply(broker("default", "MTChannelBasedBroker"))
            await eventually(lambda: not cluster.get("brokers", "default")["metadata"].get(
                "finalizers"))  # fmt: skip
            await eventually(lambda: not cluster.get("triggers", "to-service")["metadata"].get(
                "finalizers"))  # fmt: skip
            assert (namespace, "default") not in cemesh.runtime.ingress.snapshot.brokers

    # What cemesh asked of the API server is granted by deploy/kubernetes, and the roles grant
    # nothing it does not use (but Lease renewal, which this run may not have lasted to see).
    used = requests_by_cemesh(crd_server.base_dir / "audit.log")
    granted = granted_by_deploy()
    assert used <= granted, used - granted
    # Ready transitions are recorded as Events (this server answers 404: no core kinds).
    assert ("", "events", "create") in used
    # Not seen here: Knative's aggregated roles (not ours to trim), watches of the core kinds
    # this API server cannot list, and Lease renewal (this run may end before the first).
    unused = granted - used - ADDRESSABLES
    assert unused <= {("", "configmaps", "watch"), ("", "services", "watch"),
                      ("coordination.k8s.io", "leases", "update")}, unused  # fmt: skip


async def eventually(check: Callable[[], bool], timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Until ``check()`` holds (kubectl has no wait for an emptied list), within ``timeout``."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):  # noqa: ASYNC110 (kubectl has no event)
            await asyncio.sleep(0.2)  # a poll interval, bounded by the timeout


def requests_by_cemesh(audit_log: Path) -> set[tuple[str, str, str]]:
    """(API group, resource[/subresource], verb) of every request cemesh made (told apart by
    its user agent from kubectl's and the API server's own), from the audit log."""
    used = set()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if not event.get("userAgent", "").startswith(USER_AGENT) or not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


def granted_by_deploy() -> set[tuple[str, str, str]]:
    """What deploy/kubernetes grants cemesh's ServiceAccount: its ClusterRole, its Lease Role,
    and (through Knative's aggregated addressable roles) get/list/watch of Addressables."""
    from tests.integration.test_kubernetes_manifests import DEPLOY, grants, one, render

    base = render(DEPLOY / "base")
    return (
        grants(one(base, "ClusterRole", "cemesh-controller"))
        | grants(one(base, "Role", "cemesh-leader-election"))
        | ADDRESSABLES
    )


ADDRESSABLES = {("serving.knative.dev", "services", v) for v in ("get", "list", "watch")}


async def test_a_kubernetes_control_plane_without_a_usable_kubeconfig_says_which_file(
    tmp_path: Path,
) -> None:
    from broker import Settings
    from broker.controlplane.kube.policy import connect_control_plane
    from broker.core.errors import CemeshError
    from broker.core.spec import DeliveryPolicy
    from broker.server.features import CATALOG

    async def nothing(*_: Any) -> Any:
        return {}

    settings = Settings(control_plane="kubernetes", kubeconfig=str(tmp_path / "no-such-file"))
    with pytest.raises(CemeshError, match="no-such-file does not exist"):
        await connect_control_plane(
            settings, apply_snapshot=nothing, open_buses=nothing, retire_groups=None,
            default_delivery=DeliveryPolicy(), catalog=CATALOG,
        )  # fmt: skip


async def test_deleting_a_broker_retires_its_triggers_groups_then_releases_it(
    crd_server: KubeApiServer, tmp_path: Path
) -> None:
    """The Broker's finalizer goes only after its Triggers' consumer groups and its topic are
    gone from the bus; its Triggers stay, not Ready (BrokerReady False, BrokerDoesNotExist)
    rather than with their last status, and keep cemesh's finalizer so that deleting them is
    clean too."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(crd_server, namespace)
    async with RecordingSubscriber() as subscriber:
        cluster.apply(broker("default", "cemesh"), trigger("a", "default", {"uri": subscriber.url}),
                      trigger("b", "default", {"uri": subscriber.url}))  # fmt: skip
        async with running_cemesh(
            tmp_path, control_plane="kubernetes", kubeconfig=str(crd_server.kubeconfig),
            kube_namespaces=[namespace], kube_lease_namespace=namespace,
        ) as cemesh:  # fmt: skip
            for what in ("broker/default", "trigger/a", "trigger/b"):
                await asyncio.to_thread(cluster.wait, what)
            uids = [cluster.get("triggers", name)["metadata"]["uid"] for name in ("a", "b")]
            bus = cemesh.runtime.buses[bus_of_channel(cemesh.runtime.settings.default_channel)]
            topic = broker_topic(namespace, "default")
            for uid in uids:  # white-box: the memory bus's groups
                assert trigger_group(uid) in bus._topics.get(topic, {})

            crd_server.kubectl("delete", "broker", "default", "-n", namespace, "--wait=false")
            await asyncio.to_thread(cluster.wait, "broker/default", "delete")
            for uid in uids:
                assert trigger_group(uid) not in bus._topics.get(topic, {})
            assert topic not in bus._topics  # white-box: the memory bus's topics
            for name in ("a", "b"):
                await eventually(lambda n=name: conditions(cluster.get("triggers", n))
                                 .get("BrokerReady", {}).get("status") == "False")  # fmt: skip
                left = cluster.get("triggers", name)
                assert conditions(left)["BrokerReady"]["reason"] == "BrokerDoesNotExist"
                assert conditions(left)["Ready"]["status"] == "False"
                assert FINALIZER in left["metadata"]["finalizers"]
            crd_server.kubectl("delete", "trigger", "a", "-n", namespace, "--wait=false")
            await asyncio.to_thread(cluster.wait, "trigger/a", "delete")


async def _delete_broker_while_the_bus_is_down(
    crd_server: KubeApiServer, cluster: Cluster, plane: Any, bus_server: Any
) -> None:
    """Stop the bus's server, delete Broker "default", let several passes fail to remove what it
    left on the bus, and check it is still there, finalizer kept."""
    await asyncio.to_thread(bus_server.stop)
    crd_server.kubectl("delete", "broker", "default", "-n", cluster.namespace, "--wait=false")
    await eventually(lambda: bool(cluster.get("brokers", "default")["metadata"]
                                  .get("deletionTimestamp")))  # fmt: skip
    async with asyncio.timeout(60):
        for _ in range(3):
            await plane.sync()
    assert FINALIZER in cluster.get("brokers", "default")["metadata"]["finalizers"]


async def test_a_deleted_broker_keeps_its_finalizer_while_the_bus_refuses_to_drop_its_groups(
    crd_server: KubeApiServer,
    restartable_redis_server: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis is down when the Broker is deleted: its Triggers' groups cannot be deleted, so the
    Broker stays (finalizer kept, retried every pass); once Redis is back, the groups go and
    then the Broker does."""
    redis = restartable_redis_server
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(crd_server, namespace)
    async with RecordingSubscriber() as subscriber:
        cluster.apply(broker("default", "cemesh"), trigger("a", "default", {"uri": subscriber.url}))
        async with running_cemesh(
            tmp_path, control_plane="kubernetes", kubeconfig=str(crd_server.kubeconfig),
            kube_namespaces=[namespace], kube_lease_namespace=namespace, resync_interval=0.5,
            default_channel="RedisStreamChannel", redis_url=redis.url,
        ) as cemesh:  # fmt: skip
            await asyncio.to_thread(cluster.wait, "trigger/a")
            await _delete_broker_while_the_bus_is_down(
                crd_server, cluster, cemesh.runtime.kube_plane, redis
            )
            assert "consumer group not retired" in caplog.text
            await asyncio.to_thread(redis.start)
            await asyncio.to_thread(cluster.wait, "broker/default", "delete")
            assert FINALIZER in cluster.get("triggers", "a")["metadata"]["finalizers"]


async def test_a_deleted_broker_keeps_its_finalizer_until_its_topic_is_gone_from_the_server(
    crd_server: KubeApiServer,
    restartable_redis_server: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Broker without Triggers, whose topic holds an event (a Redis stream on the server):
    while Redis is down its deletion cannot delete the stream, so the Broker stays (finalizer
    kept, retried every pass); once Redis is back (with its data: an fsynced AOF), the stream
    is deleted on the server, then the finalizer goes and the Broker with it."""
    server = restartable_redis_server
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(crd_server, namespace)
    topic = broker_topic(namespace, "default")
    raw = redis.Redis.from_url(server.url)
    cluster.apply(broker("default", "cemesh"))
    try:
        async with running_cemesh(
            tmp_path, control_plane="kubernetes", kubeconfig=str(crd_server.kubeconfig),
            kube_namespaces=[namespace], kube_lease_namespace=namespace, resync_interval=0.5,
            default_channel="RedisStreamChannel", redis_url=server.url,
        ) as cemesh:  # fmt: skip
            await asyncio.to_thread(cluster.wait, "broker/default")
            url = cluster.get("brokers", "default")["status"]["address"]["url"]
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(url, headers=cloudevent("kept"), content=b"{}")
                assert answer.status_code == 202, answer.text
            assert await raw.exists(topic)
            await _delete_broker_while_the_bus_is_down(
                crd_server, cluster, cemesh.runtime.kube_plane, server
            )
            assert "topic not deleted" in caplog.text
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(cluster.wait, "broker/default", "delete")
            assert not await raw.exists(topic)
    finally:
        await raw.aclose()


async def test_a_broker_deleted_while_cemesh_was_down_loses_its_topic_on_the_bus_its_config_chose(
    crd_server: KubeApiServer, redis_server: Any, tmp_path: Path
) -> None:
    """The Broker's spec.config picks Redis Streams (the default channel is in-memory); it is
    deleted while no cemesh runs (the finalizer holds it). The next cemesh never served it, yet
    deletes its stream on Redis, the bus its status records, and only then releases it."""
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(crd_server, namespace)
    topic = broker_topic(namespace, "default")
    configured = broker("default", "cemesh")
    configured["spec"] = {"config": {"apiVersion": "messaging.cemesh.dev/v1alpha1",
                                     "kind": "RedisStreamChannel", "name": "redis"}}  # fmt: skip
    settings = {"control_plane": "kubernetes", "kubeconfig": str(crd_server.kubeconfig),
                "kube_namespaces": [namespace], "kube_lease_namespace": namespace,
                "resync_interval": 0.5, "redis_url": redis_server.url}  # fmt: skip
    raw = redis.Redis.from_url(redis_server.url)
    try:
        cluster.apply(configured)
        async with running_cemesh(tmp_path, **settings):
            await asyncio.to_thread(cluster.wait, "broker/default")
            url = cluster.get("brokers", "default")["status"]["address"]["url"]
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(url, headers=cloudevent("kept"), content=b"{}")
                assert answer.status_code == 202, answer.text
        assert await raw.exists(topic)
        crd_server.kubectl("delete", "broker", "default", "-n", namespace, "--wait=false")
        assert FINALIZER in cluster.get("brokers", "default")["metadata"]["finalizers"]
        async with running_cemesh(tmp_path, **settings):
            await asyncio.to_thread(cluster.wait, "broker/default", "delete")
        assert not await raw.exists(topic)
    finally:
        await raw.delete(topic)
        await raw.aclose()
