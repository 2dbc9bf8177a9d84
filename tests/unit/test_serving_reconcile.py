"""Reconcile of Services and Revisions (issue 5): immutable Revisions named as Knative names
them, traffic resolved to Ready Revisions, status (url, address, latest revisions, traffic,
replicas), a Service as a Trigger's subscriber (K159), the invoker's runtime specs."""

from __future__ import annotations

import copy
import sys
from typing import Any

import pytest

from broker.controlplane.reconcile import Reconciled
from broker.core.errors import InvalidResource
from broker.core.spec import DeliveryPolicy
from broker.features.serving.specs import RevisionSpec, RouteSpec, revision_key, route_key
from broker.features.serving.traffic import TrafficTarget
from broker.server.features import admit, reconcile

BASE = "http://127.0.0.1:8080"
NOW = "2030-01-01T00:00:00.000000Z"
COMMAND = [sys.executable, "fn.py"]


def service_obj(
    concurrency: int = 0, traffic: list[dict[str, Any]] | None = None, **annotations: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "fn", "namespace": "default"},
        "spec": {
            "template": {
                "metadata": {"annotations": dict(annotations)},
                "spec": {
                    "containers": [{"command": COMMAND}],
                    "containerConcurrency": concurrency,
                },
            }
        },
    }
    if traffic is not None:
        body["spec"]["traffic"] = traffic
    obj = admit(body)
    obj["metadata"].update(uid="svc-uid", generation=1)
    return obj


def run(objects: list[dict[str, Any]]) -> Reconciled:
    return reconcile(objects, base_url=BASE, default_delivery=DeliveryPolicy(), now=NOW)


def store_children(result: Reconciled, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects after the controller wrote the wanted children (and statuses) back."""
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for child in result.children:
        key = (child["kind"], child["metadata"]["name"])
        if key not in by_key:
            stored = admit(copy.deepcopy(child))
            stored["metadata"].update(uid=f"uid-{key[1]}", generation=1)
            by_key[key] = stored
    wanted = {(c["kind"], c["metadata"]["name"]) for c in result.children}
    kept = [
        o
        for key, o in by_key.items()
        if key[0] != "Revision" or key in wanted  # the controller deletes unwanted children
    ]
    for obj in kept:
        if obj["metadata"]["uid"] in result.statuses:
            obj["status"] = result.statuses[obj["metadata"]["uid"]]
    return kept


def listened(objects: list[dict[str, Any]], *names: str) -> None:
    """What the invoker writes once a replica of each Revision (all when none named) listens."""
    for obj in objects:
        if obj["kind"] == "Revision" and (not names or obj["metadata"]["name"] in names):
            obj.setdefault("status", {})["replicaReadyOnce"] = True


def settle(
    objects: list[dict[str, Any]], *, serving: bool = True
) -> tuple[Reconciled, list[dict[str, Any]]]:
    """Reconcile until settled; ``serving``: every new Revision's replica listens."""
    result = run(objects)
    for _ in range(4):
        objects = store_children(result, objects)
        if serving:
            listened(objects)
        result = run(objects)
    return result, objects


def status_of(result: Reconciled, uid: str) -> dict[str, Any]:
    return result.statuses[uid]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_new_service_creates_its_first_revision_named_as_knative() -> None:
    svc = service_obj()
    result = run([svc])
    [revision] = result.children
    assert revision["kind"] == "Revision"
    assert revision["metadata"]["name"] == "fn-00001"
    assert revision["metadata"]["labels"] == {
        "serving.knative.dev/service": "fn",
        "serving.knative.dev/configuration": "fn",
        "serving.knative.dev/configurationGeneration": "1",
    }
    assert revision["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"
    assert revision["spec"] == svc["spec"]["template"]["spec"]
    status = status_of(result, "svc-uid")
    assert condition(status, "Ready")["status"] == "Unknown"
    assert status["latestCreatedRevisionName"] == "fn-00001"


def test_a_settled_service_is_ready_with_url_address_traffic_and_runtime_specs() -> None:
    result, _ = settle([service_obj(concurrency=1)])
    status = status_of(result, "svc-uid")
    assert condition(status, "Ready")["status"] == "True", status
    url = f"{BASE}/services/default/fn"
    assert status["url"] == url
    assert status["address"] == {"name": "http", "url": url}
    assert status["latestCreatedRevisionName"] == status["latestReadyRevisionName"] == "fn-00001"
    assert status["traffic"] == [
        {"revisionName": "fn-00001", "latestRevision": True, "percent": 100}
    ]
    invoker = result.snapshot.components["invoker"]
    route = invoker[route_key("default", "fn")]
    assert route == RouteSpec("default", "fn", url, (TrafficTarget("fn-00001", 100, None, True),))
    revision = invoker[revision_key("default", "fn-00001")]
    assert isinstance(revision, RevisionSpec)
    assert revision.container_concurrency == 1
    assert revision.timeout == 300
    assert revision.template["containers"] == [{"command": COMMAND}]
    assert revision.policy.target == 1  # containerConcurrency is the target (Knative)


def test_every_template_change_makes_a_new_revision_and_traffic_keeps_the_old_one() -> None:
    result, objects = settle([service_obj()])
    svc = next(o for o in objects if o["kind"] == "Service")
    changed = service_obj(
        traffic=[
            {"revisionName": "fn-00001", "percent": 90},
            {"latestRevision": True, "percent": 10, "tag": "canary"},
        ],
        **{"autoscaling.knative.dev/max-scale": "3"},
    )
    changed["status"] = svc["status"]
    objects = [o if o["kind"] != "Service" else changed for o in objects]
    result, objects = settle(objects)
    names = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Revision")
    assert names == ["fn-00001", "fn-00002"]
    second = next(o for o in objects if o["metadata"]["name"] == "fn-00002")
    assert second["metadata"]["annotations"] == {"autoscaling.knative.dev/max-scale": "3"}
    status = status_of(result, "svc-uid")
    assert status["latestReadyRevisionName"] == "fn-00002"
    assert status["traffic"] == [
        {"revisionName": "fn-00001", "latestRevision": False, "percent": 90},
        {
            "revisionName": "fn-00002",
            "latestRevision": True,
            "percent": 10,
            "tag": "canary",
            "url": f"{BASE}/services/default/fn/tags/canary",
        },
    ]
    # The same template again makes nothing new.
    again, _ = settle(objects)
    assert sorted(c["metadata"]["name"] for c in again.children) == names


def test_old_revisions_go_once_no_traffic_names_them_and_history_is_full() -> None:
    objects = [service_obj()]
    for scale in range(1, 7):
        svc = next(o for o in objects if o["kind"] == "Service")
        changed = service_obj(**{"autoscaling.knative.dev/max-scale": str(scale)})
        changed["status"] = svc.get("status")
        objects = [o if o["kind"] != "Service" else changed for o in objects]
        _, objects = settle(objects)
    names = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Revision")
    assert names == ["fn-00003", "fn-00004", "fn-00005", "fn-00006"]  # latest + 3 before it


def test_a_service_is_a_trigger_subscriber_and_resolves_to_its_url() -> None:
    """K159: a Destination ref to a Knative Service resolves to the Service's address."""
    broker = admit(
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "b"}}
    )
    broker["metadata"].update(uid="b1", generation=1)
    trigger = admit(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t"},
            "spec": {
                "broker": "b",
                "subscriber": {
                    "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"}
                },
            },
        }
    )
    trigger["metadata"].update(uid="t1", generation=1)
    result, _ = settle([broker, trigger, service_obj()])
    assert result.snapshot.triggers["t1"].subscriber_uri == f"{BASE}/services/default/fn"


def test_the_invokers_runtime_status_is_kept_and_summed_up_on_the_service() -> None:
    result, objects = settle([service_obj()])
    revision = next(o for o in objects if o["kind"] == "Revision")
    revision["status"] = {
        **revision["status"],
        "actualReplicas": 2,
        "desiredReplicas": 3,
        "autoscaler": {"reason": "panic", "panic": True},
    }
    result = run(objects)
    revision_status = status_of(result, revision["metadata"]["uid"])
    assert revision_status["actualReplicas"] == 2
    assert revision_status["autoscaler"] == {"reason": "panic", "panic": True}
    assert status_of(result, "svc-uid")["autoscaler"] == [
        {"revisionName": "fn-00001", "actualReplicas": 2, "desiredReplicas": 3, "reason": "panic"}
    ]


def test_a_runtime_error_makes_the_revision_and_service_not_ready_naming_the_field() -> None:
    result, objects = settle([service_obj()])
    revision = next(o for o in objects if o["kind"] == "Revision")
    message = "spec.template.spec.containers[0].command: is required by the process backend"
    revision["status"] = {
        **revision["status"],
        "runtimeError": {"reason": "ContainerMissingCommand", "message": message},
    }
    result = run(objects)
    ready = condition(status_of(result, revision["metadata"]["uid"]), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ContainerMissingCommand")
    service_ready = condition(status_of(result, "svc-uid"), "Ready")
    assert service_ready["status"] == "False"
    assert "containers[0].command" in service_ready["message"]
    # Still handed to the invoker, which can clear the error (another backend).
    assert revision_key("default", "fn-00001") in result.snapshot.components["invoker"]


def test_config_autoscaler_decides_whether_initial_scale_zero_is_allowed() -> None:
    svc = service_obj(**{"autoscaling.knative.dev/initial-scale": "0"})
    result, objects = settle([svc])
    revision = next(o for o in objects if o["kind"] == "Revision")
    ready = condition(status_of(result, revision["metadata"]["uid"]), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidAutoscaling")
    config = admit(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
            "data": {"allow-zero-initial-scale": "true", "stable-window": "6s"},
        }
    )
    config["metadata"].update(uid="cm", generation=1)
    result = run([*objects, config])
    spec = result.snapshot.components["invoker"][revision_key("default", "fn-00001")]
    assert spec.policy.initial_scale == 0
    assert spec.policy.stable_window == 6


def test_traffic_naming_a_missing_revision_is_not_ready_and_the_route_answers_503() -> None:
    result, _ = settle([service_obj(traffic=[{"revisionName": "fn-00042", "percent": 100}])])
    status = status_of(result, "svc-uid")
    routes = condition(status, "RoutesReady")
    assert (routes["status"], routes["reason"]) == ("False", "RevisionMissing")
    route = result.snapshot.components["invoker"][route_key("default", "fn")]
    assert route.targets == ()  # nothing served before: the invoker answers 503 with the reason
    assert "fn-00042" in route.why
    assert "address" not in status


def revision_status(result: Reconciled, objects: list[dict[str, Any]], name: str) -> dict:
    revision = next(o for o in objects if o["metadata"]["name"] == name)
    return status_of(result, revision["metadata"]["uid"])


def test_a_revision_is_not_ready_before_a_replica_listened() -> None:
    result, objects = settle([service_obj()], serving=False)
    revision = revision_status(result, objects, "fn-00001")
    ready = condition(revision, "Ready")
    assert (ready["status"], ready["reason"]) == ("Unknown", "Deploying")
    status = status_of(result, "svc-uid")
    assert condition(status, "Ready")["status"] == "Unknown"
    assert "address" not in status and "latestReadyRevisionName" not in status
    # Handed to the invoker all the same: it is what starts the replica.
    assert revision_key("default", "fn-00001") in result.snapshot.components["invoker"]
    listened(objects)
    result = run(objects)
    assert condition(revision_status(result, objects, "fn-00001"), "Ready")["status"] == "True"
    assert condition(status_of(result, "svc-uid"), "Ready")["status"] == "True"


def test_initial_scale_zero_needs_no_replica_to_be_ready() -> None:
    config = admit(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
            "data": {"allow-zero-initial-scale": "true"},
        }
    )
    config["metadata"].update(uid="cm", generation=1)
    svc = service_obj(**{"autoscaling.knative.dev/initial-scale": "0"})
    result, _ = settle([config, svc], serving=False)
    assert condition(status_of(result, "svc-uid"), "Ready")["status"] == "True"


def fail(objects: list[dict[str, Any]], name: str, reason: str, message: str) -> None:
    revision = next(o for o in objects if o["metadata"]["name"] == name)
    revision.setdefault("status", {})["runtimeError"] = {"reason": reason, "message": message}


def test_a_broken_rollout_leaves_traffic_on_the_last_good_revision() -> None:
    result, objects = settle([service_obj()])
    svc = next(o for o in objects if o["kind"] == "Service")
    changed = service_obj(**{"note": "v2"})
    svc["spec"] = changed["spec"]
    svc["metadata"]["generation"] = 2
    result, objects = settle(objects, serving=False)
    fail(objects, "fn-00002", "ExitCode", "exited with code 3; last output: boom")
    result = run(objects)
    status = status_of(result, "svc-uid")
    assert status["latestCreatedRevisionName"] == "fn-00002"
    assert status["latestReadyRevisionName"] == "fn-00001"
    assert status["traffic"] == [
        {"revisionName": "fn-00001", "latestRevision": True, "percent": 100}
    ]
    configurations = condition(status, "ConfigurationsReady")
    assert (configurations["status"], configurations["reason"]) == ("False", "ExitCode")
    assert "code 3" in configurations["message"] and "boom" in configurations["message"]
    assert condition(status, "RoutesReady")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    assert status["address"]["url"].endswith("/services/default/fn")  # it still serves
    route = result.snapshot.components["invoker"][route_key("default", "fn")]
    assert [t.revision for t in route.targets] == ["fn-00001"]


def test_an_unknown_revision_name_keeps_the_last_good_route_and_its_tags() -> None:
    traffic = [{"latestRevision": True, "percent": 100, "tag": "current"}]
    result, objects = settle([service_obj(traffic=traffic)])
    svc = next(o for o in objects if o["kind"] == "Service")
    svc["spec"]["traffic"] = [
        {"latestRevision": True, "percent": 50, "tag": "current"},
        {"revisionName": "fn-09999", "percent": 50, "tag": "next"},
    ]
    result = run(objects)
    status = status_of(result, "svc-uid")
    routes = condition(status, "RoutesReady")
    assert (routes["status"], routes["reason"]) == ("False", "RevisionMissing")
    assert "fn-09999" in routes["message"]
    assert condition(status, "Ready")["status"] == "False"
    route = result.snapshot.components["invoker"][route_key("default", "fn")]
    assert route.targets == (TrafficTarget("fn-00001", 100, "current", True),)
    assert status["traffic"][0]["tag"] == "current" and "address" in status


def test_a_ready_revision_without_traffic_is_not_routed_and_one_with_traffic_is() -> None:
    result, objects = settle([service_obj()])
    spec = result.snapshot.components["invoker"][revision_key("default", "fn-00001")]
    assert spec.routed and spec.proven
    svc = next(o for o in objects if o["kind"] == "Service")
    svc["spec"] = service_obj(**{"note": "v2"})["spec"]
    result, objects = settle(objects)
    invoker = result.snapshot.components["invoker"]
    assert not invoker[revision_key("default", "fn-00001")].routed
    assert invoker[revision_key("default", "fn-00002")].routed


def test_a_progress_deadline_annotation_is_read_and_a_bad_one_names_the_annotation() -> None:
    result, _ = settle([service_obj(**{"serving.knative.dev/progress-deadline": "5s"})])
    spec = result.snapshot.components["invoker"][revision_key("default", "fn-00001")]
    assert spec.progress_deadline == 5
    with pytest.raises(InvalidResource) as caught:
        service_obj(**{"serving.knative.dev/progress-deadline": "soon"})
    assert "serving.knative.dev/progress-deadline" in caught.value.field
    with pytest.raises(InvalidResource):
        service_obj(**{"serving.knative.dev/progress-deadline": "0s"})
