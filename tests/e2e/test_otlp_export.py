"""Span export (issue 15 item 2): with ``CEMESH_OTLP_TRACES_ENDPOINT`` set, one event's journey
(ingress -> a failed and a retried delivery attempt -> the reply -> the reply's delivery)
arrives at a real OTLP/HTTP receiver on loopback as protobuf spans with ONE trace id, the
sender's; each attempt is its own span with its attempt number and status, and the subscriber
is told that attempt's span as its parent."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from broker.core.events import new_event
from tests.e2e.test_trace_propagation import TRIGGERS, trigger
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.flows import ready_object, reply_with
from tests.support.subscriber import Received, RecordingSubscriber, Reply

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"
PARENT = f"00-{TRACE}-{SENDER_SPAN}-01"


def otlp_ok(_: Received) -> Reply:
    return (200, [("content-type", "application/x-protobuf")], b"")


def spans_of(receiver: RecordingSubscriber) -> list[Any]:
    """Every span the receiver got, decoded from the OTLP protobuf payloads."""
    spans = []
    for request in receiver.received:
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    return spans


def attribute(span: Any, key: str) -> Any:
    for item in span.attributes:
        if item.key == key:
            value = item.value
            return value.int_value if value.HasField("int_value") else value.string_value
    return None


async def broker_and_triggers(mesh: RunningCemesh, *triggers: dict[str, object]) -> None:
    """Broker ``default`` and ``triggers`` applied, each Trigger Ready."""
    await mesh.apply(
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "default"}}
    )
    for each in triggers:
        await mesh.apply(each)
    for each in triggers:
        await ready_object(mesh.client, f"{TRIGGERS}/{each['metadata']['name']}")


async def test_one_trace_from_ingress_through_attempts_and_the_reply(tmp_path: Path) -> None:
    calls = []

    def fail_once_then_reply(received: Received) -> Reply:
        calls.append(received)
        if len(calls) == 1:
            return (503, [], b"")
        return reply_with(new_event(type="com.example.answer", source="/answerer"))

    async with (
        RecordingSubscriber(otlp_ok) as receiver,
        RecordingSubscriber(fail_once_then_reply) as answerer,
        RecordingSubscriber() as audit,
    ):
        endpoint = f"{receiver.url}/v1/traces"
        async with running_cemesh(tmp_path, otlp_traces_endpoint=endpoint) as mesh:
            await broker_and_triggers(
                mesh,
                trigger("orders", "com.example.order", answerer.url),
                trigger("answers", "com.example.answer", audit.url),
            )
            headers = {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/tests/otlp",
                "ce-type": "com.example.order",
                "traceparent": PARENT,
            }
            assert (await mesh.post_event("/default/default", headers)).status_code == 202
            await answerer.wait_for(2)
            await audit.wait_for(1)
        # cemesh has stopped: its exporter sent what was batched.
        spans = spans_of(receiver)
        names = sorted(span.name for span in spans)
        assert names.count("cemesh.deliver") == 3, names  # 2 attempts + the reply's delivery
        assert names.count("cemesh.ingress") == 1 and names.count("cemesh.reply") == 1, names
        assert {span.trace_id.hex() for span in spans} == {TRACE}
        by_id = {span.span_id.hex(): span for span in spans}
        [ingress] = [s for s in spans if s.name == "cemesh.ingress"]
        assert ingress.parent_span_id.hex() == SENDER_SPAN
        attempts = sorted(
            (
                s
                for s in spans
                if s.name == "cemesh.deliver" and s.parent_span_id == ingress.span_id
            ),
            key=lambda s: attribute(s, "cemesh.attempt"),
        )
        assert [attribute(s, "cemesh.attempt") for s in attempts] == [1, 2]
        assert [attribute(s, "http.response.status_code") for s in attempts] == [503, 200]
        # The subscriber was told each attempt's span as its parent.
        for call, span in zip(calls, attempts, strict=True):
            assert call.headers["traceparent"].split("-")[2] == span.span_id.hex()
        [reply] = [s for s in spans if s.name == "cemesh.reply"]
        assert by_id[reply.parent_span_id.hex()] is ingress
        [audit_call] = audit.received
        assert audit_call.headers["traceparent"].split("-")[1] == TRACE


async def test_sample_rate_zero_exports_only_what_the_sender_sampled_and_still_carries_context(
    tmp_path: Path,
) -> None:
    """``otlp_traces_sample_rate: 0``: a new trace is not recorded (no span exported), yet the
    subscriber still gets a W3C context, marked not sampled; an event whose sender sampled its
    trace is recorded all the same (the sender's decision is followed)."""
    async with RecordingSubscriber(otlp_ok) as receiver, RecordingSubscriber() as subscriber:
        endpoint = f"{receiver.url}/v1/traces"
        async with running_cemesh(
            tmp_path, otlp_traces_endpoint=endpoint, otlp_traces_sample_rate="0"
        ) as mesh:
            await broker_and_triggers(mesh, trigger("all", "com.example.order", subscriber.url))
            headers = {
                "ce-specversion": "1.0",
                "ce-source": "/tests/otlp",
                "ce-type": "com.example.order",
            }
            for event_id, extra in (("new", {}), ("sampled", {"traceparent": PARENT})):
                response = await mesh.post_event(
                    "/default/default", {**headers, "ce-id": event_id, **extra}
                )
                assert response.status_code == 202
            await subscriber.wait_for(2)
        spans = spans_of(receiver)
        assert sorted(span.name for span in spans) == ["cemesh.deliver", "cemesh.ingress"]
        assert {span.trace_id.hex() for span in spans} == {TRACE}
        by_id = {call.event.id: call for call in subscriber.received if call.event is not None}
        # The sampled flag is bit 0 of the flags (the SDK may also set Level 2's random bit).
        version, trace_id, _, flags = by_id["new"].headers["traceparent"].split("-")
        assert version == "00" and trace_id != TRACE and not int(flags, 16) & 1
        _, trace_id, _, flags = by_id["sampled"].headers["traceparent"].split("-")
        assert trace_id == TRACE and int(flags, 16) & 1
