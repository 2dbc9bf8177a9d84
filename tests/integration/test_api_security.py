"""The management API's defences on a real cemesh: tokens, RBAC, processes, browsers, limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from broker.auth.processes import APPLIED_BY
from broker.auth.static_tokens import hash_token
from tests.support.cemesh import RunningCemesh, running_cemesh

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
SECRETS = "/api/v1/namespaces/default/secrets"
CONFIG_MAPS = "/api/v1/namespaces/default/configmaps"
CONTAINER_SOURCES = "/apis/sources.knative.dev/v1/namespaces/default/containersources"
SERVICES = "/apis/serving.knative.dev/v1/namespaces/default/services"

ALICE, BOB, CAROL, DAVE = (
    "alice-token-0123456789",
    "bob-token-0123456789",
    "carol-token-0123456789",
    "dave-token-0123456789",
)


def broker(name: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name},
    }


def container_source(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ContainerSource",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"containers": [{"image": "unused", "command": command}]}},
            "sink": {"uri": "http://127.0.0.1:9/"},
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"image": "x", "command": ["python3", "-m", "http.server"]}]
                }
            }
        },
    }


def secret(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"password": "hunter2"},
    }


def write_security_files(tmp_path: Path) -> dict[str, Path]:
    """alice: view in default; bob: edit in default; carol: admin via group ops; dave: nothing."""
    tokens = [
        {"name": "alice", "sha256": hash_token(ALICE)},
        {"name": "bob", "token": BOB},
        {"name": "carol", "groups": ["ops"], "sha256": hash_token(CAROL)},
        {"name": "dave", "sha256": hash_token(DAVE)},
    ]
    bindings = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "alice-view", "namespace": "default"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "User", "name": "alice"}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "bob-edit", "namespace": "default"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "edit",
            },
            "subjects": [{"kind": "User", "name": "bob"}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "ops-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "admin",
            },
            "subjects": [{"kind": "Group", "name": "ops"}],
        },
    ]
    tokens_file, rbac_file = tmp_path / "tokens.yaml", tmp_path / "rbac.yaml"
    tokens_file.write_text(yaml.safe_dump(tokens))
    rbac_file.write_text(yaml.safe_dump_all(bindings))
    return {"api_tokens_file": tokens_file, "rbac_file": rbac_file}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[RunningCemesh]:
    async with running_cemesh(tmp_path, **write_security_files(tmp_path)) as running:
        yield running


async def as_user(
    mesh: RunningCemesh, token: str | None, method: str, path: str, **kw: Any
) -> httpx.Response:
    async with mesh.client_with(token) as client:
        return await client.request(method, path, **kw)


async def stored_names(mesh: RunningCemesh, path: str) -> list[str]:
    listed = await mesh.client.get(path)
    assert listed.status_code == 200, listed.text
    return [item["metadata"]["name"] for item in listed.json()["items"]]


# --- authentication -------------------------------------------------------------------------


async def test_a_request_without_a_token_gets_401_with_a_status_body_and_www_authenticate(
    mesh: RunningCemesh,
) -> None:
    response = await as_user(mesh, None, "POST", BROKERS, json=broker())
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Unauthorized", 401)
    assert "bearer token" in body["message"]
    assert await stored_names(mesh, BROKERS) == []


async def test_a_wrong_token_gets_401_and_changes_nothing(mesh: RunningCemesh) -> None:
    for token in ("wrong", mesh.token + "x", hash_token(ALICE)):
        response = await as_user(mesh, token, "POST", BROKERS, json=broker())
        assert response.status_code == 401, token
        assert "not valid" in response.json()["message"]
    assert (
        await as_user(mesh, "x", "GET", BROKERS, headers={"Authorization": "Basic eDp5"})
    ).status_code == 401
    assert await stored_names(mesh, BROKERS) == []


async def test_health_and_readiness_stay_open_and_metrics_is_open_by_default(
    mesh: RunningCemesh,
) -> None:
    async with httpx.AsyncClient(base_url=mesh.url, headers={"Host": "probe.internal"}) as probe:
        assert (await probe.get("/healthz")).status_code == 200
        assert (await probe.get("/readyz")).status_code == 200
    assert (await as_user(mesh, None, "GET", "/metrics")).status_code == 200


async def test_metrics_needs_a_token_when_metrics_auth_is_set(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, metrics_auth=True) as mesh:
        assert (await as_user(mesh, None, "GET", "/metrics")).status_code == 401
        assert (await mesh.client.get("/metrics")).status_code == 200


async def test_the_local_token_file_is_made_private_and_its_subject_is_admin(
    mesh: RunningCemesh, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() == mesh.token and len(mesh.token) >= 40
    created = await mesh.client.post(SECRETS, json=secret("s"))
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["annotations"][APPLIED_BY] == "cemesh:local-admin"


# --- authorization --------------------------------------------------------------------------


async def test_view_may_read_but_creating_is_403_naming_verb_resource_and_namespace(
    mesh: RunningCemesh,
) -> None:
    assert (await as_user(mesh, ALICE, "GET", BROKERS)).status_code == 200
    response = await as_user(mesh, ALICE, "POST", TRIGGERS, json={"kind": "Trigger"})
    assert response.status_code == 403
    body = response.json()
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'User "alice" cannot create resource "triggers" in API group "eventing.knative.dev" '
        'in the namespace "default"'
    )
    assert (await as_user(mesh, ALICE, "DELETE", f"{BROKERS}/x")).status_code == 403


async def test_a_namespaced_binding_grants_nothing_elsewhere_nor_across_namespaces(
    mesh: RunningCemesh,
) -> None:
    other = await as_user(mesh, BOB, "GET", BROKERS.replace("/default/", "/other/"))
    assert other.status_code == 403
    assert 'in the namespace "other"' in other.json()["message"]
    everywhere = await as_user(mesh, BOB, "GET", "/apis/eventing.knative.dev/v1/brokers")
    assert everywhere.status_code == 403
    assert "at the cluster scope" in everywhere.json()["message"]
    carol = await as_user(mesh, CAROL, "GET", "/apis/eventing.knative.dev/v1/brokers")
    assert carol.status_code == 200  # a cluster-wide (group) binding lists every namespace


async def test_an_authenticated_subject_without_a_binding_may_do_nothing(
    mesh: RunningCemesh,
) -> None:
    response = await as_user(mesh, DAVE, "GET", BROKERS)
    assert response.status_code == 403
    assert 'User "dave" cannot list resource "brokers"' in response.json()["message"]


async def test_edit_may_write_but_is_refused_secrets_data(mesh: RunningCemesh) -> None:
    created = await as_user(mesh, BOB, "POST", BROKERS, json=broker())
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["annotations"][APPLIED_BY] == "bob"
    assert (await mesh.client.post(SECRETS, json=secret("s"))).status_code == 201
    for method, path, kw in (
        ("GET", SECRETS, {}),
        ("GET", f"{SECRETS}/s", {}),
        ("POST", SECRETS, {"json": secret("t")}),
        ("DELETE", f"{SECRETS}/s", {}),
    ):
        response = await as_user(mesh, BOB, method, path, **kw)
        assert response.status_code == 403, (method, path)
        assert 'resource "secrets" in API group ""' in response.json()["message"]
        assert "hunter2" not in response.text and "aHVudGVyMg" not in response.text
    assert await stored_names(mesh, SECRETS) == ["s"]
    viewed = await as_user(mesh, ALICE, "GET", f"{SECRETS}/s")
    assert viewed.status_code == 403 and "aHVudGVyMg" not in viewed.text


async def test_the_applier_annotation_is_set_by_the_server_never_taken_from_the_body(
    mesh: RunningCemesh,
) -> None:
    forged = broker("forged")
    forged["metadata"]["annotations"] = {APPLIED_BY: "carol"}
    created = await as_user(mesh, BOB, "POST", BROKERS, json=forged)
    assert created.json()["metadata"]["annotations"][APPLIED_BY] == "bob"
    replaced = dict(created.json())
    replaced["metadata"]["annotations"][APPLIED_BY] = "someone-else"
    updated = await mesh.client.put(f"{BROKERS}/forged", json=replaced)
    assert updated.status_code == 200, updated.text
    assert updated.json()["metadata"]["annotations"][APPLIED_BY] == "cemesh:local-admin"


# --- processes ------------------------------------------------------------------------------


async def test_edit_is_refused_a_container_source_and_a_process_service(
    mesh: RunningCemesh,
) -> None:
    response = await as_user(
        mesh, BOB, "POST", CONTAINER_SOURCES, json=container_source("cs", ["sh", "-c", "id"])
    )
    assert response.status_code == 403
    message = response.json()["message"]
    assert 'User "bob" cannot create resource "processes" in API group "cemesh.dev"' in message
    assert "['sh', '-c', 'id']" in message
    response = await as_user(mesh, BOB, "POST", SERVICES, json=service("fn"))
    assert response.status_code == 403
    assert 'resource "processes"' in response.json()["message"]
    assert await stored_names(mesh, CONTAINER_SOURCES) == []
    assert await stored_names(mesh, SERVICES) == []


async def test_edit_may_not_change_an_admins_container_source_either(
    mesh: RunningCemesh,
) -> None:
    made = await as_user(
        mesh, CAROL, "POST", CONTAINER_SOURCES, json=container_source("cs", ["sleep", "30"])
    )
    assert made.status_code == 201, made.text
    changed = made.json()
    changed["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "id"]
    response = await as_user(mesh, BOB, "PUT", f"{CONTAINER_SOURCES}/cs", json=changed)
    assert response.status_code == 403
    assert 'cannot update resource "processes"' in response.json()["message"]


async def test_admin_may_create_a_container_source_and_its_start_is_logged_with_the_applier(
    mesh: RunningCemesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await as_user(
        mesh,
        CAROL,
        "POST",
        CONTAINER_SOURCES,
        json=container_source("ticker", ["python3", "-c", "import time; time.sleep(30)"]),
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["annotations"][APPLIED_BY] == "carol"

    def started() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "applied_by", None) == "carol"]

    async with asyncio.timeout(20):
        while not started():  # noqa: ASYNC110 - log records have no event to wait on
            await asyncio.sleep(0.05)
    [record] = started()[:1]
    assert "containersource/default/ticker" in record.getMessage()
    assert "applied by carol" in record.getMessage()
    assert record.command == ["python3", "-c", "import time; time.sleep(30)"]  # type: ignore[attr-defined]


async def test_allow_processes_false_refuses_even_the_admin(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, allow_processes=False) as mesh:
        response = await mesh.client.post(
            CONTAINER_SOURCES, json=container_source("cs", ["sh", "-c", "id"])
        )
        assert response.status_code == 403
        assert "CEMESH_ALLOW_PROCESSES=false" in response.json()["message"]
        response = await mesh.client.post(SERVICES, json=service("fn"))
        assert response.status_code == 403
        assert await stored_names(mesh, CONTAINER_SOURCES) == []
        image_only = container_source("img", [])  # runs nothing: not a process
        assert (await mesh.client.post(CONTAINER_SOURCES, json=image_only)).status_code == 201


async def test_a_service_on_the_kubernetes_backend_needs_no_process_permission(
    tmp_path: Path,
) -> None:
    files = write_security_files(tmp_path)
    async with running_cemesh(tmp_path, invoker_backend="kubernetes", **files) as mesh:
        response = await as_user(mesh, BOB, "POST", SERVICES, json=service("fn"))
        assert response.status_code == 201, response.text


# --- browser defences, limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
async def test_bodies_that_are_not_json_or_yaml_get_415_before_anything_happens(
    mesh: RunningCemesh, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    content = b'{"apiVersion":"eventing.knative.dev/v1","kind":"Broker","metadata":{"name":"b"}}'
    response = await mesh.client.post(BROKERS, content=content, headers=headers)
    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"
    assert "application/json" in response.json()["message"]
    # Without a token too: 415 comes first, and nothing is stored either way.
    assert (
        await as_user(mesh, None, "POST", BROKERS, content=content, headers=headers)
    ).status_code == 415
    assert await stored_names(mesh, BROKERS) == []


async def test_yaml_and_json_bodies_are_accepted(mesh: RunningCemesh) -> None:
    yaml_body = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: y\n"
    response = await mesh.client.post(
        BROKERS, content=yaml_body, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\n"
    refused = await mesh.client.post(
        BROKERS, content=bomb, headers={"Content-Type": "application/yaml"}
    )
    assert refused.status_code == 400 and "aliases" in refused.json()["message"]
    assert await stored_names(mesh, BROKERS) == ["y"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.2", "[::2]:1"])
async def test_a_foreign_host_gets_421_on_the_api_and_the_component_routes(
    mesh: RunningCemesh, host: str
) -> None:
    for method, path in (("POST", BROKERS), ("GET", BROKERS), ("POST", "/services/default/fn")):
        response = await mesh.client.request(method, path, json=broker(), headers={"Host": host})
        assert response.status_code == 421, (method, path)
        assert response.json()["reason"] == "MisdirectedRequest"
    assert await stored_names(mesh, BROKERS) == []


@pytest.mark.parametrize("host", ["localhost:1234", "127.0.0.1", "[::1]:8080", "LOCALHOST."])
async def test_loopback_host_names_are_answered(mesh: RunningCemesh, host: str) -> None:
    assert (await mesh.client.get(BROKERS, headers={"Host": host})).status_code == 200


async def test_allowed_hosts_and_public_url_add_names(tmp_path: Path) -> None:
    async with running_cemesh(
        tmp_path, allowed_hosts="mesh.internal, other.internal", public_url="http://pub.example:80"
    ) as mesh:
        for host in ("mesh.internal", "other.internal:9", "pub.example"):
            assert (await mesh.client.get(BROKERS, headers={"Host": host})).status_code == 200
        assert (await mesh.client.get(BROKERS, headers={"Host": "x.internal"})).status_code == 421


async def test_the_ingress_answers_any_host_as_knative_does(mesh: RunningCemesh) -> None:
    assert (await mesh.client.post(BROKERS, json=broker())).status_code == 201
    response = await mesh.client.post(
        "/default/default",
        headers={
            "Host": "events.example",
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/s",
            "ce-type": "t",
        },
    )
    assert response.status_code == 202


async def test_a_body_over_the_limit_gets_413_by_content_length_and_while_streaming(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, max_api_bytes=64 * 1024) as mesh:
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "big"},
            "data": {"k": "x" * (100 * 1024)},
        }
        response = await mesh.client.post(CONFIG_MAPS, json=config_map)
        assert response.status_code == 413
        assert "CEMESH_MAX_API_BYTES" in response.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            yield b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"k":"'
            for _ in range(200):
                yield b"x" * 1024
            yield b'"}}'

        streamed = await mesh.client.post(
            CONFIG_MAPS, content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["reason"] == "RequestEntityTooLarge"
        assert await stored_names(mesh, CONFIG_MAPS) == []


async def test_the_default_limit_is_kubernetes_object_limit(mesh: RunningCemesh) -> None:
    assert mesh.app.runtime.settings.max_api_bytes == 1536 * 1024


async def test_no_cors_headers_by_default_not_even_on_a_preflight(mesh: RunningCemesh) -> None:
    origin = {"Origin": "http://attacker.example"}
    responses = [
        await mesh.client.get(BROKERS, headers=origin),
        await mesh.client.options(
            BROKERS,
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        ),
        await as_user(mesh, None, "GET", BROKERS, headers=origin),
    ]
    for response in responses:
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


async def test_cors_origins_when_configured_allow_only_those_origins(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, cors_origins="http://console.example") as mesh:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        allowed = await mesh.client.options(
            BROKERS, headers={"Origin": "http://console.example", **preflight}
        )
        assert allowed.headers["access-control-allow-origin"] == "http://console.example"
        other = await mesh.client.options(
            BROKERS, headers={"Origin": "http://attacker.example", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers


async def test_patch_takes_a_json_merge_patch_and_is_authorized_as_patch(
    mesh: RunningCemesh,
) -> None:
    assert (await mesh.client.post(BROKERS, json=broker())).status_code == 201
    merge = {"Content-Type": "application/merge-patch+json"}
    patch = b'{"metadata": {"labels": {"team": "a"}}}'
    patched = await as_user(mesh, BOB, "PATCH", f"{BROKERS}/default", content=patch, headers=merge)
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"]["labels"]["team"] == "a"
    assert patched.json()["metadata"]["annotations"][APPLIED_BY] == "bob"
    viewer = await as_user(mesh, ALICE, "PATCH", f"{BROKERS}/default", content=patch, headers=merge)
    assert viewer.status_code == 403 and "cannot patch resource" in viewer.json()["message"]
    as_json = await mesh.client.patch(
        f"{BROKERS}/default", content=patch, headers={"Content-Type": "application/json"}
    )
    assert as_json.status_code == 415


async def test_edit_cannot_patch_a_command_into_a_container_source(mesh: RunningCemesh) -> None:
    made = await as_user(
        mesh, CAROL, "POST", CONTAINER_SOURCES, json=container_source("cs", ["sleep", "30"])
    )
    assert made.status_code == 201, made.text
    patch = {"spec": {"template": {"spec": {"containers": [{"command": ["sh", "-c", "id"]}]}}}}
    response = await as_user(
        mesh,
        BOB,
        "PATCH",
        f"{CONTAINER_SOURCES}/cs",
        json=patch,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 403
    assert 'cannot patch resource "processes"' in response.json()["message"]


async def test_a_websocket_to_the_api_is_refused_before_it_is_accepted(
    mesh: RunningCemesh,
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    url = mesh.url.replace("http://", "ws://") + BROKERS
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers={"Authorization": f"Bearer {mesh.token}"}):
            pass
    assert refused.value.response.status_code == 403


async def test_oidc_bearer_tokens_authenticate_on_the_api_and_rbac_binds_their_sub_and_groups(
    tmp_path: Path,
) -> None:
    from tests.support.oidc_issuer import TestIssuer

    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "erin-views", "namespace": "default"},
                    "roleRef": {"kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "User", "name": "erin"}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "editors"},
                    "roleRef": {"kind": "ClusterRole", "name": "edit"},
                    "subjects": [{"kind": "Group", "name": "editors"}],
                },
            ]
        )
    )
    async with (
        TestIssuer() as issuer,
        running_cemesh(
            tmp_path,
            oidc_issuer=issuer.issuer,
            oidc_jwks_url=issuer.jwks_url,
            oidc_audience="cemesh-api",
            rbac_file=rbac,
        ) as mesh,
    ):
        viewer = issuer.token("erin", audience="cemesh-api")
        editor = issuer.token("frank", audience="cemesh-api", extra={"groups": ["editors"]})
        expired = issuer.token(
            "frank", audience="cemesh-api", expires_in=-600, extra={"groups": ["editors"]}
        )
        elsewhere = issuer.token("frank", audience="another-api", extra={"groups": ["editors"]})
        async with mesh.client_with(viewer) as client:
            assert (await client.get(BROKERS)).status_code == 200
            refused = await client.post(BROKERS, json=broker("by-erin"))
            assert refused.status_code == 403, refused.text
            assert 'User "erin" cannot create resource "brokers"' in refused.json()["message"]
        async with mesh.client_with(editor) as client:
            created = await client.post(BROKERS, json=broker("by-frank"))
            assert created.status_code == 201, created.text
            assert created.json()["metadata"]["annotations"][APPLIED_BY] == "frank"
        for token in (expired, elsewhere):
            async with mesh.client_with(token) as client:
                answer = await client.post(BROKERS, json=broker("never"))
                assert answer.status_code == 401, answer.text
        names = [b["metadata"]["name"] for b in (await mesh.client.get(BROKERS)).json()["items"]]
        assert names == ["by-frank"]
