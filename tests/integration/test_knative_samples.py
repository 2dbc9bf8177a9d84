"""Knative-style manifests, as a Knative user writes them, applied to cemesh unchanged.

The manifests are the project's own (tests/data/knative, see tests/data/README.md): an order
pipeline (Broker, Triggers, a Sequence of Knative Services replying into the Broker, a
PingSource), a Parallel, a Secret with ``stringData`` and a YAML file that is not a manifest.

- ``cemesh apply -f <folder>`` creates every object of the folder and a second apply reports
  each unchanged; a non-manifest YAML gets one error line naming the file;
- a Sequence or Parallel applied before its Services is admitted and addressable, and not Ready
  with a message naming the first missing Service (K164, K170, K163);
- the pipeline's shape run end to end with HTTP steps: the Broker's Trigger feeds the Sequence,
  whose last step changes the type and replies into the Broker, where a second Trigger takes it
  to the display; the changed type is what keeps it from looping (K165, K166, K169).

The Knative docs' own samples run as an extra conformance pass (marker ``shared_conformance``)
in test_cli.py, test_sequence.py, test_parallel.py and test_resources.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_cli import assert_one_error_line, ns, run, server
from tests.support.cemesh import running_cemesh
from tests.support.flows import appender
from tests.support.subscriber import RecordingSubscriber

__all__ = ["ns", "server"]  # the CLI module's fixtures, used here

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "knative"


def sample(*parts: str) -> str:
    return SAMPLES.joinpath(*parts).read_text("utf-8")


def condition(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_apply_of_the_order_pipeline_folder_creates_every_object_then_reports_unchanged(
    server: str, ns: str
) -> None:
    folder = SAMPLES / "order-pipeline"
    first = run(server, "apply", "-n", ns, "-f", str(folder))
    assert first.exit_code == 0, first.output
    assert "Traceback" not in first.output
    expected = [
        "broker.eventing.knative.dev/default",
        "pingsource.sources.knative.dev/nightly-order",
        "sequence.flows.knative.dev/order-pipeline",
        "service.serving.knative.dev/confirm",
        "service.serving.knative.dev/order-display",
        "service.serving.knative.dev/price",
        "service.serving.knative.dev/validate",
        "trigger.eventing.knative.dev/confirmed-to-display",
        "trigger.eventing.knative.dev/orders-to-pipeline",
    ]
    assert sorted(first.stdout.splitlines()) == [f"{name} created" for name in expected]

    again = run(server, "apply", "-n", ns, "-f", str(folder))
    assert again.exit_code == 0, again.output
    assert sorted(again.stdout.splitlines()) == [f"{name} unchanged" for name in expected]


def test_apply_of_a_secret_with_string_data_creates_it_then_reports_unchanged(
    server: str, ns: str
) -> None:
    path = SAMPLES / "webhook-secret.yaml"
    assert run(server, "apply", "-n", ns, "-f", str(path)).stdout.splitlines() == [
        "secret/shop-webhook created"
    ]
    assert run(server, "apply", "-n", ns, "-f", str(path)).stdout.splitlines() == [
        "secret/shop-webhook unchanged"
    ]


def test_apply_of_a_yaml_that_is_not_a_manifest_says_so_in_one_line(server: str, ns: str) -> None:
    path = SAMPLES / "channel-catalog.yaml"
    result = run(server, "apply", "-n", ns, "-f", str(path))
    assert_one_error_line(result, str(path), "not a Kubernetes object", "apiVersion and kind")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("parts", "missing"),
    [
        (("order-pipeline", "sequence.yaml"), 'Service "default/validate"'),
        (("fanout-parallel.yaml",), 'Service "default/'),
    ],
)
async def test_a_flow_applied_before_its_services_is_addressable_and_not_ready_naming_them(
    tmp_path: Path, parts: tuple[str, ...], missing: str
) -> None:
    manifest = sample(*parts)
    async with running_cemesh(tmp_path) as mesh:
        [flow] = await mesh.apply(manifest)
        ready = condition(flow)
        assert ready["status"] == "False", flow["status"]
        assert missing in ready["message"], ready
        assert flow["status"]["address"]["url"].startswith(f"{mesh.url}/channels/default/")


async def test_a_sequence_replying_into_its_broker_with_a_new_type_reaches_the_display_once(
    tmp_path: Path,
) -> None:
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(appender(" validated")) as validate,
        RecordingSubscriber(appender(" priced")) as price,
        RecordingSubscriber(appender(" confirmed", "com.example.order.confirmed")) as confirm,
        RecordingSubscriber() as display,
    ):
        sequence = sample("order-pipeline", "sequence.yaml")
        for step, subscriber in (("validate", validate), ("price", price), ("confirm", confirm)):
            sequence = sequence.replace(
                "ref:\n        apiVersion: serving.knative.dev/v1\n        kind: Service\n"
                f"        name: {step}",
                f"uri: {subscriber.url}",
            )
        triggers = sample("order-pipeline", "triggers.yaml")
        triggers = triggers.replace(
            "ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n"
            "      name: order-display",
            f"uri: {display.url}",
        )
        await mesh.apply(triggers)
        [seq] = await mesh.apply(sequence)
        assert condition(seq)["status"] == "True", seq["status"]

        for number in (7, 8):
            response = await mesh.post_event(
                "/default/default",
                {
                    "ce-specversion": "1.0",
                    "ce-id": f"order-{number}",
                    "ce-source": "/shop",
                    "ce-type": "com.example.order.placed",
                    "content-type": "application/json",
                },
                f'{{"message": "order {number}"}}'.encode(),
            )
            assert response.status_code == 202, response.text
        shown = await display.wait_for(2)

    assert sorted(orjson.loads(r.body)["message"] for r in shown) == [
        f"order {n} validated priced confirmed" for n in (7, 8)
    ]
    assert {r.event.type for r in shown if r.event is not None} == {"com.example.order.confirmed"}
    # One pass per order: the confirmed type matches only the display's Trigger, so by the time
    # the second order came out, nothing of the first went round again.
    assert [len(s.received) for s in (validate, price, confirm, display)] == [2, 2, 2, 2]
