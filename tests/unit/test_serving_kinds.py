"""Admission of serving.knative.dev/v1 Service and Revision (issue 5): errors name the field."""

from __future__ import annotations

import copy
import sys
from typing import Any

import pytest

from broker.core.errors import InvalidResource
from broker.server.features import admit, type_for_name

COMMAND = [sys.executable, "fn.py"]


def service(
    traffic: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    name: str = "fn",
    **template_spec: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {"containers": [{"image": "example/fn", "command": COMMAND}], **template_spec},
        }
    }
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }


def rejected(obj: dict[str, Any], old: dict[str, Any] | None = None) -> InvalidResource:
    with pytest.raises(InvalidResource) as caught:
        admit(obj, old=old)
    return caught.value


def test_service_defaults_traffic_concurrency_and_timeout_as_knative() -> None:
    admitted = admit(service())
    assert admitted["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    template_spec = admitted["spec"]["template"]["spec"]
    assert template_spec["containerConcurrency"] == 0
    assert template_spec["timeoutSeconds"] == 300


def test_service_and_revision_kinds_are_served_with_knative_names() -> None:
    assert type_for_name("ksvc").kind == "Service"
    assert type_for_name("revisions").kind == "Revision"
    assert type_for_name("services.serving.knative.dev").plural == "services"


def test_traffic_percents_must_sum_to_100() -> None:
    error = rejected(service([{"revisionName": "fn-00001", "percent": 80}]))
    assert error.field == "spec.traffic"
    assert "sum to 80, want 100" in str(error)


def test_traffic_row_defaults_latest_revision_when_no_revision_is_named() -> None:
    admitted = admit(service([{"revisionName": "fn-00001", "percent": 90}, {"percent": 10}]))
    assert admitted["spec"]["traffic"] == [
        {"revisionName": "fn-00001", "percent": 90, "latestRevision": False},
        {"percent": 10, "latestRevision": True},
    ]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"revisionName": "fn-00001", "latestRevision": True, "percent": 100}, "revisionName"),
        ({"latestRevision": False, "percent": 100}, "revisionName"),
        ({"latestRevision": True, "percent": 101}, "percent"),
        ({"latestRevision": True, "percent": -1}, "percent"),
        ({"latestRevision": True, "percent": 100, "tag": "Not_A_Label"}, "tag"),
        ({"configurationName": "fn", "percent": 100}, "configurationName"),
    ],
)
def test_bad_traffic_rows_name_the_field(row: dict[str, Any], field: str) -> None:
    assert rejected(service([row])).field == f"spec.traffic[0].{field}"


def test_traffic_tags_are_unique() -> None:
    error = rejected(
        service(
            [
                {"latestRevision": True, "percent": 50, "tag": "a"},
                {"revisionName": "fn-00001", "percent": 50, "tag": "a"},
            ]
        )
    )
    assert error.field == "spec.traffic[1].tag"


def test_exactly_one_container_with_command_or_image() -> None:
    obj = service()
    obj["spec"]["template"]["spec"]["containers"] = []
    assert rejected(obj).field == "spec.template.spec.containers"
    obj["spec"]["template"]["spec"]["containers"] = [{"env": []}]
    assert rejected(obj).field == "spec.template.spec.containers[0]"
    obj["spec"]["template"]["spec"]["containers"] = [{"image": "example/fn"}]
    admit(obj)  # image alone: valid Knative YAML (the kubernetes backend runs it)


def test_container_fields_are_checked() -> None:
    obj = service()
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert rejected(obj).field == "spec.template.spec.containers[0].env[0].valueFrom"
    container["env"] = [{"name": "A", "value": 1}]
    assert rejected(obj).field == "spec.template.spec.containers[0].env[0].value"
    container["env"] = [{"name": "A", "value": "1"}]
    container["ports"] = [{"containerPort": 70000}]
    assert rejected(obj).field == "spec.template.spec.containers[0].ports[0].containerPort"
    container["ports"] = [{"containerPort": 8080}]
    container["args"] = "--flag"
    assert rejected(obj).field == "spec.template.spec.containers[0].args"


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("containerConcurrency", 1001, "spec.template.spec.containerConcurrency"),
        ("containerConcurrency", -1, "spec.template.spec.containerConcurrency"),
        ("timeoutSeconds", 0, "spec.template.spec.timeoutSeconds"),
        ("timeoutSeconds", 601, "spec.template.spec.timeoutSeconds"),
    ],
)
def test_concurrency_and_timeout_bounds(key: str, value: int, field: str) -> None:
    assert rejected(service(**{key: value})).field == field


def test_autoscaling_annotations_are_checked_naming_the_annotation() -> None:
    error = rejected(service(annotations={"autoscaling.knative.dev/min-scale": "many"}))
    assert error.field == "spec.template.metadata.annotations[autoscaling.knative.dev/min-scale]"
    # initial-scale 0 depends on config-autoscaler, which reconcile checks: admitted here.
    admit(service(annotations={"autoscaling.knative.dev/initial-scale": "0"}))


def test_a_named_template_must_change_its_name_when_it_changes() -> None:
    old = admit(service())
    old["spec"]["template"]["metadata"]["name"] = "fn-blue"
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["containerConcurrency"] = 5
    assert rejected(new, old).field == "spec.template.metadata.name"
    new["spec"]["template"]["metadata"]["name"] = "fn-green"
    admit(new, old=old)
    new["spec"]["template"]["metadata"]["name"] = "other-green"
    assert rejected(new, old).field == "spec.template.metadata.name"


def test_revisions_are_made_by_services_only() -> None:
    revision = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {"name": "fn-00001"},
        "spec": {"containers": [{"command": COMMAND}]},
    }
    assert rejected(revision).field == "metadata.ownerReferences"
