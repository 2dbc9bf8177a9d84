"""The loop guard and the reply handlers of broker/dataplane/reply.py (K45, K104-K109, issue 6)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.memory import MemoryBus
from broker.core.errors import BindingError, PublishError
from broker.core.events import ARRIVAL_TIME, BROKER_TTL, AttributeValue, CloudEvent, new_event
from broker.core.metrics import Metrics
from broker.core.spec import BrokerSpec
from broker.dataplane.bus import Message
from broker.dataplane.reply import (
    BrokerReentry,
    ReplyHandler,
    TtlExhausted,
    apply_broker_ttl,
    passes_loop_guard,
    subscription_reply,
    trigger_reply,
)

MAX_TTL = 255


def event(ttl: AttributeValue | None = None) -> CloudEvent:
    built = new_event(type="test.reply", source="/tests")
    if ttl is not None:
        built.attributes[BROKER_TTL] = ttl
    return built


def test_missing_ttl_is_set_to_the_maximum_k45() -> None:
    looping = event()
    apply_broker_ttl(looping, MAX_TTL)
    assert looping.attributes[BROKER_TTL] == MAX_TTL


@given(st.integers(min_value=2, max_value=10_000))
def test_present_ttl_is_decremented_by_one_k107(ttl: int) -> None:
    looping = event(ttl)
    apply_broker_ttl(looping, MAX_TTL)
    assert looping.attributes[BROKER_TTL] == ttl - 1


@given(st.integers(max_value=1))
def test_ttl_running_out_refuses_the_event_k45(ttl: int) -> None:
    with pytest.raises(TtlExhausted, match="ran out"):
        apply_broker_ttl(event(ttl), MAX_TTL)


def test_ttl_as_decimal_text_counts_like_an_integer() -> None:
    looping = event("7")
    apply_broker_ttl(looping, MAX_TTL)
    assert looping.attributes[BROKER_TTL] == 6


@pytest.mark.parametrize("raw", ["seven", "1.5", ""])
def test_ttl_that_is_not_an_integer_is_a_binding_error_naming_the_extension(raw: str) -> None:
    with pytest.raises(BindingError, match=BROKER_TTL) as caught:
        apply_broker_ttl(event(raw), MAX_TTL)
    assert not isinstance(caught.value, TtlExhausted)


def test_loop_guard_drops_an_exhausted_reply_logs_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="broker.dataplane.reply"):
        passed = passes_loop_guard(event(1), MAX_TTL, metrics, ("broker", "ns/default"))
    assert passed is False
    assert metrics.loops_stopped == 1
    [record] = [r for r in caplog.records if r.message.startswith("reply dropped")]
    assert record.broker == "ns/default"  # type: ignore[attr-defined]


def test_loop_guard_passes_a_live_reply_without_counting() -> None:
    metrics = Metrics()
    reply = event(3)
    assert passes_loop_guard(reply, MAX_TTL, metrics, ("subscription", "ns/s")) is True
    assert reply.attributes[BROKER_TTL] == 2
    assert metrics.loops_stopped == 0


class Recorder:
    """A reply sink and a ReplyToBroker in one, recording what reaches them."""

    def __init__(self) -> None:
        self.posted: list[CloudEvent] = []
        self.to_broker: list[tuple[str, str, CloudEvent]] = []

    async def post(self, reply: CloudEvent, _ttl: AttributeValue | None) -> None:
        self.posted.append(reply)

    async def reply_to_broker(self, namespace: str, name: str, reply: CloudEvent) -> bool:
        self.to_broker.append((namespace, name, reply))
        return True


async def test_trigger_reply_carries_the_ttl_of_the_event_it_answers_k107() -> None:
    sink = Recorder()
    on_reply = trigger_reply(sink.reply_to_broker, "ns", "default")
    await on_reply(event(), 9)
    [(namespace, name, reply)] = sink.to_broker
    assert (namespace, name, reply.attributes[BROKER_TTL]) == ("ns", "default", 9)


def subscription_handler(
    sink: Recorder, metrics: Metrics, route: tuple[str, str, str] | None
) -> ReplyHandler:
    return subscription_reply(
        sink.post,
        route,
        reply_to_broker=sink.reply_to_broker,
        max_ttl=MAX_TTL,
        metrics=metrics,
        subscription="ns/sub",
    )


async def test_subscription_reply_to_an_outside_uri_without_ttl_goes_out_unaltered() -> None:
    sink = Recorder()
    await subscription_handler(sink, Metrics(), None)(event(), None)
    [reply] = sink.posted
    assert BROKER_TTL not in reply.attributes


async def test_subscription_reply_inherits_the_decremented_ttl_issue_6() -> None:
    sink = Recorder()
    await subscription_handler(sink, Metrics(), None)(event(), 5)
    [reply] = sink.posted
    assert reply.attributes[BROKER_TTL] == 4


async def test_subscription_reply_into_a_channel_gets_a_ttl_even_when_the_event_had_none() -> None:
    sink = Recorder()
    await subscription_handler(sink, Metrics(), ("channel", "ns", "c"))(event(), None)
    [reply] = sink.posted
    assert reply.attributes[BROKER_TTL] == MAX_TTL


async def test_subscription_reply_whose_ttl_ran_out_is_dropped_and_counted_issue_6() -> None:
    sink, metrics = Recorder(), Metrics()
    await subscription_handler(sink, metrics, ("channel", "ns", "c"))(event(), 1)
    assert sink.posted == []
    assert metrics.loops_stopped == 1


async def test_subscription_reply_with_a_non_integer_ttl_counts_from_the_top() -> None:
    sink = Recorder()
    await subscription_handler(sink, Metrics(), None)(event(), "many")
    [reply] = sink.posted
    assert reply.attributes[BROKER_TTL] == MAX_TTL


async def test_subscription_reply_into_a_broker_takes_the_trigger_path() -> None:
    sink = Recorder()
    await subscription_handler(sink, Metrics(), ("broker", "ns", "default"))(event(), 4)
    assert sink.posted == []
    [(namespace, name, reply)] = sink.to_broker
    assert (namespace, name, reply.attributes[BROKER_TTL]) == ("ns", "default", 4)


async def test_reentry_publishes_with_ttl_and_arrival_time_k44_k45() -> None:
    bus = MemoryBus({})
    received: list[CloudEvent] = []
    arrived = asyncio.Event()

    async def handler(message: Message) -> None:
        received.append(message.event)
        arrived.set()

    subscription = await bus.subscribe("topic-a", group="g", handler=handler, concurrency=1)
    reentry = BrokerReentry(buses={"memory": bus}, metrics=Metrics(), max_ttl=MAX_TTL)
    reentry.brokers = {("ns", "default"): BrokerSpec("ns", "default", "uid", "topic-a")}
    try:
        assert await reentry.publish("ns", "default", event(3)) is True
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await subscription.close()
        await bus.close()
    [published] = received
    assert published.attributes[BROKER_TTL] == 2
    assert ARRIVAL_TIME in published.attributes


async def test_reentry_into_a_missing_broker_is_a_retryable_publish_error_k106() -> None:
    reentry = BrokerReentry(buses={}, metrics=Metrics(), max_ttl=MAX_TTL)
    with pytest.raises(PublishError, match="ns/gone does not exist") as caught:
        await reentry.publish("ns", "gone", event())
    assert caught.value.retryable


async def test_reentry_drops_a_looping_reply_without_publishing() -> None:
    metrics = Metrics()
    reentry = BrokerReentry(buses={}, metrics=metrics, max_ttl=MAX_TTL)
    reentry.brokers = {("ns", "default"): BrokerSpec("ns", "default", "uid", "topic-a")}
    assert await reentry.publish("ns", "default", event(1)) is False
    assert metrics.loops_stopped == 1
