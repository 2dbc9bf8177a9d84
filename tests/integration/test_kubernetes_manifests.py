"""deploy/kubernetes renders with ``kubectl kustomize`` and every object is valid Kubernetes.

Each object of the base and of the ``default-broker-class`` overlay is validated (strict:
unknown fields are errors) against the Kubernetes schemas that the PyPI package
``kubernetes-validate`` ships (offline). Then the properties cemesh's install promises: the
ClusterRole grants exactly the verbs the control plane needs, Addressables are read through
Knative's aggregated ``duck.knative.dev/addressable`` roles, the Deployment runs two hardened
replicas with probes, and selectors of the Service and PodDisruptionBudget match its pods.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.servers import kube_apiserver as kube

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The newest Kubernetes version whose schemas kubernetes-validate ships.
KUBERNETES_VERSION = kubernetes_validate.latest_version()


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize FOLDER``, parsed; fails the test with kubectl's error."""
    result = subprocess.run(
        [str(kube.find_kubectl()), "kustomize", str(folder)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {folder} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(DEPLOY / "base")


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("folder", ["base", "default-broker-class", "."])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(folder: str) -> None:
    objects = render(DEPLOY / folder)
    assert objects
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")
    assert errors == []


def test_the_validator_rejects_a_broken_deployment(base: list[dict[str, Any]]) -> None:
    """The validation is not vacuous: a wrong type and an unknown field are both caught."""
    deployment = one(base, "Deployment", "cemesh")
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)
    unknown_field = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown_field, KUBERNETES_VERSION, strict=True)


def test_the_base_installs_each_part_in_the_cemesh_system_namespace(
    base: list[dict[str, Any]],
) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds == sorted([
        ("Namespace", "cemesh-system"),
        ("ServiceAccount", "cemesh"),
        ("ClusterRole", "cemesh-controller"),
        ("ClusterRole", "cemesh-addressable-resolver"),
        ("ClusterRoleBinding", "cemesh-controller"),
        ("ClusterRoleBinding", "cemesh-addressable-resolver"),
        ("Role", "cemesh-leader-election"),
        ("RoleBinding", "cemesh-leader-election"),
        ("Deployment", "cemesh"),
        ("Service", "cemesh"),
        ("PodDisruptionBudget", "cemesh"),
    ])  # fmt: skip
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in base:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == "cemesh-system", obj["kind"]


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_cluster_role_grants_exactly_what_the_control_plane_needs(
    base: list[dict[str, Any]],
) -> None:
    role = one(base, "ClusterRole", "cemesh-controller")
    eventing = "eventing.knative.dev"
    expected = {
        *((eventing, r, v) for r in ("brokers", "triggers")
          for v in ("get", "list", "watch", "patch")),
        (eventing, "brokers/status", "patch"),
        (eventing, "triggers/status", "patch"),
        *(("", r, v) for r in ("configmaps", "services") for v in ("list", "watch")),
        ("", "events", "create"),  # Ready transitions (broker/controlplane/kube/events.py)
    }  # fmt: skip
    assert grants(role) == expected
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    leases = one(base, "Role", "cemesh-leader-election")
    assert grants(leases) == {
        ("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")
    }


def test_addressables_are_read_through_knatives_aggregated_roles(
    base: list[dict[str, Any]],
) -> None:
    resolver = one(base, "ClusterRole", "cemesh-addressable-resolver")
    assert resolver["aggregationRule"]["clusterRoleSelectors"] == [
        {"matchLabels": {"duck.knative.dev/addressable": "true"}}
    ]
    for binding_name in ("cemesh-controller", "cemesh-addressable-resolver"):
        binding = one(base, "ClusterRoleBinding", binding_name)
        assert binding["roleRef"]["name"] == binding_name
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "cemesh", "namespace": "cemesh-system"}
        ]


def test_the_deployment_runs_two_hardened_replicas_with_probes(
    base: list[dict[str, Any]],
) -> None:
    deployment = one(base, "Deployment", "cemesh")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cemesh"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CEMESH_CONTROL_PLANE"] == "kubernetes"
    assert env["CEMESH_BROKER_CLASS"] == "cemesh"


def test_the_service_and_disruption_budget_select_the_deployments_pods(
    base: list[dict[str, Any]],
) -> None:
    pod_labels = one(base, "Deployment", "cemesh")["spec"]["template"]["metadata"]["labels"]
    service = one(base, "Service", "cemesh")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    budget = one(base, "PodDisruptionBudget", "cemesh")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] == 1


def test_the_default_broker_class_overlay_names_cemesh_in_knatives_defaults() -> None:
    objects = render(DEPLOY / "default-broker-class")
    defaults = one(objects, "ConfigMap", "config-br-defaults")
    assert defaults["metadata"]["namespace"] == "knative-eventing"
    config = yaml.safe_load(defaults["data"]["default-br-config"])
    assert config["clusterDefault"]["brokerClass"] == "cemesh"
    assert one(objects, "Deployment", "cemesh")["metadata"]["namespace"] == "cemesh-system"
