"""The test Kubernetes API server serves what cemesh's Kubernetes control plane will rely on.

Against a real API server (``tests/support/servers/kube_apiserver.py``) with the project's CRDs
(``tests/data/kube/crds``), and, in the extra pass (``shared_conformance``), with Knative's own
CRDs: Brokers and Triggers created with kubernetes_asyncio, status written through the status
subresource with a merge patch (``metadata.generation`` unchanged), LIST then WATCH from the
list's resourceVersion with bookmarks, 409 on a stale resourceVersion, 410 on a too-old one,
and ``kubectl get`` showing Knative's printer columns. The project's CRDs also enforce the
schema rules cemesh relies on (422 naming the field).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import shared_fixture_dir
from tests.support.servers import kube_apiserver as kube
from tests.support.servers.kube_apiserver import KubeApiServer

pytestmark = pytest.mark.timeout(90)

EVENTING = ("eventing.knative.dev", "v1")
SERVING = ("serving.knative.dev", "v1")
MERGE_PATCH = "application/merge-patch+json"
WAIT = 20.0  # seconds a watch event may take to arrive, under a loaded machine


@pytest.fixture(
    scope="module",
    params=["project-crds", pytest.param("knative-crds", marks=pytest.mark.shared_conformance)],
)
def crd_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeApiServer]:
    """The API server with the project's CRDs (shared by the session), or a second one with
    Knative's own CRDs from ../shared/fixtures/knative-crds (and the project's Lease shim)."""
    if request.param == "project-crds":
        yield request.getfixturevalue("kube_apiserver")
        return
    knative = shared_fixture_dir("knative-crds")
    server = kube.launch(
        tmp_path_factory.mktemp("kube-knative"),
        crds=(knative, kube.PROJECT_CRDS / "lease-shim.yaml"),
    )
    try:
        yield server
    finally:
        server.stop()


async def _client(server: KubeApiServer) -> client.ApiClient:
    return await config.new_client_from_config(config_file=str(server.kubeconfig))


@pytest.fixture
async def api(crd_server: KubeApiServer) -> AsyncIterator[client.ApiClient]:
    """A kubernetes_asyncio client as the admin of ``crd_server``."""
    api_client = await _client(crd_server)
    async with api_client:
        yield api_client


@pytest.fixture
async def project_api(kube_apiserver: KubeApiServer) -> AsyncIterator[client.ApiClient]:
    """A kubernetes_asyncio client of the server with the project's CRDs."""
    api_client = await _client(kube_apiserver)
    async with api_client:
        yield api_client


@pytest.fixture
def namespace() -> str:
    """A namespace of this test alone (the server has no Namespace objects: any name works)."""
    return f"t-{uuid.uuid4().hex[:10]}"


def broker(name: str, broker_class: str = "cemesh") -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {
            "name": name,
            "annotations": {"eventing.knative.dev/broker.class": broker_class},
        },
        "spec": {
            "delivery": {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"}
        },
    }


def trigger(name: str, broker_name: str, subscriber: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {
            "broker": broker_name,
            "filter": {"attributes": {"type": "dev.example.order.created"}},
            "subscriber": subscriber,
        },
    }


def ready_status(generation: int, url: str) -> dict[str, Any]:
    """A Broker status as cemesh will write it."""
    return {
        "status": {
            "observedGeneration": generation,
            "address": {"name": "http", "url": url},
            "addresses": [{"name": "http", "url": url}],
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                for kind in ("Addressable", "Ready")
            ],
        }
    }  # fmt: skip


async def create(api: client.ApiClient, group: tuple[str, str], plural: str, namespace: str,
                 body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    objects = client.CustomObjectsApi(api)
    created: dict[str, Any] = await objects.create_namespaced_custom_object(
        *group, namespace, plural, body
    )
    return created


async def test_brokers_and_triggers_are_created_and_read_back_with_kubernetes_asyncio(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    made = await create(api, EVENTING, "brokers", namespace, broker("default"))
    assert made["metadata"]["generation"] == 1
    await create(api, EVENTING, "triggers", namespace,
                 trigger("orders", "default", {"uri": "http://orders.example.svc/"}))  # fmt: skip
    listed = await objects.list_namespaced_custom_object(*EVENTING, namespace, "triggers")
    [only] = listed["items"]
    assert only["spec"]["broker"] == "default"
    assert only["spec"]["subscriber"] == {"uri": "http://orders.example.svc/"}
    read = await objects.get_namespaced_custom_object(*EVENTING, namespace, "brokers", "default")
    assert read["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "cemesh"
    assert read["spec"]["delivery"]["retry"] == 3


async def test_status_merge_patch_goes_through_the_status_subresource_and_keeps_the_generation(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    await create(api, EVENTING, "brokers", namespace, broker("default"))
    url = f"http://cemesh.cemesh-system.svc.cluster.local/{namespace}/default"
    patched = await objects.patch_namespaced_custom_object_status(
        *EVENTING, namespace, "brokers", "default", ready_status(1, url), _content_type=MERGE_PATCH
    )
    assert patched["metadata"]["generation"] == 1
    assert patched["status"]["address"]["url"] == url
    assert {c["type"]: c["status"] for c in patched["status"]["conditions"]}["Ready"] == "True"

    # A spec change bumps the generation; status sent to the main resource is dropped.
    spec_patch = {"spec": {"delivery": {"retry": 5}}, "status": {"address": {"url": "http://x/"}}}
    changed = await objects.patch_namespaced_custom_object(
        *EVENTING, namespace, "brokers", "default", spec_patch, _content_type=MERGE_PATCH
    )
    assert changed["metadata"]["generation"] == 2
    assert changed["status"]["address"]["url"] == url
    assert changed["status"]["observedGeneration"] == 1  # cemesh has not seen generation 2 yet


async def test_a_watch_from_the_lists_resource_version_sees_changes_and_bookmarks(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    await create(api, EVENTING, "brokers", namespace, broker("before"))
    listed = await objects.list_namespaced_custom_object(*EVENTING, namespace, "brokers")
    assert [b["metadata"]["name"] for b in listed["items"]] == ["before"]
    since = listed["metadata"]["resourceVersion"]

    seen: list[tuple[str, str]] = []
    watcher = watch.Watch()
    stream = watcher.stream(
        objects.list_namespaced_custom_object, *EVENTING, namespace, "brokers",
        resource_version=since, allow_watch_bookmarks=True, timeout_seconds=30,
    )  # fmt: skip

    async def changes() -> None:
        async for event in stream:
            name = event["object"]["metadata"].get("name", "")
            seen.append((event["type"], name))
            if event["type"] == "DELETED":
                return

    following = asyncio.create_task(changes())
    await create(api, EVENTING, "brokers", namespace, broker("after"))
    await objects.delete_namespaced_custom_object(*EVENTING, namespace, "brokers", "after")
    async with asyncio.timeout(WAIT):
        await following
    watcher.stop()
    assert [s for s in seen if s[0] != "BOOKMARK"] == [("ADDED", "after"), ("DELETED", "after")]


async def test_a_watch_list_ends_its_initial_events_with_a_bookmark(
    api: client.ApiClient, namespace: str
) -> None:
    """Bookmarks: the WatchList form (sendInitialEvents) marks the end of the initial state
    with a BOOKMARK carrying the resourceVersion to resume from."""
    for name in ("a", "b"):
        await create(api, EVENTING, "brokers", namespace, broker(name))
    path = f"/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers"
    query = [
        ("watch", "true"), ("sendInitialEvents", "true"), ("allowWatchBookmarks", "true"),
        ("resourceVersionMatch", "NotOlderThan"), ("resourceVersion", ""), ("timeoutSeconds", "20"),
    ]  # fmt: skip
    response = await api.call_api(
        path, "GET", query_params=query, auth_settings=["BearerToken"],
        _preload_content=False, _return_http_data_only=True,
    )  # fmt: skip
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while True:
            line = await response.content.readline()
            assert line, f"the watch ended before its bookmark: {events}"
            events.append(json.loads(line))
            if events[-1]["type"] == "BOOKMARK":
                break
    response.release()
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in events[:-1]) == [
        ("ADDED", "a"), ("ADDED", "b")
    ]  # fmt: skip
    bookmark = events[-1]["object"]["metadata"]
    assert bookmark["annotations"]["k8s.io/initial-events-end"] == "true"
    assert int(bookmark["resourceVersion"]) > 0


async def test_a_write_with_a_stale_resource_version_gets_409_conflict(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    stale = await create(api, EVENTING, "brokers", namespace, broker("default"))
    fresh = dict(stale, spec={"delivery": {"retry": 1}})
    await objects.replace_namespaced_custom_object(
        *EVENTING, namespace, "brokers", "default", fresh
    )
    stale["spec"] = {"delivery": {"retry": 9}}
    with pytest.raises(ApiException) as conflict:
        await objects.replace_namespaced_custom_object(
            *EVENTING, namespace, "brokers", "default", stale
        )
    assert conflict.value.status == 409
    # A status write carrying the stale resourceVersion conflicts the same way.
    stale_status = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]},
                    **ready_status(1, "http://x/")}  # fmt: skip
    with pytest.raises(ApiException) as status_conflict:
        await objects.patch_namespaced_custom_object_status(
            *EVENTING, namespace, "brokers", "default", stale_status, _content_type=MERGE_PATCH
        )
    assert status_conflict.value.status == 409


async def test_a_watch_from_a_too_old_resource_version_gets_410_gone(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    await create(api, EVENTING, "brokers", namespace, broker("default"))
    watcher = watch.Watch()
    stream = watcher.stream(
        objects.list_namespaced_custom_object, *EVENTING, namespace, "brokers",
        resource_version="1", timeout_seconds=10,
    )  # fmt: skip
    with pytest.raises(ApiException) as gone:
        async with asyncio.timeout(WAIT):
            async for _event in stream:
                pass
    watcher.stop()
    assert gone.value.status == 410


async def test_kubectl_get_shows_knatives_printer_columns(
    crd_server: KubeApiServer, api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    await create(api, EVENTING, "brokers", namespace, broker("default"))
    url = f"http://cemesh.cemesh-system.svc.cluster.local/{namespace}/default"
    await objects.patch_namespaced_custom_object_status(
        *EVENTING, namespace, "brokers", "default", ready_status(1, url), _content_type=MERGE_PATCH
    )
    await create(api, EVENTING, "triggers", namespace,
                 trigger("orders", "default", {"uri": "http://orders.example.svc/"}))  # fmt: skip
    brokers = crd_server.kubectl("get", "brokers", "-n", namespace).stdout.splitlines()
    assert brokers[0].split() == ["NAME", "URL", "AGE", "READY", "REASON"]
    row = brokers[1].split()
    assert (row[0], row[1], row[3]) == ("default", url, "True")
    triggers = crd_server.kubectl("get", "triggers", "-n", namespace).stdout.splitlines()
    assert triggers[0].split() == ["NAME", "BROKER", "SUBSCRIBER_URI", "AGE", "READY", "REASON"]
    assert triggers[1].split()[:2] == ["orders", "default"]


async def test_a_knative_service_is_an_addressable_with_status_address_url(
    crd_server: KubeApiServer, api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "orders"},
        "spec": {"template": {"spec": {"containers": [{"image": "example/orders"}]}}},
    }
    await create(api, SERVING, "services", namespace, service)
    url = f"http://orders.{namespace}.svc.cluster.local"
    status = {"status": {"url": url, "address": {"url": url},
                         "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
    patched = await objects.patch_namespaced_custom_object_status(
        *SERVING, namespace, "services", "orders", status, _content_type=MERGE_PATCH
    )
    assert patched["status"]["address"]["url"] == url
    ksvc = crd_server.kubectl("get", "ksvc", "orders", "-n", namespace).stdout.splitlines()
    assert ksvc[0].split()[:2] == ["NAME", "URL"]
    assert ksvc[1].split()[:2] == ["orders", url]


async def test_leases_are_served_for_leader_election_with_conflicts_on_stale_writes(
    api: client.ApiClient, namespace: str
) -> None:
    """The Lease shim: create, renew, and a stale renewal loses (409), as leader election needs."""
    leases = client.CoordinationV1Api(api)
    body = client.V1Lease(
        api_version="coordination.k8s.io/v1", kind="Lease",
        metadata=client.V1ObjectMeta(name="cemesh-controller"),
        spec=client.V1LeaseSpec(holder_identity="pod-a", lease_duration_seconds=15),
    )  # fmt: skip
    created = await leases.create_namespaced_lease(namespace, body)
    created.api_version, created.kind = "coordination.k8s.io/v1", "Lease"
    created.spec.holder_identity = "pod-b"
    await leases.replace_namespaced_lease("cemesh-controller", namespace, created)
    created.spec.holder_identity = "pod-c"  # still carries the first resourceVersion
    with pytest.raises(ApiException) as conflict:
        await leases.replace_namespaced_lease("cemesh-controller", namespace, created)
    assert conflict.value.status == 409
    current = await leases.read_namespaced_lease("cemesh-controller", namespace)
    assert current.spec.holder_identity == "pod-b"


# -- the schema rules of the project's CRDs ------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spec": {"subscriber": {}}}, "spec.subscriber"),
        ({"spec": {"broker": ""}}, "spec.broker"),
        ({"spec": {"delivery": {"backoffPolicy": "random"}}}, "spec.delivery.backoffPolicy"),
        ({"spec": {"delivery": {"retry": -1}}}, "spec.delivery.retry"),
    ],
)
async def test_an_invalid_trigger_gets_422_naming_the_field(
    project_api: client.ApiClient, namespace: str, change: dict[str, Any], field: str
) -> None:
    body = trigger("bad", "default", {"uri": "http://orders.example.svc/"})
    body["spec"].update(change["spec"])
    with pytest.raises(ApiException) as invalid:
        await create(project_api, EVENTING, "triggers", namespace, body)
    assert invalid.value.status == 422
    assert field in (invalid.value.body or "")


async def test_a_triggers_broker_cannot_change(
    project_api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(project_api)
    await create(project_api, EVENTING, "triggers", namespace,
                 trigger("orders", "default", {"uri": "http://orders.example.svc/"}))  # fmt: skip
    with pytest.raises(ApiException) as invalid:
        await objects.patch_namespaced_custom_object(
            *EVENTING, namespace, "triggers", "orders", {"spec": {"broker": "other"}},
            _content_type=MERGE_PATCH,
        )  # fmt: skip
    assert invalid.value.status == 422
    assert "spec.broker is immutable" in (invalid.value.body or "")


def test_the_fixture_fails_clearly_when_the_api_server_was_not_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "BIN_DIR", tmp_path / "bin")
    with pytest.raises(pytest.fail.Exception, match=r"make servers"):
        kube.find_binary("apiextensions-apiserver")


def test_the_build_is_skipped_when_the_cache_matches_the_recipe(tmp_path: Path) -> None:
    """A warm machine pays nothing: with the binaries and the recipe's hash in the cache,
    build.sh touches no network and exits at once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in ("apiextensions-apiserver", "etcd", "kubectl"):
        (bin_dir / binary).write_text("#!/bin/sh\n")
        (bin_dir / binary).chmod(0o755)
    (tmp_path / "manifest.txt").write_text("etcd-server=3.5\n")
    recipe = hashlib.sha256(kube.BUILD_SCRIPT.read_bytes()).hexdigest()
    (tmp_path / "recipe.sha256").write_text(recipe + "\n")
    env = {**os.environ, "KUBE_APISERVER_CACHE": str(tmp_path)}
    done = subprocess.run(
        ["sh", str(kube.BUILD_SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert f"cached in {bin_dir}" in done.stdout


def test_an_api_server_that_cannot_start_fails_the_test_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never a skip: the failure names the process, its exit status and its log's tail; the
    etcd started before it is stopped again."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in ("etcd", "kubectl"):
        (bin_dir / binary).symlink_to(kube.find_binary(binary))
    broken = bin_dir / "apiextensions-apiserver"
    broken.write_text("#!/bin/sh\necho 'unknown flag: --etcd-servers' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(kube, "BIN_DIR", bin_dir)
    with pytest.raises(pytest.fail.Exception) as failed:
        kube.launch(tmp_path / "server")
    message = str(failed.value)
    assert "did not start" in message
    assert "exited with status 3" in message
    assert "unknown flag: --etcd-servers" in message
