"""A source's EventSender retries by the delivery's rules (broker.dataplane.dispatch.retry, issue
12)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from broker.core.errors import DeliveryError
from broker.core.events import CloudEvent, new_event
from broker.dataplane.dispatch.client import ReqwestClient
from broker.features.sources.base import EventSender
from tests.support.subscriber import Received, RecordingSubscriber, Reply


@pytest.fixture
async def client() -> AsyncIterator[ReqwestClient]:
    http = ReqwestClient()
    yield http
    await http.close()


def statuses(*codes: int) -> Callable[[Received], Reply]:
    """Answer with ``codes`` in turn, then 202 for ever."""
    pending = list(codes)

    def respond(_: Received) -> Reply:
        return (pending.pop(0) if pending else 202, [], b"")

    return respond


def event() -> CloudEvent:
    return new_event(type="dev.cemesh.test", source="/tests/sender")


@pytest.mark.parametrize("code", [404, 408, 409, 429, 500, 503])
async def test_sender_retries_a_retryable_status_until_the_sink_takes_it(
    client: ReqwestClient, code: int
) -> None:
    async with RecordingSubscriber(statuses(code, code)) as sink:
        sender = EventSender(client, sink.url, {}, retries=3, backoff=0.01)
        await sender.send(event())
    assert len(sink.received) == 3


@pytest.mark.parametrize("code", [400, 401, 403, 413, 415, 422])
async def test_sender_gives_up_at_once_on_a_status_that_would_fail_again(
    client: ReqwestClient, code: int
) -> None:
    async with RecordingSubscriber(statuses(code)) as sink:
        sender = EventSender(client, sink.url, {}, retries=3, backoff=0.01)
        with pytest.raises(DeliveryError, match=f"sink answered {code}"):
            await sender.send(event())
    assert len(sink.received) == 1


async def test_sender_stops_after_its_retries_naming_the_last_answer(
    client: ReqwestClient,
) -> None:
    async with RecordingSubscriber(statuses(503, 503, 503)) as sink:
        sender = EventSender(client, sink.url, {}, retries=2, backoff=0.01)
        with pytest.raises(DeliveryError, match=r"not delivered to .*: sink answered 503"):
            await sender.send(event())
    assert len(sink.received) == 3


async def test_sender_applies_ce_overrides_to_every_event(client: ReqwestClient) -> None:
    async with RecordingSubscriber() as sink:
        await EventSender(client, sink.url, {"team": "blue"}).send(event())
    [received] = sink.received
    assert received.event is not None
    assert received.event.attributes["team"] == "blue"
