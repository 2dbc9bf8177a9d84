"""Delivery of one event to one destination against real HTTP subscribers (K92-K134).

Every test runs the real pyreqwest client against :class:`RecordingSubscriber` servers on
127.0.0.1. Waits between retries go through an injected ``sleep`` that records them, so the
backoff is checked exactly and the tests do not wait for it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from broker.core.errors import PublishError
from broker.core.events import (
    ERROR_CODE,
    ERROR_DATA,
    ERROR_DEST,
    AttributeValue,
    CloudEvent,
    new_event,
)
from broker.core.spec import DeliveryPolicy
from broker.dataplane.bus import Nack
from broker.dataplane.dispatch.client import ReqwestClient
from broker.dataplane.dispatch.delivery import Deliverer, Outcome, Target, reply_poster
from broker.dataplane.reply import ReplyHandler
from tests.support.subscriber import Received, RecordingSubscriber, Reply

Sleeps = list[float]


@pytest.fixture
async def client() -> AsyncIterator[ReqwestClient]:
    http = ReqwestClient()
    yield http
    await http.close()


@pytest.fixture
def waits() -> Sleeps:
    return []


@pytest.fixture
def deliverer(client: ReqwestClient, waits: Sleeps) -> Deliverer:
    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    return Deliverer(client, dead_letter_redelivery_delay=7.5, sleep=record_sleep)


def status(code: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Callable:
    def respond(_: Received) -> Reply:
        return (code, headers or [], body)

    return respond


def sample_event(data: bytes = b'{"hello":"world"}') -> CloudEvent:
    return new_event(
        type="dev.cemesh.test",
        source="/tests/delivery",
        data=data,
        datacontenttype="application/json",
        extensions={"myext": "value"},
    )


def reply_event_response(status_code: int = 200) -> Reply:
    return (
        status_code,
        [
            ("ce-specversion", "1.0"),
            ("ce-id", "reply-1"),
            ("ce-source", "/subscriber"),
            ("ce-type", "dev.cemesh.reply"),
            ("content-type", "text/plain"),
        ],
        b"reply data",
    )


def refused_url() -> str:
    """A loopback URL nothing listens on (the port was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody"


def assert_same_event(got: CloudEvent | None, sent: CloudEvent) -> None:
    assert got is not None
    for name, value in sent.attributes.items():
        assert str(got.attributes[name]) == str(value), name
    assert got.data == sent.data


# --- the request (K16, K93-K95) ----------------------------------------------------------------


async def test_every_subscriber_request_carries_prefer_reply_k16_k94(deliverer: Deliverer) -> None:
    async with RecordingSubscriber() as sub:
        outcome = await deliverer.deliver(sample_event(), Target(sub.url, DeliveryPolicy()))
    assert outcome is Outcome.DELIVERED
    [request] = sub.received
    assert request.method == "POST"
    assert request.headers["prefer"] == "reply"


async def test_binary_mode_by_default_k93(deliverer: Deliverer) -> None:
    event = sample_event()
    async with RecordingSubscriber() as sub:
        await deliverer.deliver(event, Target(sub.url + "/hook", DeliveryPolicy()))
    [request] = sub.received
    assert request.path == "/hook"
    assert request.headers["ce-id"] == event.id
    assert request.headers["ce-myext"] == "value"
    assert request.headers["content-type"] == "application/json"
    assert request.body == event.data
    assert_same_event(request.event, event)


async def test_structured_mode_when_format_is_json_k93(deliverer: Deliverer) -> None:
    event = sample_event()
    async with RecordingSubscriber() as sub:
        await deliverer.deliver(event, Target(sub.url, DeliveryPolicy(format="json")))
    [request] = sub.received
    assert request.headers["content-type"].startswith("application/cloudevents+json")
    assert "ce-id" not in request.headers
    assert_same_event(request.event, event)


async def test_target_headers_are_sent_kn_namespace_k95(deliverer: Deliverer) -> None:
    async with RecordingSubscriber() as sub:
        target = Target(sub.url, DeliveryPolicy(), headers=(("kn-namespace", "team-a"),))
        await deliverer.deliver(sample_event(), target)
    assert sub.received[0].headers["kn-namespace"] == "team-a"


# --- retries, backoff and the dead letter (K113-K134) ------------------------------------------


@pytest.mark.parametrize(
    ("backoff_policy", "expected_waits"),
    [("exponential", [0.5, 1.0, 2.0]), ("linear", [0.5, 1.0, 1.5])],
)
async def test_500_is_retried_retry_times_with_backoff_then_dead_lettered_k113_k117_k128(
    deliverer: Deliverer, waits: Sleeps, backoff_policy: str, expected_waits: list[float]
) -> None:
    error_body = os.urandom(2000)  # binary, and longer than the 1024-character cap once encoded
    event = sample_event()
    async with RecordingSubscriber(status(500, error_body)) as sub, RecordingSubscriber() as dls:
        policy = DeliveryPolicy(
            retry=3,
            backoff_policy=backoff_policy,  # type: ignore[arg-type]
            backoff_delay=0.5,
            dead_letter_uri=dls.url + "/dead",
        )
        target = Target(sub.url + "/svc", policy, headers=(("kn-namespace", "ns1"),))
        outcome = await deliverer.deliver(event, target)

    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 4  # retry + 1 attempts (K113)
    assert waits == pytest.approx(expected_waits)
    [dead] = dls.received
    assert dead.path == "/dead"
    assert dead.headers["kn-namespace"] == "ns1"  # K134
    assert dead.event is not None
    assert_same_event(dead.event, event)  # the original event, data unaltered (K128)
    assert dead.event.get(ERROR_DEST) == sub.url + "/svc"  # K129
    assert str(dead.event.get(ERROR_CODE)) == "500"  # K130
    encoded = base64.b64encode(error_body).decode()
    assert dead.event.get(ERROR_DATA) == encoded[:1024]  # K131, K132
    assert len(encoded) > 1024


async def test_dead_letter_in_structured_mode_carries_integer_error_code_k130(
    deliverer: Deliverer,
) -> None:
    async with RecordingSubscriber(status(422, b"bad")) as sub, RecordingSubscriber() as dls:
        policy = DeliveryPolicy(retry=2, dead_letter_uri=dls.url, format="json")
        await deliverer.deliver(sample_event(), Target(sub.url, policy))
    [dead] = dls.received
    assert dead.event is not None
    assert dead.event.get(ERROR_CODE) == 422
    assert dead.event.get(ERROR_DATA) == base64.b64encode(b"bad").decode()


async def test_empty_error_body_gives_empty_errordata_k131(deliverer: Deliverer) -> None:
    async with RecordingSubscriber(status(503)) as sub, RecordingSubscriber() as dls:
        await deliverer.deliver(
            sample_event(), Target(sub.url, DeliveryPolicy(dead_letter_uri=dls.url))
        )
    [dead] = dls.received
    assert dead.headers["ce-knativeerrordata"] == ""
    assert dead.headers["ce-knativeerrorcode"] == "503"


@pytest.mark.parametrize("code", [400, 401, 403, 422])
async def test_non_retryable_status_dead_letters_after_one_attempt_k133(
    deliverer: Deliverer, waits: Sleeps, code: int
) -> None:
    async with RecordingSubscriber(status(code)) as sub, RecordingSubscriber() as dls:
        policy = DeliveryPolicy(retry=5, backoff_delay=1.0, dead_letter_uri=dls.url)
        outcome = await deliverer.deliver(sample_event(), Target(sub.url, policy))
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 1
    assert waits == []
    assert str(dls.received[0].headers["ce-knativeerrorcode"]) == str(code)


async def test_redirect_is_a_failure_and_never_followed_k10_c66(deliverer: Deliverer) -> None:
    async with RecordingSubscriber() as elsewhere:
        redirect = status(307, headers=[("location", elsewhere.url)])
        async with RecordingSubscriber(redirect) as sub, RecordingSubscriber() as dls:
            policy = DeliveryPolicy(retry=3, dead_letter_uri=dls.url)
            outcome = await deliverer.deliver(sample_event(), Target(sub.url, policy))
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 1
    assert elsewhere.received == []


async def test_retry_after_on_429_sets_the_wait_k121(deliverer: Deliverer, waits: Sleeps) -> None:
    answers: Iterator[Reply] = iter([(429, [("retry-after", "3")], b""), (202, [], b"")])
    async with RecordingSubscriber(lambda _: next(answers)) as sub:
        policy = DeliveryPolicy(retry=2, backoff_delay=0.1, retry_after_max=10.0)
        outcome = await deliverer.deliver(sample_event(), Target(sub.url, policy))
    assert outcome is Outcome.DELIVERED
    assert waits == [3.0]


async def test_success_after_retries_is_delivered_k113(deliverer: Deliverer, waits: Sleeps) -> None:
    answers: Iterator[Reply] = iter([(503, [], b""), (404, [], b""), (200, [], b"")])
    async with RecordingSubscriber(lambda _: next(answers)) as sub:
        policy = DeliveryPolicy(retry=5, backoff_delay=0.2)
        outcome = await deliverer.deliver(sample_event(), Target(sub.url, policy))
    assert outcome is Outcome.DELIVERED
    assert len(sub.received) == 3
    assert waits == pytest.approx([0.2, 0.4])


async def test_connection_refused_is_retried_and_dead_lettered_with_code_500_k130(
    deliverer: Deliverer, waits: Sleeps
) -> None:
    url = refused_url()
    async with RecordingSubscriber() as dls:
        policy = DeliveryPolicy(retry=2, backoff_delay=0.1, dead_letter_uri=dls.url)
        outcome = await deliverer.deliver(sample_event(), Target(url, policy))
    assert outcome is Outcome.DEAD_LETTERED
    assert waits == pytest.approx([0.1, 0.2])  # retryable: retry times
    [dead] = dls.received
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert dead.headers["ce-knativeerrordest"].startswith("http")
    assert dead.event is not None and dead.event.get(ERROR_DEST) == url
    assert dead.headers["ce-knativeerrordata"] == ""


async def test_timeout_is_retried_as_maybe_delivered_k120(
    deliverer: Deliverer, waits: Sleeps
) -> None:
    release = asyncio.Event()

    async def hang(_: Received) -> Reply:
        await release.wait()
        return (202, [], b"")

    async with RecordingSubscriber(hang) as sub, RecordingSubscriber() as dls:
        policy = DeliveryPolicy(retry=1, timeout=0.2, dead_letter_uri=dls.url)
        outcome = await deliverer.deliver(sample_event(), Target(sub.url, policy))
        release.set()
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 2
    assert dls.received[0].headers["ce-knativeerrorcode"] == "500"


async def test_dead_letter_sink_failure_raises_nack_and_is_retried_k127(
    deliverer: Deliverer, waits: Sleeps
) -> None:
    async with RecordingSubscriber(status(500)) as sub, RecordingSubscriber(status(503)) as dls:
        policy = DeliveryPolicy(retry=2, backoff_delay=0.1, dead_letter_uri=dls.url)
        with pytest.raises(Nack) as nack:
            await deliverer.deliver(sample_event(), Target(sub.url, policy))
    assert nack.value.delay == 7.5
    assert len(sub.received) == 3
    assert len(dls.received) == 3  # the sink is retried with the same policy (K127)
    assert waits == pytest.approx([0.1, 0.2, 0.1, 0.2])


async def test_without_dead_letter_sink_the_event_is_dropped_and_logged_k125(
    deliverer: Deliverer, caplog: pytest.LogCaptureFixture
) -> None:
    event = sample_event()
    caplog.set_level(logging.WARNING, logger="broker.dataplane.dispatch.delivery")
    async with RecordingSubscriber(status(400)) as sub:
        outcome = await deliverer.deliver(event, Target(sub.url, DeliveryPolicy(retry=3)))
    assert outcome is Outcome.DROPPED
    [record] = [r for r in caplog.records if r.getMessage().endswith("event dropped")]
    assert record.levelno == logging.WARNING
    assert record.event_id == event.id  # type: ignore[attr-defined]
    assert record.destination == sub.url  # type: ignore[attr-defined]


async def test_every_failed_attempt_is_logged_with_its_reason_and_next_delay(
    deliverer: Deliverer, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING line per failed attempt: who, which attempt, why, and the wait before the next
    (null on the last); the retried attempts are not silent."""
    event = sample_event()
    caplog.set_level(logging.WARNING, logger="broker.dataplane.dispatch.delivery")
    answers = iter([(503, [], b""), (500, [], b""), (202, [], b"")])
    policy = DeliveryPolicy(retry=3, backoff_policy="linear", backoff_delay=0.5)
    async with RecordingSubscriber(lambda _: next(answers)) as sub:
        target = Target(sub.url, policy, log_fields=(("trigger", "default/all"),))
        assert await deliverer.deliver(event, target) is Outcome.DELIVERED
    attempts = [r for r in caplog.records if r.getMessage().startswith("delivery attempt failed")]
    assert [
        (r.attempt, r.attempts, r.status, r.reason, r.next_delay, r.trigger, r.event_id)  # type: ignore[attr-defined]
        for r in attempts
    ] == [
        (1, 4, 503, "HTTP 503", 0.5, "default/all", event.id),
        (2, 4, 500, "HTTP 500", 1.0, "default/all", event.id),
    ]
    assert all(r.levelno == logging.WARNING for r in attempts)


async def test_the_last_failed_attempt_says_no_retry_follows(
    deliverer: Deliverer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.dataplane.dispatch.delivery")
    async with RecordingSubscriber(status(400)) as sub:
        await deliverer.deliver(sample_event(), Target(sub.url, DeliveryPolicy(retry=3)))
    [last] = [r for r in caplog.records if r.getMessage().startswith("delivery attempt failed")]
    assert (last.attempt, last.status, last.retryable, last.next_delay) == (1, 400, False, None)  # type: ignore[attr-defined]


async def test_a_delivery_handed_back_raises_nack_instead_of_waiting_out_its_backoff(
    client: ReqwestClient,
) -> None:
    """Shutting down on a durable bus: a backoff in progress ends at once in a Nack, so the
    bus redelivers the event (after the restart, or to another replica)."""
    deliverer = Deliverer(client)  # the real sleep: the hand-back must cut it short
    hand_back = asyncio.Event()
    policy = DeliveryPolicy(retry=5, backoff_policy="linear", backoff_delay=30.0)
    async with RecordingSubscriber(status(503)) as sub:
        delivery = asyncio.create_task(
            deliverer.deliver(sample_event(), Target(sub.url, policy), hand_back=hand_back)
        )
        await sub.wait_for(1)
        hand_back.set()
        with pytest.raises(Nack) as nack:
            await asyncio.wait_for(delivery, 10)
    assert nack.value.delay == 0  # redelivered at once, as a fresh delivery
    assert len(sub.received) == 1  # no further attempt was made


# --- replies (K17-K19, K100-K110) --------------------------------------------------------------


def collector() -> tuple[list[CloudEvent], ReplyHandler]:
    replies: list[CloudEvent] = []

    async def on_reply(reply: CloudEvent, _ttl: AttributeValue | None) -> None:
        replies.append(reply)

    return replies, on_reply


@pytest.mark.parametrize("strict", [True, False])
async def test_2xx_with_a_cloudevent_goes_to_on_reply_k104_k109(
    deliverer: Deliverer, strict: bool
) -> None:
    replies, on_reply = collector()
    async with RecordingSubscriber(lambda _: reply_event_response(200)) as sub:
        target = Target(sub.url, DeliveryPolicy(), on_reply=on_reply, strict_reply=strict)
        outcome = await deliverer.deliver(sample_event(), target)
    assert outcome is Outcome.DELIVERED
    [reply] = replies
    assert reply.id == "reply-1"
    assert reply.type == "dev.cemesh.reply"
    assert reply.data == b"reply data"


async def test_202_body_is_never_a_reply_k18(deliverer: Deliverer) -> None:
    replies, on_reply = collector()
    async with RecordingSubscriber(lambda _: reply_event_response(202)) as sub:
        target = Target(sub.url, DeliveryPolicy(), on_reply=on_reply, strict_reply=True)
        outcome = await deliverer.deliver(sample_event(), target)
    assert outcome is Outcome.DELIVERED
    assert replies == []


async def test_reply_without_reply_handler_is_dropped_k109(deliverer: Deliverer) -> None:
    async with RecordingSubscriber(lambda _: reply_event_response(200)) as sub:
        outcome = await deliverer.deliver(sample_event(), Target(sub.url, DeliveryPolicy()))
    assert outcome is Outcome.DELIVERED


async def test_reply_storage_failure_retries_the_whole_delivery_k106(
    deliverer: Deliverer, waits: Sleeps
) -> None:
    stored: list[CloudEvent] = []
    failures = [PublishError("bus down"), PublishError("bus still down")]

    async def on_reply(reply: CloudEvent, _ttl: AttributeValue | None) -> None:
        if failures:
            raise failures.pop(0)
        stored.append(reply)

    async with RecordingSubscriber(lambda _: reply_event_response(200)) as sub:
        policy = DeliveryPolicy(retry=3, backoff_delay=0.2)
        outcome = await deliverer.deliver(
            sample_event(), Target(sub.url, policy, on_reply=on_reply)
        )
    assert outcome is Outcome.DELIVERED
    assert len(sub.received) == 3  # the subscriber is called again, not just the reply (K106)
    assert [r.id for r in stored] == ["reply-1"]
    assert waits == pytest.approx([0.2, 0.4])


async def test_reply_storage_failing_for_good_dead_letters_the_original_event_k128(
    deliverer: Deliverer,
) -> None:
    async def on_reply(reply: CloudEvent, _ttl: AttributeValue | None) -> None:
        raise PublishError("bus down")

    event = sample_event()
    async with (
        RecordingSubscriber(lambda _: reply_event_response(200)) as sub,
        RecordingSubscriber() as dls,
    ):
        policy = DeliveryPolicy(retry=1, dead_letter_uri=dls.url)
        outcome = await deliverer.deliver(event, Target(sub.url, policy, on_reply=on_reply))
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 2
    [dead] = dls.received
    assert_same_event(dead.event, event)
    assert dead.event is not None and dead.event.get(ERROR_DEST) == sub.url
    assert dead.headers["ce-knativeerrorcode"] == "500"


async def test_subscription_reply_is_posted_to_the_reply_uri_k109(
    client: ReqwestClient, deliverer: Deliverer
) -> None:
    async with (
        RecordingSubscriber(lambda _: reply_event_response(200)) as sub,
        RecordingSubscriber() as reply_sink,
    ):
        policy = DeliveryPolicy(retry=2)
        on_reply = reply_poster(client, reply_sink.url + "/next", policy)
        outcome = await deliverer.deliver(
            sample_event(), Target(sub.url, policy, on_reply=on_reply)
        )
    assert outcome is Outcome.DELIVERED
    [forwarded] = reply_sink.received
    assert forwarded.path == "/next"
    assert forwarded.event is not None and forwarded.event.id == "reply-1"


async def test_reply_uri_failure_retries_all_then_names_the_reply_uri_k110_k129(
    client: ReqwestClient, deliverer: Deliverer
) -> None:
    event = sample_event()
    async with (
        RecordingSubscriber(lambda _: reply_event_response(200)) as sub,
        RecordingSubscriber(status(500, b"reply sink broke")) as reply_sink,
        RecordingSubscriber() as dls,
    ):
        policy = DeliveryPolicy(retry=2, dead_letter_uri=dls.url)
        on_reply = reply_poster(client, reply_sink.url + "/next", policy)
        outcome = await deliverer.deliver(event, Target(sub.url, policy, on_reply=on_reply))
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 3  # the entire delivery is retried (K110)
    assert len(reply_sink.received) == 3
    [dead] = dls.received
    assert_same_event(dead.event, event)  # the original, not the reply (K128)
    assert dead.event is not None
    assert dead.event.get(ERROR_DEST) == reply_sink.url + "/next"  # K129
    assert dead.headers["ce-knativeerrorcode"] == "500"
    assert dead.event.get(ERROR_DATA) == base64.b64encode(b"reply sink broke").decode()


async def test_non_cloudevent_2xx_body_fails_a_trigger_delivery_k100(
    deliverer: Deliverer, waits: Sleeps
) -> None:
    async with RecordingSubscriber(status(200, b"ok thanks")) as sub, RecordingSubscriber() as dls:
        replies, on_reply = collector()
        policy = DeliveryPolicy(retry=2, dead_letter_uri=dls.url)
        target = Target(sub.url, policy, on_reply=on_reply, strict_reply=True)
        outcome = await deliverer.deliver(sample_event(), target)
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 3  # retried
    assert replies == []
    assert dls.received[0].headers["ce-knativeerrorcode"] == "502"


async def test_empty_2xx_body_is_success_for_a_trigger_k100(deliverer: Deliverer) -> None:
    replies, on_reply = collector()
    async with RecordingSubscriber(status(200)) as sub:
        target = Target(sub.url, DeliveryPolicy(retry=2), on_reply=on_reply, strict_reply=True)
        outcome = await deliverer.deliver(sample_event(), target)
    assert outcome is Outcome.DELIVERED
    assert len(sub.received) == 1
    assert replies == []


async def test_non_cloudevent_2xx_body_is_ignored_for_a_subscription_k102(
    deliverer: Deliverer,
) -> None:
    replies, on_reply = collector()
    async with RecordingSubscriber(status(200, b"ok thanks")) as sub:
        target = Target(sub.url, DeliveryPolicy(retry=2), on_reply=on_reply)
        outcome = await deliverer.deliver(sample_event(), target)
    assert outcome is Outcome.DELIVERED
    assert len(sub.received) == 1
    assert replies == []


@pytest.mark.parametrize("strict", [True, False])
async def test_malformed_reply_is_a_failed_delivery_k101(
    deliverer: Deliverer, strict: bool
) -> None:
    # Claims to be a binary-mode CloudEvent but has no id, source or type.
    malformed = status(200, b"x", headers=[("ce-specversion", "1.0")])
    async with RecordingSubscriber(malformed) as sub, RecordingSubscriber() as dls:
        replies, on_reply = collector()
        policy = DeliveryPolicy(retry=1, dead_letter_uri=dls.url)
        target = Target(sub.url, policy, on_reply=on_reply, strict_reply=strict)
        outcome = await deliverer.deliver(sample_event(), target)
    assert outcome is Outcome.DEAD_LETTERED
    assert len(sub.received) == 2
    assert replies == []


# --- in-flight limit per subscriber ------------------------------------------------------------


async def test_backoff_sleep_does_not_hold_the_subscriber_slot(client: ReqwestClient) -> None:
    """With one slot per subscriber, a delivery sleeping between retries lets others through."""
    sleeping = asyncio.Event()
    wake = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        sleeping.set()
        await wake.wait()

    deliverer = Deliverer(client, max_inflight_per_subscriber=1, sleep=blocking_sleep)
    first, second = sample_event(), sample_event()

    def respond(request: Received) -> Reply:
        failing = request.event is not None and request.event.id == first.id
        return (500 if failing else 202, [], b"")

    async with RecordingSubscriber(respond) as sub:
        policy = DeliveryPolicy(retry=1, backoff_delay=60.0)
        retrying = asyncio.create_task(deliverer.deliver(first, Target(sub.url, policy)))
        await asyncio.wait_for(sleeping.wait(), 5)
        assert (
            await asyncio.wait_for(
                deliverer.deliver(second, Target(sub.url + "/other-path", policy)), 5
            )
            is Outcome.DELIVERED
        )
        wake.set()
        assert await asyncio.wait_for(retrying, 5) is Outcome.DROPPED


async def test_in_flight_requests_per_subscriber_are_capped(client: ReqwestClient) -> None:
    deliverer = Deliverer(client, max_inflight_per_subscriber=2)
    release = asyncio.Event()
    in_flight = 0
    peak = 0

    async def slow(_: Received) -> Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return (202, [], b"")

    async with RecordingSubscriber(slow) as sub, RecordingSubscriber() as other_host:
        tasks = [
            asyncio.create_task(
                deliverer.deliver(sample_event(), Target(sub.url, DeliveryPolicy()))
            )
            for _ in range(5)
        ]
        await sub.wait_for(2)
        # Another host is not held up by the full one.
        other = Target(other_host.url.replace("127.0.0.1", "localhost"), DeliveryPolicy())
        assert await asyncio.wait_for(deliverer.deliver(sample_event(), other), 5) is (
            Outcome.DELIVERED
        )
        with pytest.raises(AssertionError, match="2 arrived"):
            await sub.wait_for(3, timeout=0.3)  # the other three wait for a slot
        release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert outcomes == [Outcome.DELIVERED] * 5
    assert peak == 2
    assert len(sub.received) == 5
