"""Issue 15 item 1: ``/metrics`` of a running cemesh, scraped over HTTP and parsed with
prometheus_client's own text parser, shows Knative's data-plane metrics per Broker and Trigger
(counts and latency buckets labelled by namespace, broker, trigger, event type, response code
and class), retries, dead letters and the bus backlog; event types cannot grow the label set
without bound; an unknown Broker's name never becomes a label."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.flows import ready_object
from tests.support.subscriber import Received, RecordingSubscriber, Reply

TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"


def failing(_: Received) -> Reply:
    return (500, [], b"no")


def headers(event_id: str, event_type: str = "com.example.order") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/metrics",
        "ce-type": event_type,
        "content-type": "application/json",
    }


def trigger(name: str, uri: str, **delivery: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"broker": "default", "subscriber": {"uri": uri}}
    if delivery:
        spec["delivery"] = delivery
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": spec,
    }


BROKER = {
    "apiVersion": "eventing.knative.dev/v1",
    "kind": "Broker",
    "metadata": {"name": "default"},
}


async def scrape(mesh: RunningCemesh) -> list[Sample]:
    response = await mesh.client.get("/metrics")
    assert response.status_code == 200
    return [s for f in text_string_to_metric_families(response.text) for s in f.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels``; None if none."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, found
    return found[0].value if found else None


async def scrape_until(mesh: RunningCemesh, name: str, want: float, **labels: str) -> list[Sample]:
    """Scrape until ``name{labels}`` reaches ``want`` (deliveries settle after the subscriber
    saw them); fail naming what was seen."""
    samples: list[Sample] = []
    for _ in range(400):
        samples = await scrape(mesh)
        if value(samples, name, **labels) == want:
            return samples
        await asyncio.sleep(0.025)
    raise AssertionError(f"{name}{labels} never reached {want}: {value(samples, name, **labels)}")


async def test_per_trigger_counts_and_latency_buckets_carry_knatives_labels(
    tmp_path: Path,
) -> None:
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber() as ok,
        RecordingSubscriber(failing) as broken,
        RecordingSubscriber() as dead_letters,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(trigger("ok", ok.url))
        await mesh.apply(
            trigger(
                "broken",
                broken.url,
                retry=1,
                backoffDelay="PT0.01S",
                deadLetterSink={"uri": dead_letters.url},
            )
        )
        await ready_object(mesh.client, f"{TRIGGERS}/ok")
        await ready_object(mesh.client, f"{TRIGGERS}/broken")
        for n in range(3):
            response = await mesh.post_event("/default/default", headers(str(n)), b"{}")
            assert response.status_code == 202
        await ok.wait_for(3)
        await dead_letters.wait_for(3)

        base = {"namespace_name": "default", "broker_name": "default"}
        kind = {"event_type": "com.example.order"}
        samples = await scrape_until(
            mesh,
            "cemesh_delivery_outcomes_total",
            3,
            resource_name="broken",
            outcome="dead_lettered",
        )
        ingress = {**base, **kind, "response_code": "202", "response_code_class": "2xx"}
        assert value(samples, "cemesh_broker_ingress_event_count_total", **ingress) == 3
        assert (
            value(samples, "cemesh_broker_ingress_event_dispatch_latencies_count", **ingress) == 3
        )
        assert (
            value(
                samples,
                "cemesh_broker_ingress_event_dispatch_latencies_bucket",
                **ingress,
                le="+Inf",
            )
            == 3
        )
        assert (
            value(
                samples, "cemesh_broker_ingress_event_dispatch_latencies_bucket", **ingress, le="1"
            )
            is not None
        )

        delivered = {**base, **kind, "trigger_name": "ok", "response_code": "202"}
        assert (
            value(
                samples,
                "cemesh_broker_filter_event_count_total",
                **delivered,
                response_code_class="2xx",
            )
            == 3
        )
        assert (
            value(
                samples,
                "cemesh_broker_filter_event_dispatch_latencies_bucket",
                **delivered,
                le="+Inf",
            )
            == 3
        )
        failed = {**base, **kind, "trigger_name": "broken", "response_code": "500"}
        assert (
            value(
                samples,
                "cemesh_broker_filter_event_count_total",
                **failed,
                response_code_class="5xx",
            )
            == 3
        )
        assert value(samples, "cemesh_delivery_retries_total", resource_name="broken") == 3
        assert (
            value(
                samples, "cemesh_delivery_outcomes_total", resource_name="ok", outcome="delivered"
            )
            == 3
        )
        assert value(samples, "cemesh_bus_group_backlog", resource_name="ok", bus="memory") == 0


async def test_event_types_beyond_the_cap_count_as_other(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, metrics_max_event_types=2) as mesh:
        await mesh.apply(BROKER)
        await ready_object(
            mesh.client, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default"
        )
        for n, event_type in enumerate(["a", "b", "c", "d", "x" * 200]):
            response = await mesh.post_event("/default/default", headers(str(n), event_type))
            assert response.status_code == 202
        samples = await scrape(mesh)
        types = {
            s.labels["event_type"]
            for s in samples
            if s.name == "cemesh_broker_ingress_event_count_total"
        }
        assert types == {"a", "b", "other"}
        assert value(samples, "cemesh_broker_ingress_event_count_total", event_type="other") == 3


async def test_rejections_count_per_known_broker_and_unknown_names_make_no_label(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(BROKER)
        await ready_object(
            mesh.client, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default"
        )
        bad = await mesh.post_event("/default/default", {"content-type": "application/json"}, b"{}")
        assert bad.status_code == 400
        for n in range(2):
            missing = await mesh.post_event(f"/default/made-up-{n}", headers("1"))
            assert missing.status_code == 404
        samples = await scrape(mesh)
        assert (
            value(
                samples,
                "cemesh_broker_ingress_event_count_total",
                broker_name="default",
                response_code="400",
                response_code_class="4xx",
            )
            == 1
        )
        brokers = {s.labels.get("broker_name") for s in samples if "broker_name" in s.labels}
        assert brokers == {"default"}
        assert value(samples, "cemesh_ingress_events_total", code="404") == 2
