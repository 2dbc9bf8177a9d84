"""End to end on the embedded default: Broker + Triggers over real HTTP, as a Knative user would.

cemesh runs in-process on a loopback port (SQLite store, in-memory bus); subscribers are real
HTTP servers on loopback. Requirement ids (K, C): docs/requirements.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import orjson
import pytest

from tests.support.cemesh import running_cemesh
from tests.support.subscriber import Received, RecordingSubscriber

BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
"""


def trigger(name: str, subscriber: str, extra: str = "") -> str:
    return f"""
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
spec:
  broker: default
  subscriber:
    uri: {subscriber}
{extra}
"""


def binary_headers(id: str, type: str, **extensions: str) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": id,
        "ce-source": "/e2e",
        "ce-type": type,
        "content-type": "application/json",
    }
    headers.update({f"ce-{k}": v for k, v in extensions.items()})
    return headers


async def test_matching_triggers_get_each_event_once_unaltered_in_all_modes(
    tmp_path: Path,
) -> None:
    """K62/K63 each matching Trigger delivers; K44 knativearrivaltime; K51/K52 unaltered;
    C25 binary, structured and batched modes; K70 attribute filter; K83/K88 prefix + not."""
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber() as orders,
        RecordingSubscriber() as not_test,
        RecordingSubscriber() as nothing,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(
            trigger(
                "orders",
                orders.url,
                "  filter:\n    attributes:\n      type: com.example.order\n      region: eu\n",
            )
        )
        await mesh.apply(
            trigger(
                "not-test",
                not_test.url,
                "  filters:\n"
                "    - prefix:\n        type: com.example.\n"
                "    - not:\n        exact:\n          source: /test\n",
            )
        )
        await mesh.apply(
            trigger("nothing", nothing.url, "  filter:\n    attributes:\n      type: never.sent\n")
        )

        binary = await mesh.post_event(
            "/default/default",
            binary_headers("b-1", "com.example.order", region="eu"),
            b'{"n": 1}',
        )
        structured = await mesh.post_event(
            "/default/default",
            {"content-type": "application/cloudevents+json"},
            orjson.dumps(
                {
                    "specversion": "1.0",
                    "id": "s-1",
                    "source": "/e2e",
                    "type": "com.example.order",
                    "region": "eu",
                    "datacontenttype": "application/json",
                    "data": {"n": 2},
                }
            ),
        )
        batch = await mesh.post_event(
            "/default/default",
            {"content-type": "application/cloudevents-batch+json"},
            orjson.dumps(
                [
                    {"specversion": "1.0", "id": "t-1", "source": "/e2e", "type": "com.example.x"},
                    {"specversion": "1.0", "id": "t-2", "source": "/test", "type": "com.example.y"},
                ]
            ),
        )
        assert [binary.status_code, structured.status_code, batch.status_code] == [202] * 3

        got_orders = await orders.wait_for(2)
        got_not_test = await not_test.wait_for(3)  # b-1, s-1, t-1 (t-2 has source /test)
        await asyncio.sleep(0.2)  # give a wrong extra delivery the chance to show up

        assert sorted(r.event.id for r in orders.received) == ["b-1", "s-1"]
        assert sorted(r.event.id for r in not_test.received) == ["b-1", "s-1", "t-1"]
        assert nothing.received == []
        by_id = {r.event.id: r for r in got_orders}
        assert by_id["b-1"].body == b'{"n": 1}'  # data bytes unchanged
        assert json.loads(by_id["s-1"].body) == {"n": 2}
        for received in [*got_orders, *got_not_test]:
            assert "knativearrivaltime" in received.event.attributes  # K44
            assert "knativebrokerttl" not in received.event.attributes  # K96
            assert received.headers.get("prefer") == "reply"  # K94
            assert received.headers.get("kn-namespace") == "default"  # K95
        assert by_id["b-1"].event.attributes["region"] == "eu"


async def test_failing_subscriber_is_retried_then_dead_lettered_with_error_extensions(
    tmp_path: Path,
) -> None:
    """K113 retry+1 attempts; K125/K128 original event to the DLS; K129-K131 knativeerror*."""

    def fail(_: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        return (500, [], b"boom")

    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(fail) as subscriber,
        RecordingSubscriber() as dls,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(
            trigger(
                "flaky",
                subscriber.url,
                "  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT0.01S\n"
                f"    deadLetterSink:\n      uri: {dls.url}\n",
            )
        )
        response = await mesh.post_event(
            "/default/default", binary_headers("r-1", "com.example.order"), b'{"x": 1}'
        )
        assert response.status_code == 202
        dead = (await dls.wait_for(1))[0]
        assert len(subscriber.received) == 4  # 1 attempt + 3 retries
        attributes = dead.event.attributes
        assert dead.event.id == "r-1"
        assert dead.body == b'{"x": 1}'
        assert attributes["knativeerrordest"] == subscriber.url
        assert str(attributes["knativeerrorcode"]) == "500"
        assert base64.b64decode(str(attributes["knativeerrordata"])) == b"boom"


async def test_non_retryable_status_is_not_retried(tmp_path: Path) -> None:
    """K8/K119/K133: a 400 dead-letters after exactly one attempt."""
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(lambda _: (400, [], b"bad")) as subscriber,
        RecordingSubscriber() as dls,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(
            trigger(
                "strict",
                subscriber.url,
                f"  delivery:\n    retry: 5\n    deadLetterSink:\n      uri: {dls.url}\n",
            )
        )
        await mesh.post_event("/default/default", binary_headers("n-1", "a.b"), b"{}")
        dead = (await dls.wait_for(1))[0]
        assert len(subscriber.received) == 1
        assert str(dead.event.attributes["knativeerrorcode"]) == "400"


def _reply_with(type_: str) -> object:
    def respond(received: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        assert received.event is not None
        return (
            200,
            [
                ("ce-specversion", "1.0"),
                ("ce-id", f"reply-of-{received.event.id}"),
                ("ce-source", "/replier"),
                ("ce-type", type_),
                ("content-type", "application/json"),
            ],
            b'{"reply": true}',
        )

    return respond


async def test_reply_is_routed_through_the_broker_to_the_matching_trigger(tmp_path: Path) -> None:
    """K104/K105: a 200 + CloudEvent reply re-enters the broker and reaches its Trigger."""
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(_reply_with("com.example.reply")) as replier,
        RecordingSubscriber() as reply_sink,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(
            trigger("ask", replier.url, "  filter:\n    attributes:\n      type: com.example.ask\n")
        )
        await mesh.apply(
            trigger(
                "answer",
                reply_sink.url,
                "  filter:\n    attributes:\n      type: com.example.reply\n",
            )
        )
        await mesh.post_event("/default/default", binary_headers("q-1", "com.example.ask"), b"{}")
        reply = (await reply_sink.wait_for(1))[0]
        assert reply.event.id == "reply-of-q-1"
        assert reply.body == b'{"reply": true}'


async def test_reply_loop_stops_when_broker_ttl_runs_out(tmp_path: Path) -> None:
    """K45/K107: a subscriber that replies with the type it consumes loops until the ttl ends."""
    async with (
        running_cemesh(tmp_path, max_ttl=5) as mesh,
        RecordingSubscriber(_reply_with("com.example.loop")) as looper,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(
            trigger(
                "loop", looper.url, "  filter:\n    attributes:\n      type: com.example.loop\n"
            )
        )
        await mesh.post_event("/default/default", binary_headers("l-1", "com.example.loop"), b"{}")
        await looper.wait_for(5)  # ttl 5, 4, 3, 2, 1
        await asyncio.sleep(0.3)  # a sixth delivery would mean the guard failed
        assert len(looper.received) == 5
        metrics = (await mesh.client.get("/metrics")).text
        assert "cemesh_reply_loops_stopped_total 1.0" in metrics


async def test_subscription_delivers_channel_events_and_forwards_replies(tmp_path: Path) -> None:
    """K138/K148 channel fan-out to Subscriptions; K109 reply to spec.reply; K147 unaltered."""
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(_reply_with("com.example.reply")) as step,
        RecordingSubscriber() as sink,
    ):
        await mesh.apply(
            """
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata:
  name: orders
"""
        )
        await mesh.apply(
            f"""
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata:
  name: orders-step
spec:
  channel:
    apiVersion: messaging.knative.dev/v1
    kind: InMemoryChannel
    name: orders
  subscriber:
    uri: {step.url}
  reply:
    uri: {sink.url}
"""
        )
        response = await mesh.post_event(
            "/channels/default/orders", binary_headers("c-1", "com.example.order"), b"[1]"
        )
        assert response.status_code == 202
        delivered = (await step.wait_for(1))[0]
        assert delivered.body == b"[1]"
        assert "knativearrivaltime" not in delivered.event.attributes  # channels add nothing
        reply = (await sink.wait_for(1))[0]
        assert reply.event.id == "reply-of-c-1"


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        ("GET", "/default/default", {}, b"", 405),  # K28
        ("PUT", "/channels/default/none", {}, b"", 405),  # K143
        ("POST", "/default/missing", {"ce-specversion": "1.0"}, b"", 404),  # K41
        ("POST", "/channels/default/missing", {}, b"", 404),  # K144
        ("POST", "/default/default", {"ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"", 400),
        (
            "POST",
            "/default/default",
            {"ce-specversion": "19.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
            b"",
            400,
        ),  # K31
        (
            "POST",
            "/default/default",
            {"ce-specversion": "1.0", "ce-id": "", "ce-source": "/s", "ce-type": "t"},
            b"",
            400,
        ),  # K48
        (
            "POST",
            "/default/default",
            {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"},
            b"",
            400,
        ),  # K49
        (
            "POST",
            "/default/default",
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "%C0%A0"},
            b"",
            400,
        ),  # C40
        ("POST", "/default/default", {"content-type": "application/cloudevents+json"}, b"{", 400),
        (
            "POST",
            "/default/default",
            {"content-type": "application/cloudevents+json"},
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}',
            400,
        ),  # C58
        (
            "POST",
            "/default/default",
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/s",
                "ce-type": "t",
                "ce-knativebrokerttl": "1",
            },
            b"",
            400,
        ),  # K45
    ],
)
async def test_malformed_requests_get_a_precise_4xx_never_500(
    tmp_path: Path, method: str, path: str, headers: dict[str, str], body: bytes, status: int
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(BROKER)
        response = await mesh.client.request(method, path, headers=headers, content=body)
        assert response.status_code == status, response.text
        assert response.headers["allow"] == "POST, OPTIONS"  # K38
        assert response.json()["message"]


async def test_oversized_request_gets_413(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, max_request_bytes=65536) as mesh:
        await mesh.apply(BROKER)
        response = await mesh.post_event(
            "/default/default", binary_headers("big", "t"), b"x" * 70000
        )
        assert response.status_code == 413


async def test_options_answers_the_webhook_handshake(tmp_path: Path) -> None:
    """K39, C69: OPTIONS -> 200 with WebHook-Allowed-Origin/Rate and Allow."""
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(BROKER)
        response = await mesh.client.options(
            "/default/default", headers={"WebHook-Request-Origin": "example.com"}
        )
        assert response.status_code == 200
        assert response.headers["webhook-allowed-origin"] == "*"
        assert response.headers["webhook-allowed-rate"] == "*"
        assert "POST" in response.headers["allow"]


async def test_cloudevents_0_3_is_accepted_and_never_upgraded(tmp_path: Path) -> None:
    """K31/K32/C83: a 0.3 event reaches the subscriber as 0.3."""
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as subscriber:
        await mesh.apply(BROKER)
        await mesh.apply(trigger("all", subscriber.url))
        headers = binary_headers("v03", "t")
        headers["ce-specversion"] = "0.3"
        headers["ce-schemaurl"] = "http://example.com/schema"
        assert (await mesh.post_event("/default/default", headers, b"{}")).status_code == 202
        received = (await subscriber.wait_for(1))[0]
        assert received.headers["ce-specversion"] == "0.3"
        assert received.event.attributes["schemaurl"] == "http://example.com/schema"
