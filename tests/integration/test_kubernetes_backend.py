"""The ``kubernetes`` serving backend against a fake kube-apiserver (issue 5, backends).

The backend scales an existing Deployment through its ``scale`` subresource and routes to the
ready addresses of its Endpoints, kept in a cache by list + watch. The fake
(``tests/support/k8s_scale_server.py``) runs real HTTP servers as the Deployment's Pods, so a
replica the backend reports ready is GET here for real.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kubernetes_asyncio.client import AppsV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import new_client_from_config

from broker.core.errors import CemeshError, Conflict, NotFound
from broker.features.serving.backend import Backend, Replica, RevisionRef
from broker.features.serving.kubernetes import (
    DEPLOYMENT_ANNOTATION,
    SERVICE_ANNOTATION,
    KubernetesBackend,
    Target,
    ready_replicas,
    target_for,
    translate_error,
)
from tests.support.k8s_scale_server import FakeScaleApiServer

REV = RevisionRef("default", "fn", "fn-00001")
TEMPLATE: dict = {"containers": [{"image": "example.com/fn"}]}


@pytest.fixture
async def api() -> AsyncIterator[FakeScaleApiServer]:
    async with FakeScaleApiServer() as server:
        yield server


@pytest.fixture
async def backend(api: FakeScaleApiServer, tmp_path: Path) -> AsyncIterator[KubernetesBackend]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    backend = KubernetesBackend(str(kubeconfig), retry_backoff=0.02, max_backoff=0.1)
    yield backend
    await backend.stop()


async def wait_count(
    backend: KubernetesBackend, revision: RevisionRef, count: int
) -> list[Replica]:
    """Wait (on the backend's change notifications, 5 s at most) until ``count`` are ready."""
    if not await backend.wait_replicas(revision, count, timeout=5.0):
        raise AssertionError(f"{len(backend.ready(revision))} ready, expected {count}")
    return backend.ready(revision)


def scale_patches(api: FakeScaleApiServer) -> list[dict]:
    return [
        json.loads(r.body)
        for r in api.requests
        if r.method == "PATCH" and r.path.endswith("/scale")
    ]


def test_kubernetes_backend_satisfies_the_backend_protocol() -> None:
    backend: Backend = KubernetesBackend("/nonexistent")
    assert backend.ready(REV) == []


async def test_scale_from_zero_to_two_routes_to_two_ready_endpoints(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    """Issue 5 (kubernetes backend): ensure(2) patches the Scale to 2 and ready() lists the two
    Pods once their Endpoints are ready; each replica URL answers over real HTTP."""
    deployment = api.add_deployment("default", "fn")
    deployment.ready_gate.clear()  # the Pods start but do not turn ready yet

    await backend.ensure(REV, TEMPLATE, 2)

    assert deployment.scale()["spec"]["replicas"] == 2
    [patch_request] = [r for r in api.requests if r.method == "PATCH"]
    assert patch_request.content_type == "application/merge-patch+json"
    assert json.loads(patch_request.body) == {"spec": {"replicas": 2}}
    assert not await backend.wait_ready(REV, timeout=0.05)  # Pods not ready: nothing to route to
    assert backend.ready(REV) == []

    deployment.ready_gate.set()
    assert await backend.wait_ready(REV, timeout=5)
    replicas = await wait_count(backend, REV, 2)
    assert {r.id for r in replicas} == {"fn-0", "fn-1"}
    async with httpx.AsyncClient() as http:
        for replica in replicas:
            response = await http.get(replica.url + "/")
            assert response.status_code == 200
            assert response.text == replica.id  # the Pod behind that endpoint answered


async def test_ensure_patches_only_when_the_spec_replicas_differ(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    api.add_deployment("default", "fn", replicas=1)
    await backend.ensure(REV, TEMPLATE, 1)
    await backend.ensure(REV, TEMPLATE, 1)
    assert scale_patches(api) == []
    assert sum(r.method == "GET" and r.path.endswith("/scale") for r in api.requests) == 2
    await backend.ensure(REV, TEMPLATE, 3)
    assert scale_patches(api) == [{"spec": {"replicas": 3}}]


async def test_scale_to_zero_empties_ready(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    deployment = api.add_deployment("default", "fn")
    await backend.ensure(REV, TEMPLATE, 2)
    await wait_count(backend, REV, 2)

    await backend.ensure(REV, TEMPLATE, 0)

    assert deployment.scale()["spec"]["replicas"] == 0
    assert await wait_count(backend, REV, 0) == []
    await deployment.wait_settled()
    assert deployment.pods == []


async def test_annotations_name_the_deployment_and_the_service(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    deployment = api.add_deployment("default", "fn-v2", service="fn-v2-svc")
    template = {
        **TEMPLATE,
        "metadata": {
            "annotations": {DEPLOYMENT_ANNOTATION: "fn-v2", SERVICE_ANNOTATION: "fn-v2-svc"}
        },
    }
    await backend.ensure(REV, template, 1)
    assert deployment.replicas == 1
    [replica] = await wait_count(backend, REV, 1)
    assert replica.id == "fn-v2-0"


async def test_missing_deployment_is_a_clear_not_found(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    with pytest.raises(NotFound) as caught:
        await backend.ensure(REV, TEMPLATE, 1)
    assert "Deployment default/fn not found" in caught.value.message
    assert DEPLOYMENT_ANNOTATION in caught.value.message
    assert not caught.value.retryable
    assert caught.value.__cause__ is not None  # the ApiException, kept
    # The backend still works once the Deployment exists.
    api.add_deployment("default", "fn")
    await backend.ensure(REV, TEMPLATE, 1)
    await wait_count(backend, REV, 1)


async def test_apiserver_down_is_a_retryable_error_and_the_backend_recovers(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    api.add_deployment("default", "fn")
    await backend.ensure(REV, TEMPLATE, 1)
    [known] = await wait_count(backend, REV, 1)

    await api.stop()
    with pytest.raises(CemeshError) as caught:
        await backend.ensure(REV, TEMPLATE, 2)
    assert caught.value.retryable
    assert "kube-apiserver unreachable" in caught.value.message
    assert caught.value.__cause__ is not None
    # The last known endpoints keep serving: the Pods outlive an apiserver outage.
    assert backend.ready(REV) == [known]

    await api.start()
    await backend.ensure(REV, TEMPLATE, 2)  # the same port again: the watch resumes on its own
    replicas = await wait_count(backend, REV, 2)
    assert known in replicas


async def test_wrong_credentials_are_a_terminal_error(
    api: FakeScaleApiServer, tmp_path: Path
) -> None:
    api.add_deployment("default", "fn")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="wrong")
    backend = KubernetesBackend(str(kubeconfig))
    try:
        with pytest.raises(CemeshError) as caught:
            await backend.ensure(REV, TEMPLATE, 1)
        assert "401" in caught.value.message
        assert not caught.value.retryable
    finally:
        await backend.stop()


async def test_missing_kubeconfig_is_a_terminal_error(tmp_path: Path) -> None:
    backend = KubernetesBackend(str(tmp_path / "absent"))
    try:
        with pytest.raises(CemeshError) as caught:
            await backend.ensure(REV, TEMPLATE, 1)
        assert not caught.value.retryable
    finally:
        await backend.stop()


async def test_watch_relists_after_410_gone_and_follows_deletes(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    """A watch that meets 410 Expired lists again and keeps following; a deleted Endpoints
    object empties the cache."""
    api.add_deployment("default", "fn")
    await backend.ensure(REV, TEMPLATE, 1)
    await wait_count(backend, REV, 1)

    def lists() -> int:
        return sum(r.path.endswith("/endpoints") and "watch" not in r.query for r in api.requests)

    listed = lists()
    api.compact()
    api.expire_watches()
    subset = {
        "addresses": [{"ip": "::1"}, {"ip": "10.0.0.7", "targetRef": {"name": "fn-x"}}],
        "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}],
    }
    api.set_endpoints("default", "fn", [subset])
    assert await wait_count(backend, REV, 2) == [
        Replica("[::1]:8080", "http://[::1]:8080"),
        Replica("fn-x", "http://10.0.0.7:8080"),
    ]
    assert lists() > listed
    api.delete_endpoints("default", "fn")
    assert await wait_count(backend, REV, 0) == []


async def test_forget_and_stop_leave_the_deployment_alone(
    api: FakeScaleApiServer, backend: KubernetesBackend
) -> None:
    deployment = api.add_deployment("default", "fn")
    await backend.ensure(REV, TEMPLATE, 1)
    await wait_count(backend, REV, 1)
    await backend.forget(REV)
    assert backend.ready(REV) == []
    await backend.stop()
    await backend.stop()  # idempotent
    assert deployment.replicas == 1


async def test_fake_apiserver_speaks_the_clients_patch_and_replace_of_scale(
    api: FakeScaleApiServer, tmp_path: Path
) -> None:
    """The fake takes what kubernetes_asyncio sends by default (strategic merge for a dict body)
    and a PUT of the Scale; a stale resourceVersion is a 409, translated to a retryable Conflict."""
    deployment = api.add_deployment("default", "fn")
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    async with await new_client_from_config(str(kubeconfig)) as client:
        apps = AppsV1Api(client)
        await apps.patch_namespaced_deployment_scale("fn", "default", {"spec": {"replicas": 1}})
        assert api.requests[-1].content_type == "application/strategic-merge-patch+json"
        scale = await apps.read_namespaced_deployment_scale("fn", "default")
        assert scale.spec.replicas == 1 and scale.metadata.resource_version
        scale.spec.replicas = 2
        await apps.replace_namespaced_deployment_scale("fn", "default", scale)
        assert deployment.replicas == 2
        with pytest.raises(ApiException) as caught:
            await apps.replace_namespaced_deployment_scale("fn", "default", scale)  # stale now
    error = translate_error(caught.value, "scaling Deployment default/fn")
    assert isinstance(error, Conflict) and error.retryable
    assert "the object has been modified" in error.message
    await deployment.wait_settled()


# --- pure mapping -------------------------------------------------------------------------------


def test_target_defaults_to_the_service_name_and_namespace() -> None:
    assert target_for(REV, {}) == Target("default", "fn", "fn")
    flat = {"annotations": {DEPLOYMENT_ANNOTATION: "d", "cemesh.dev/deployment-namespace": "x"}}
    assert target_for(REV, flat) == Target("x", "d", "d")


def test_ready_replicas_takes_ready_addresses_and_the_http_port() -> None:
    endpoints = {
        "subsets": [
            {
                "addresses": [
                    {"ip": "10.0.0.1", "targetRef": {"kind": "Pod", "name": "a"}},
                    {"ip": "10.0.0.2"},
                ],
                "notReadyAddresses": [{"ip": "10.0.0.3", "targetRef": {"name": "c"}}],
                "ports": [{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}],
            },
            {"addresses": [{"ip": "10.0.0.4"}]},  # no ports: nothing to route to
        ]
    }
    assert ready_replicas(endpoints) == [
        Replica("a", "http://10.0.0.1:8080"),
        Replica("10.0.0.2:8080", "http://10.0.0.2:8080"),
    ]
    assert ready_replicas(None) == []
    assert ready_replicas({"metadata": {"name": "fn"}}) == []


async def test_wait_ready_times_out_for_an_unknown_revision() -> None:
    backend = KubernetesBackend("/nonexistent")
    assert not await backend.wait_ready(REV, timeout=0.01)
