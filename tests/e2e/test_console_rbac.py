"""The console's API endpoints answer with the caller's RBAC: the topology shows what a user may
list, and a test event needs ``create`` on ``brokers/events`` (``edit``), which ``view`` lacks."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.cemesh import running_cemesh

TOPOLOGY = "/apis/cemesh.dev/v1alpha1/namespaces/{ns}/topology"
EVENTS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default/events"
EVENT = {"specversion": "1.0", "id": "r1", "source": "/rbac", "type": "t"}


def write_access(tmp_path: Path) -> dict[str, Path]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        yaml.safe_dump(
            [
                {"name": "viewer", "token": "view-token-0123456789"},
                {"name": "editor", "token": "edit-token-0123456789"},
            ]
        )
    )
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": "default"},
                    "roleRef": {"kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "User", "name": name}],
                }
                for name, role in (("viewer", "view"), ("editor", "edit"))
            ]
        )
    )
    return {"api_tokens_file": tokens, "rbac_file": rbac}


async def test_viewers_see_the_topology_and_may_not_send_editors_may(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, **write_access(tmp_path)) as mesh:
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        async with (
            mesh.client_with("view-token-0123456789") as viewer,
            mesh.client_with("edit-token-0123456789") as editor,
        ):
            seen = await viewer.get(TOPOLOGY.format(ns="default"))
            assert seen.status_code == 200
            assert [n["name"] for n in seen.json()["nodes"]] == ["default"]
            assert seen.json()["hidden"] == []
            other = await viewer.get(TOPOLOGY.format(ns="elsewhere"))
            assert other.status_code == 403 and "viewer" in other.json()["message"]

            refused = await viewer.post(EVENTS, json=EVENT)
            assert refused.status_code == 403
            assert '"brokers/events"' in refused.json()["message"]
            assert (await editor.post(EVENTS, json=EVENT)).status_code == 202

            missing = await editor.post(
                EVENTS.replace("/default/events", "/nope/events"), json=EVENT
            )
            assert missing.status_code == 404
            yaml_body = await editor.post(
                EVENTS, content=b"id: 1", headers={"content-type": "application/yaml"}
            )
            assert yaml_body.status_code == 415
            broken = await editor.post(EVENTS, json={**EVENT, "specversion": "0.1"})
            assert broken.status_code == 400, broken.text


async def test_the_console_can_be_switched_off(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, console=False) as mesh:
        assert (await mesh.client.get("/console/")).status_code == 404
