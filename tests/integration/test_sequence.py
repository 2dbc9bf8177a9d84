"""Sequence through a real cemesh: steps in order, each reply feeding the next, the last reply to
``spec.reply`` (K165, K166); per-step delivery with a dead-letter sink and ``knativeerror*``
extensions (K167, K125-K131); status (K168) and ``cemesh get sequences``."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from broker.cli import table_rows
from tests.conftest import shared_fixture_dir
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.flows import (
    appended,
    appender,
    displayed,
    ready_object,
    reply_with,
    services_ready,
    wait_until,
    with_command,
)
from tests.support.subscriber import Received, RecordingSubscriber, Reply

SEQUENCES = "/apis/flows.knative.dev/v1/namespaces/default/sequences"
SUBSCRIPTIONS = "/apis/messaging.knative.dev/v1/namespaces/default/subscriptions"
IMCS = "/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels"


def headers(event_id: str, type_: str = "com.example.start") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/sequence",
        "ce-type": type_,
        "content-type": "application/json",
    }


def sequence(name: str, steps: list[dict[str, Any]], reply: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"},
        "steps": steps,
    }
    if reply is not None:
        spec["reply"] = {"uri": reply}
    return {
        "apiVersion": "flows.knative.dev/v1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": spec,
    }


def condition(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def get(mesh: RunningCemesh, path: str) -> dict[str, Any]:
    response = await mesh.client.get(path)
    assert response.status_code == 200, response.text
    return dict(response.json())


def message(received: Received) -> str:
    return str(orjson.loads(received.body)["message"])


async def test_k165_k166_three_steps_run_in_order_and_the_last_reply_reaches_spec_reply(
    tmp_path: Path,
) -> None:
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(appender(" - Handled by 0")) as first,
        RecordingSubscriber(appender(" - Handled by 1")) as second,
        RecordingSubscriber(appender(" - Handled by 2", "samples.http.mod3")) as third,
        RecordingSubscriber() as display,
    ):
        steps = [{"uri": s.url} for s in (first, second, third)]
        [seq] = await mesh.apply(sequence("sequence", steps, reply=display.url))
        assert condition(seq)["status"] == "True", seq["status"]
        url = f"{mesh.url}/channels/default/sequence-kn-sequence-0"
        assert seq["status"]["address"]["url"] == url
        assert [c["channel"]["name"] for c in seq["status"]["channelStatuses"]] == [
            f"sequence-kn-sequence-{i}" for i in range(3)
        ]
        assert [s["subscription"]["name"] for s in seq["status"]["subscriptionStatuses"]] == [
            f"sequence-kn-sequence-{i}" for i in range(3)
        ]
        assert all(
            entry["ready"]["status"] == "True"
            for entry in seq["status"]["channelStatuses"] + seq["status"]["subscriptionStatuses"]
        )

        response = await mesh.post_event(
            "/channels/default/sequence-kn-sequence-0",
            headers("s-1"),
            b'{"message": "Hello world!"}',
        )
        assert response.status_code == 202, response.text
        [result] = await display.wait_for(1)
        assert message(result) == "Hello world! - Handled by 0 - Handled by 1 - Handled by 2"
        assert result.event is not None
        assert result.event.type == "samples.http.mod3"
        assert result.event.id == "s-1"  # each step kept the id
        assert "knativebrokerttl" not in first.received[0].event.attributes  # type: ignore[union-attr]
        assert message((await third.wait_for(1))[0]) == "Hello world! - Handled by 0 - Handled by 1"

        # cemesh get sequences
        [header, row] = table_rows("Sequence", [seq], now=datetime.now(UTC))
        assert header[:5] == ["NAME", "URL", "READY", "REASON", "STEPS"]
        assert row[:5] == ["sequence", url, "True", "", "3"]


def _fails_on_poison(received: Received) -> Reply:
    """Step 1: fails (500) on events marked poison, appends to the others."""
    assert received.event is not None
    if b"poison" in received.body:
        return 500, [], b"step 1 cannot take poison"
    return reply_with(appended(received.event, " - 1"))


async def test_k167_failing_second_step_dead_letters_to_its_own_sink_while_others_flow(
    tmp_path: Path,
) -> None:
    """K167 per-step delivery; K125-K131: the dead letter carries knativeerror* extensions."""
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(appender(" - 0")) as first,
        RecordingSubscriber(_fails_on_poison) as second,
        RecordingSubscriber(appender(" - 2")) as third,
        RecordingSubscriber() as dead_letters,
        RecordingSubscriber() as display,
    ):
        steps = [
            {"uri": first.url},
            {
                "uri": second.url,
                "delivery": {
                    "retry": 2,
                    "backoffDelay": "PT0.01S",
                    "deadLetterSink": {"uri": dead_letters.url},
                },
            },
            {"uri": third.url},
        ]
        [seq] = await mesh.apply(sequence("failing", steps, reply=display.url))
        assert condition(seq)["status"] == "True", seq["status"]
        sub = await get(mesh, f"{SUBSCRIPTIONS}/failing-kn-sequence-1")
        assert sub["status"]["physicalSubscription"]["deadLetterSinkUri"] == dead_letters.url
        assert sub["spec"]["delivery"]["retry"] == 2

        for event_id, body in (
            ("ok-1", b'{"message": "a"}'),
            ("bad-1", b'{"message": "poison"}'),
            ("ok-2", b'{"message": "b"}'),
        ):
            response = await mesh.post_event(
                "/channels/default/failing-kn-sequence-0", headers(event_id), body
            )
            assert response.status_code == 202, response.text

        [dead] = await dead_letters.wait_for(1)
        assert dead.event is not None
        assert dead.event.id == "bad-1"
        assert message(dead) == "poison - 0"  # the event step 1 was given, not a reply
        attributes = dead.event.attributes
        assert attributes["knativeerrordest"] == second.url
        assert str(attributes["knativeerrorcode"]) == "500"
        data = base64.b64decode(str(attributes["knativeerrordata"]))
        assert data == b"step 1 cannot take poison"
        assert len([r for r in second.received if b"poison" in r.body]) == 3  # 1 + 2 retries

        results = await display.wait_for(2)
        assert sorted(message(r) for r in results) == ["a - 0 - 1 - 2", "b - 0 - 1 - 2"]
        assert not any(b"poison" in r.body for r in third.received)


async def test_sequence_steps_change_replaces_owned_objects_and_deletion_removes_them(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        steps = [{"uri": "http://127.0.0.1:9/a"}, {"uri": "http://127.0.0.1:9/b"}]
        await mesh.apply(sequence("shrinks", steps))
        assert (await mesh.client.get(f"{IMCS}/shrinks-kn-sequence-1")).status_code == 200
        [seq] = await mesh.apply(sequence("shrinks", steps[:1]))
        assert condition(seq)["status"] == "True", seq["status"]
        assert (await mesh.client.get(f"{IMCS}/shrinks-kn-sequence-1")).status_code == 404
        assert (await mesh.client.get(f"{SUBSCRIPTIONS}/shrinks-kn-sequence-1")).status_code == 404
        response = await mesh.client.delete(f"{SEQUENCES}/shrinks")
        assert response.status_code < 300, response.text
        assert (await mesh.client.get(f"{IMCS}/shrinks-kn-sequence-0")).status_code == 404
        assert (await mesh.client.get(f"{SUBSCRIPTIONS}/shrinks-kn-sequence-0")).status_code == 404


@pytest.mark.shared_conformance
async def test_knative_docs_sequence_applies_unchanged_and_waits_naming_the_missing_service(
    tmp_path: Path,
) -> None:
    """The docs' sequence-reply-to-event-display Sequence and PingSource, applied unchanged
    before their Services: admitted, addressable by name, not Ready naming the first step."""
    folder = shared_fixture_dir(
        "knative-docs", "docs", "versioned", "eventing", "flows", "sequence"
    )
    example = folder / "sequence-reply-to-event-display"
    async with running_cemesh(tmp_path) as mesh:
        [seq] = await mesh.apply((example / "sequence.yaml").read_text())
        [ping] = await mesh.apply((example / "ping-source.yaml").read_text())
        # Admitted unchanged; whether its sink resolves before the Sequence is Ready is the
        # sources' rule (a not-Ready destination waits), so only the reference is checked here.
        assert ping["spec"]["sink"]["ref"]["kind"] == "Sequence"
        assert seq["spec"]["channelTemplate"]["kind"] == "InMemoryChannel"
        ready = condition(seq)
        assert ready["status"] == "False", seq["status"]
        assert 'Service "default/first"' in ready["message"], ready
        assert condition(seq, "ChannelsReady")["status"] == "True"
        assert [c["ready"]["status"] for c in seq["status"]["channelStatuses"]] == ["True"] * 3


PING = {  # what the docs' PingSource sends (posted directly: its schedule is minutes apart)
    "ce-specversion": "1.0",
    "ce-id": "ping-1",
    "ce-source": "/apis/v1/namespaces/default/pingsources/ping-source",
    "ce-type": "dev.knative.sources.ping",
    "content-type": "application/json",
}


@pytest.mark.shared_conformance
async def test_knative_docs_sequence_reply_to_event_display_walkthrough(tmp_path: Path) -> None:
    """docs flows/sequence/sequence-reply-to-event-display: steps.yaml and event-display.yaml
    with local commands, sequence.yaml unchanged; the display shows the README's result."""
    example = (
        shared_fixture_dir("knative-docs", "docs", "versioned", "eventing", "flows", "sequence")
        / "sequence-reply-to-event-display"
    )
    shown = tmp_path / "display.jsonl"
    async with running_cemesh(tmp_path) as mesh:
        for doc in with_command((example / "steps.yaml").read_text(), "appender"):
            await mesh.apply(doc)
        events = with_command((example / "event-display.yaml").read_text(), "event-display")
        events[0]["spec"]["template"]["spec"]["containers"][0]["command"].append(str(shown))
        await mesh.apply(events[0])
        await services_ready(mesh.client)
        [seq] = await mesh.apply((example / "sequence.yaml").read_text())
        assert condition(seq)["status"] == "True", seq["status"]

        response = await mesh.post_event(
            "/channels/default/sequence-kn-sequence-0", PING, b'{"message": "Hello world!"}'
        )
        assert response.status_code == 202, response.text
        await wait_until(lambda: len(displayed(shown)) >= 1, timeout=20)
        [event] = displayed(shown)
        assert json.loads(event["data"]) == {
            "message": "Hello world! - Handled by 0 - Handled by 1 - Handled by 2"
        }
        assert event["headers"]["ce-type"] == "samples.http.mod3"


@pytest.mark.shared_conformance
async def test_knative_docs_sequence_with_broker_and_trigger_walkthrough(tmp_path: Path) -> None:
    """docs flows/sequence/sequence-with-broker-trigger: the Sequence replies into the Broker
    with a new type, which display-trigger sends to the display (no loop: the type changed)."""
    example = (
        shared_fixture_dir("knative-docs", "docs", "versioned", "eventing", "flows", "sequence")
        / "sequence-with-broker-trigger"
    )
    shown = tmp_path / "display.jsonl"
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        for doc in with_command((example / "steps.yaml").read_text(), "appender"):
            await mesh.apply(doc)
        [display, display_trigger] = [
            doc for doc in yaml.safe_load_all((example / "display-trigger.yaml").read_text()) if doc
        ]
        [display] = with_command(yaml.safe_dump(display), "event-display", str(shown))
        await mesh.apply(display)
        await mesh.apply(display_trigger)
        await services_ready(mesh.client)
        [seq] = await mesh.apply((example / "sequence.yaml").read_text())
        [trigger] = await mesh.apply((example / "trigger.yaml").read_text())
        assert condition(seq)["status"] == "True", seq["status"]
        trigger_path = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
        await ready_object(mesh.client, f"{trigger_path}/{trigger['metadata']['name']}")
        await ready_object(mesh.client, f"{trigger_path}/{display_trigger['metadata']['name']}")

        response = await mesh.post_event("/default/default", PING, b'{"message": "Hello world!"}')
        assert response.status_code == 202, response.text
        await wait_until(lambda: len(displayed(shown)) >= 1, timeout=20)
        [event] = displayed(shown)
        assert json.loads(event["data"]) == {
            "message": "Hello world! - Handled by 0 - Handled by 1 - Handled by 2"
        }
        assert event["headers"]["ce-type"] == "samples.http.mod3"
        assert "ce-knativebrokerttl" not in event["headers"]  # K96
