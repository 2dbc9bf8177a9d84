"""The nats bus adapter against a real NATS JetStream server: what the shared conformance suite
does not reach (de-duplication, ack_wait and in-progress, crashes and restarts, server layout).

The contract itself is checked by ``tests/conformance`` (row ``nats``); these tests use the same
inbox helpers and never sleep to wait for something (only to let ``ack_wait`` pass where that
passing is what is tested).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import nats.aio.msg
import nats.errors
import pytest
from nats.js import api

from adapters.nats import NatsBus
from adapters.nats.names import consumer_name, stream_name, subject_of
from adapters.nats.publisher import Publisher
from broker.core.errors import BusError, PublishError
from broker.core.events import BROKER_TTL
from broker.dataplane.bus import Message
from tests.conformance.inbox import WAIT, Inbox, sample_event, wait_set
from tests.support.servers.nats import NatsServer, _free_port

BusMaker = Callable[..., Awaitable[NatsBus]]


@pytest.fixture
async def make_bus(nats_server: NatsServer) -> AsyncIterator[BusMaker]:
    """Open NatsBuses on the session server (``url`` overridable); all closed after the test."""
    buses: list[NatsBus] = []

    async def make(**options: object) -> NatsBus:
        bus = NatsBus({"url": nats_server.url, "ack_wait": 2.0, **options})
        await bus.open()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


def fresh(prefix: str) -> str:
    return f"cemesh.{prefix}.{uuid.uuid4().hex}"


async def test_topic_and_group_layout_on_the_server(
    make_bus: BusMaker, nats_server: NatsServer
) -> None:
    """One file-backed stream per topic, one durable explicit-ack consumer per group that starts
    at the end of the stream, and the event's id and key in headers."""
    bus = await make_bus()
    topic, group = fresh("broker"), fresh("trigger")
    parked = await bus.subscribe(topic, group=group, handler=Inbox().handler)
    await parked.close()  # the group keeps what is published until it comes back
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream = await js.stream_info(stream_name(topic))
        assert stream.config.subjects == [subject_of(topic)] == [topic]
        assert stream.config.storage == api.StorageType.FILE
        assert stream.config.retention == api.RetentionPolicy.INTEREST
        consumer = await js.consumer_info(stream_name(topic), consumer_name(group))
        assert consumer.config.durable_name == consumer_name(group)
        assert consumer.config.deliver_policy == api.DeliverPolicy.NEW
        assert consumer.config.ack_policy == api.AckPolicy.EXPLICIT
        assert consumer.config.max_deliver == -1
        assert consumer.config.ack_wait == 2.0
        event = sample_event()
        await bus.publish(topic, event, key="k ü")
        raw = await js.get_msg(stream_name(topic), 1)
        assert raw.headers is not None
        assert raw.headers["Cemesh-Key"] == "k%20%C3%BC"
        assert event.id in raw.headers["Nats-Msg-Id"]
        inbox = Inbox()
        await bus.subscribe(topic, group=group, handler=inbox.handler)
        await inbox.wait_for_count(1)
        assert inbox.messages[0].key == "k ü"
    finally:
        await nc.close()


async def test_republished_event_is_stored_once_within_the_duplicate_window(
    make_bus: BusMaker,
) -> None:
    """Publishing the same event again (a producer retrying) is de-duplicated by Nats-Msg-Id;
    the same event with a decremented knativebrokerttl (a reply re-entering) is not."""
    bus = await make_bus()
    topic = fresh("broker")
    inbox = Inbox()
    await bus.subscribe(topic, group=fresh("trigger"), handler=inbox.handler)
    event = sample_event(1).evolve(set={BROKER_TTL: 255})
    await bus.publish(topic, event)
    await bus.publish(topic, event)
    await bus.publish(topic, event.evolve(set={"knativearrivaltime": "2030-01-01T00:00:00Z"}))
    await bus.publish(topic, event.evolve(set={BROKER_TTL: 254}))
    sentinel = sample_event(2)
    await bus.publish(topic, sentinel)
    # One consumer, one handler: delivery follows stream order, so once the sentinel is in,
    # any duplicate stored before it would be in too.
    await inbox.wait_for_ids({sentinel.id})
    assert inbox.ids() == [event.id, event.id, sentinel.id]
    assert [m.event.get(BROKER_TTL) for m in inbox.messages[:2]] == [255, 254]


async def test_publish_after_the_stream_was_deleted_behind_the_bus_is_retryable_then_works(
    make_bus: BusMaker, nats_server: NatsServer
) -> None:
    """A stream deleted by someone else: the next publish fails retryably (nothing stored it),
    the one after it creates the stream again and is stored; a batch likewise."""
    bus = await make_bus()
    topic = fresh("broker")
    await bus.publish(topic, sample_event(0))
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_stream(stream_name(topic))
        with pytest.raises(PublishError) as raised:
            await bus.publish(topic, sample_event(1))
        assert raised.value.retryable is True
        await bus.publish(topic, sample_event(2))
        await bus.publish_batch(topic, [sample_event(3), sample_event(4)])
        stream = await nc.jetstream().stream_info(stream_name(topic))
        assert stream.state.messages == 0  # interest retention, no group: nothing kept
        assert stream.state.last_seq == 3
    finally:
        await nc.close()


async def test_publish_unanswered_fails_with_a_timeout_and_an_answer_resolves_it(
    nats_server: NatsServer,
) -> None:
    """The bus's publisher fails a publish nobody answers once its timeout passed (swept), says
    no responders when nobody listens, and hands back the answer's bytes otherwise."""
    nc = await nats.connect(nats_server.url)
    publisher = Publisher(nc, timeout=0.3)
    try:
        await publisher.start()
        silent = await nc.subscribe("cemesh-test.silent")  # listens, never answers
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(await publisher.send("cemesh-test.silent", b"x", {}), WAIT)
        with pytest.raises(nats.errors.NoRespondersError):
            await asyncio.wait_for(await publisher.send("cemesh-test.nobody", b"x", {}), WAIT)

        async def echo(msg: nats.aio.msg.Msg) -> None:
            await nc.publish(msg.reply, b"answer:" + msg.data)

        await nc.subscribe("cemesh-test.echo", cb=echo)
        answer = await publisher.send("cemesh-test.echo", b"hi", {"Nats-Msg-Id": "1"})
        assert await asyncio.wait_for(answer, WAIT) == b"answer:hi"
        await silent.unsubscribe()
    finally:
        await publisher.close()
        await nc.close()


async def test_handler_busy_longer_than_ack_wait_is_not_redelivered(make_bus: BusMaker) -> None:
    """In-progress heartbeats keep a long delivery alive: no redelivery to the group's peer."""
    ack_wait = 1.0
    bus = await make_bus(ack_wait=ack_wait)
    topic, group = fresh("broker"), fresh("trigger")
    started, redelivered = asyncio.Event(), asyncio.Event()

    async def slow(message: Message) -> None:
        started.set()
        # Holding the message for 2.5 ack_waits is the point of this test.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 2.5 * ack_wait)

    async def peer(message: Message) -> None:
        redelivered.set()

    await bus.subscribe(topic, group=group, handler=slow)
    await bus.publish(topic, sample_event())
    await wait_set(started, "the slow handler to start")
    await bus.subscribe(topic, group=group, handler=peer)  # would get a redelivery
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(redelivered.wait(), 2.5 * ack_wait)
    assert not redelivered.is_set(), "redelivered while its handler was still working on it"


async def test_unacked_message_of_a_crashed_consumer_is_redelivered_after_ack_wait(
    make_bus: BusMaker,
) -> None:
    """A consumer that dies holding a message (no close, no nak) loses it to the group after
    ack_wait, with a higher attempt."""
    ack_wait = 1.0
    crashing = await make_bus(ack_wait=ack_wait)
    topic, group = fresh("broker"), fresh("trigger")
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    await crashing.subscribe(topic, group=group, handler=stuck)
    event = sample_event()
    await crashing.publish(topic, event)
    await wait_set(started, "the first handler to start")
    assert crashing._nc is not None
    await crashing._nc.close()  # the connection dies: no nak, no in-progress any more

    survivor = await make_bus(ack_wait=ack_wait)
    inbox = Inbox()
    await survivor.subscribe(topic, group=group, handler=inbox.handler)
    await inbox.wait_for_count(1, within=ack_wait + WAIT)
    assert inbox.ids() == [event.id]
    assert inbox.messages[0].attempt == 2


async def test_undecodable_message_never_reaches_the_handler_nor_blocks_others(
    make_bus: BusMaker, nats_server: NatsServer
) -> None:
    """Someone else's message on the topic's subject is kept (naked for later), not handed over
    and not dropped; the events behind it flow."""
    bus = await make_bus()
    topic = fresh("broker")
    inbox = Inbox()
    await bus.subscribe(topic, group=fresh("trigger"), handler=inbox.handler)
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().publish(subject_of(topic), b"not an envelope")
        event = sample_event()
        await bus.publish(topic, event)
        await inbox.wait_for_ids({event.id})
        assert inbox.ids() == [event.id]
        kept = await nc.jetstream().get_msg(stream_name(topic), 1)  # still there: not acked
        assert kept.data == b"not an envelope"
    finally:
        await nc.close()


async def test_ordered_group_has_one_delivery_in_flight_at_any_concurrency(
    make_bus: BusMaker,
) -> None:
    """ORDERED_BY_KEY is max_ack_pending=1: the group's next event waits for the ack."""
    bus = await make_bus()
    topic = fresh("broker")
    inbox = Inbox()
    in_flight, most = 0, 0

    async def handler(message: Message) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        inbox.record(message)

    group = fresh("trigger")
    await bus.subscribe(topic, group=group, handler=handler, concurrency=8, ordered=True)
    await bus.subscribe(topic, group=group, handler=handler, concurrency=8, ordered=True)
    events = [sample_event(i) for i in range(30)]
    for index, event in enumerate(events):
        await bus.publish(topic, event, key=f"k{index % 3}")
    await inbox.wait_for_count(len(events))
    assert inbox.ids() == [event.id for event in events]
    assert most == 1


async def test_open_without_server_fails_within_connect_timeout() -> None:
    """No server: open() raises a retryable BusError, bounded by connect_timeout."""
    bus = NatsBus({"url": f"nats://127.0.0.1:{_free_port()}", "connect_timeout": 0.5})
    started = time.monotonic()
    with pytest.raises(BusError) as raised:
        await bus.open()
    assert raised.value.retryable is True
    assert time.monotonic() - started < 3
    await bus.close()


async def test_events_survive_a_server_crash_and_live_subscriptions_resume(
    restartable_nats_server: NatsServer,
) -> None:
    """DURABLE: a group's unconsumed events survive a crash of the server (SIGKILL, restart on
    the same port and data dir); publishing while it is down fails retryably; a subscription
    that stayed open consumes again once the client reconnected."""
    server = restartable_nats_server
    options = {"url": server.url, "ack_wait": 2.0, "request_timeout": 0.5}
    topic, parked, live = fresh("broker"), fresh("parked"), fresh("live")
    bus = NatsBus(options)
    await bus.open()
    try:
        parked_sub = await bus.subscribe(topic, group=parked, handler=Inbox().handler)
        await parked_sub.close()  # the group stays on the server and keeps its events
        live_inbox = Inbox()
        await bus.subscribe(topic, group=live, handler=live_inbox.handler)
        before = [sample_event(i) for i in range(3)]
        for event in before:
            await bus.publish(topic, event)
        await live_inbox.wait_for_ids({e.id for e in before})

        await asyncio.to_thread(server.kill)
        with pytest.raises(PublishError) as raised:
            await bus.publish(topic, sample_event(99))
        assert raised.value.retryable is True
        await server.start_async()

        after = sample_event(100)
        deadline = time.monotonic() + WAIT
        while True:  # as a producer would: retry until the client has reconnected
            try:
                await bus.publish(topic, after)
                break
            except PublishError:
                if time.monotonic() > deadline:
                    raise
        await live_inbox.wait_for_ids({after.id})

        resumed = Inbox()
        await bus.subscribe(topic, group=parked, handler=resumed.handler)
        expected = {e.id for e in before} | {after.id}
        await resumed.wait_until(lambda: set(resumed.ids()) >= expected, "the parked events")
    finally:
        await bus.close()
