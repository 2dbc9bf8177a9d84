"""One resolution rule for every kind that sends to a destination (issue 11): a subscriber, step,
branch or sink that is a Knative Service resolves when the Service serves, says
``DestinationNotReady`` (with the Service's own reason) when it does not, and
``DestinationNotFound`` when it does not exist, whichever kind asks and whatever the order in
which kinds are reconciled."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import pytest

from broker.controlplane.reconcile import Reconciled
from broker.core.spec import DeliveryPolicy
from broker.server.features import admit, reconcile

BASE = "http://127.0.0.1:8080"
DEFAULT = DeliveryPolicy(retry=1, backoff_delay=0.1, timeout=5.0, retry_after_max=5.0)
TARGET = {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"}}


def obj(api_version: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    admitted = admit(
        {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, "spec": spec}
    )
    admitted["metadata"].update(uid=f"uid-{kind}-{name}", generation=1)
    return admitted


def fn_service() -> dict[str, Any]:
    return obj(
        "serving.knative.dev/v1",
        "Service",
        "fn",
        {"template": {"spec": {"containers": [{"command": [sys.executable, "fn.py"]}]}}},
    )


BROKER = ("eventing.knative.dev/v1", "Broker", "default", {})


# kind -> (objects that ask, the one whose resolution is checked)
CONSUMERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "Trigger": lambda: [
        obj(*BROKER),
        obj(
            "eventing.knative.dev/v1",
            "Trigger",
            "asker",
            {"broker": "default", "subscriber": copy.deepcopy(TARGET)},
        ),
    ],
    "Subscription": lambda: [
        obj("messaging.knative.dev/v1", "InMemoryChannel", "ch", {}),
        obj(
            "messaging.knative.dev/v1",
            "Subscription",
            "asker",
            {
                "channel": {
                    "apiVersion": "messaging.knative.dev/v1",
                    "kind": "InMemoryChannel",
                    "name": "ch",
                },
                "subscriber": copy.deepcopy(TARGET),
            },
        ),
    ],
    "Sequence": lambda: [
        obj("flows.knative.dev/v1", "Sequence", "asker", {"steps": [copy.deepcopy(TARGET)]})
    ],
    "Parallel": lambda: [
        obj(
            "flows.knative.dev/v1",
            "Parallel",
            "asker",
            {"branches": [{"subscriber": copy.deepcopy(TARGET)}]},
        )
    ],
    "PingSource": lambda: [
        obj("sources.knative.dev/v1", "PingSource", "asker", {"sink": copy.deepcopy(TARGET)})
    ],
    "ContainerSource": lambda: [
        obj(
            "sources.knative.dev/v1",
            "ContainerSource",
            "asker",
            {
                "sink": copy.deepcopy(TARGET),
                "template": {"spec": {"containers": [{"command": ["true"]}]}},
            },
        )
    ],
    "ApiServerSource": lambda: [
        obj(
            "sources.knative.dev/v1",
            "ApiServerSource",
            "asker",
            {"sink": copy.deepcopy(TARGET), "resources": [{"apiVersion": "v1", "kind": "Event"}]},
        )
    ],
}


def converge(objects: list[dict[str, Any]], serving: bool) -> tuple[list[dict], Reconciled]:
    """The controller: store wanted children and statuses until stable; ``serving``: the
    invoker reports that each Revision's replica listened."""
    objects = copy.deepcopy(objects)
    result = reconcile(objects, base_url=BASE, default_delivery=DEFAULT)
    for _ in range(8):
        keys = {(o["kind"], o["metadata"]["name"]) for o in objects}
        new = [c for c in result.children if (c["kind"], c["metadata"]["name"]) not in keys]
        for child in new:
            stored = admit(copy.deepcopy(child))
            stored["metadata"].update(uid=f"uid-{child['kind']}-{child['metadata']['name']}")
            stored["metadata"]["generation"] = 1
            objects.append(stored)
        for item in objects:
            item["status"] = result.statuses.get(item["metadata"]["uid"], item.get("status"))
            if serving and item["kind"] == "Revision":
                item["status"] = {**(item.get("status") or {}), "replicaReadyOnce": True}
        result = reconcile(objects, base_url=BASE, default_delivery=DEFAULT)
        if not new:
            break
    return objects, result


def ready_of(result: Reconciled, objects: list[dict], kind: str) -> dict[str, Any]:
    asker = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == "asker")
    status = result.statuses[asker["metadata"]["uid"]]
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize("kind", sorted(CONSUMERS))
@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("ready", "True", ""),
        ("not ready", "False", "DestinationNotReady"),
        ("missing", "False", "DestinationNotFound"),
    ],
)
def test_every_kind_resolves_a_service_by_the_same_rule(
    kind: str, target: str, status: str, reason: str
) -> None:
    objects = CONSUMERS[kind]()
    if target != "missing":
        objects.append(fn_service())
    objects, result = converge(objects, serving=target == "ready")
    ready = ready_of(result, objects, kind)
    if target == "ready":
        assert ready["status"] == "True", ready
        return
    assert ready["status"] == status, ready
    assert ready["reason"] == reason, ready
    assert "Service" in ready["message"] and "fn" in ready["message"], ready
    if target == "not ready":  # the Service's own reason is passed on
        assert "waiting for a replica to listen" in ready["message"], ready


@pytest.mark.parametrize("kind", sorted(CONSUMERS))
def test_one_pass_gives_every_kind_the_services_readiness_of_that_pass(kind: str) -> None:
    """Stored statuses say the Service is not Ready; its replica then listens. The very next
    pass resolves it for every kind, including kinds reconciled before Services (forward
    look-ups settle), not one pass later."""
    objects, _ = converge([*CONSUMERS[kind](), fn_service()], serving=False)
    for item in objects:
        if item["kind"] == "Revision":
            item["status"] = {**item["status"], "replicaReadyOnce": True}
    result = reconcile(objects, base_url=BASE, default_delivery=DEFAULT)
    if kind in ("Sequence", "Parallel"):  # their Subscriptions resolve the Service
        subscriptions = [o for o in objects if o["kind"] == "Subscription"]
        assert subscriptions
        for subscription in subscriptions:
            status = result.statuses[subscription["metadata"]["uid"]]
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "True", ready
        return
    ready = ready_of(result, objects, kind)
    assert ready["status"] == "True", ready


def test_a_sink_binding_to_a_job_is_not_ready_and_says_why() -> None:
    binding = obj(
        "sources.knative.dev/v1",
        "SinkBinding",
        "bind",
        {
            "subject": {"apiVersion": "batch/v1", "kind": "Job", "name": "migrate"},
            "sink": {"uri": "http://127.0.0.1:9/"},
        },
    )
    result = reconcile([binding], base_url=BASE, default_delivery=DEFAULT)
    ready = next(c for c in result.statuses[binding["metadata"]["uid"]]["conditions"])
    assert (ready["type"], ready["status"], ready["reason"]) == (
        "Ready",
        "False",
        "SubjectNotBindable",
    )
    assert "Job (batch/v1)" in ready["message"] and "Service" in ready["message"]


def test_a_sink_binding_to_a_missing_service_is_not_ready_until_it_exists() -> None:
    binding = obj(
        "sources.knative.dev/v1",
        "SinkBinding",
        "bind",
        {
            "subject": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"},
            "sink": {"uri": "http://127.0.0.1:9/"},
        },
    )
    result = reconcile([binding], base_url=BASE, default_delivery=DEFAULT)
    ready = result.statuses[binding["metadata"]["uid"]]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "SubjectNotFound")
    _, result = converge([binding, fn_service()], serving=True)
    ready = result.statuses[binding["metadata"]["uid"]]["conditions"][0]
    assert ready["status"] == "True", ready
