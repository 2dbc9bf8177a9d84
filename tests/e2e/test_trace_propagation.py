"""Trace context (issue 15 item 2, propagation): a W3C ``traceparent`` sent to the ingress
reaches the subscriber (as the W3C header and the CloudEvents ``traceparent`` extension) with the
same trace id, and so does the reply that subscriber sends back into the Broker; an event that
carries its own context keeps it; a malformed header is not propagated."""

from __future__ import annotations

from pathlib import Path

from broker.core.events import new_event
from tests.support.cemesh import running_cemesh
from tests.support.flows import ready_object, replying
from tests.support.subscriber import Received, RecordingSubscriber

TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
OWN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def trigger(name: str, event_type: str, uri: str) -> dict[str, object]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {
            "broker": "default",
            "filter": {"attributes": {"type": event_type}},
            "subscriber": {"uri": uri},
        },
    }


def headers(event_id: str, **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/trace",
        "ce-type": "com.example.order",
        **extra,
    }


def trace_of(received: Received) -> tuple[str | None, str | None]:
    """(the W3C header, the event's traceparent extension) as the subscriber saw them."""
    assert received.event is not None
    extension = received.event.attributes.get("traceparent")
    return received.headers.get("traceparent"), None if extension is None else str(extension)


async def test_one_trace_id_from_ingress_to_delivery_and_through_the_reply(tmp_path: Path) -> None:
    answer = replying(lambda _: new_event(type="com.example.answer", source="/answerer"))
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(answer) as answerer,
        RecordingSubscriber() as audit,
    ):
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        await mesh.apply(trigger("orders", "com.example.order", answerer.url))
        await mesh.apply(trigger("answers", "com.example.answer", audit.url))
        await ready_object(mesh.client, f"{TRIGGERS}/orders")
        await ready_object(mesh.client, f"{TRIGGERS}/answers")

        sent = headers("1", traceparent=PARENT, tracestate="vendor=1")
        assert (await mesh.post_event("/default/default", sent)).status_code == 202
        [delivered] = await answerer.wait_for(1)
        assert trace_of(delivered) == (PARENT, PARENT)
        assert delivered.headers.get("tracestate") == "vendor=1"
        [reply] = await audit.wait_for(1)
        header, extension = trace_of(reply)
        assert header is not None and extension is not None
        assert header[3:35] == extension[3:35] == TRACE


async def test_an_events_own_context_wins_and_a_malformed_header_is_dropped(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as subscriber:
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        await mesh.apply(trigger("orders", "com.example.order", subscriber.url))
        await ready_object(mesh.client, f"{TRIGGERS}/orders")
        own = headers("1", traceparent=PARENT, **{"ce-traceparent": OWN})
        assert (await mesh.post_event("/default/default", own)).status_code == 202
        bad = headers("2", traceparent=f"00-{'0' * 32}-00f067aa0ba902b7-01")
        assert (await mesh.post_event("/default/default", bad)).status_code == 202
        by_id = {r.event.id: r for r in await subscriber.wait_for(2) if r.event is not None}
        assert trace_of(by_id["1"]) == (OWN, OWN)
        assert trace_of(by_id["2"]) == (None, None)
