"""The redis bus adapter against a real Redis server: what the shared conformance suite does not
reach (server layout, the visibility timeout and keep-alives, takeover from a crashed consumer,
long nack delays, trimming, crashes and restarts of the server).

The contract itself is checked by ``tests/conformance`` (row ``redis``); these tests use the same
inbox helpers and never sleep to wait for something (only to let a visibility timeout pass where
that passing is what is tested).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis

from adapters.redis_streams import RedisStreamsBus
from adapters.redis_streams.policy import EVENT_FIELD, KEY_FIELD, group_name, stream_key
from adapters.redis_streams.settler import RELEASED_CONSUMER
from broker.core.errors import BusError, PublishError, SubscribeError
from broker.core.events import decode_envelope
from broker.dataplane.bus import Message, Nack
from tests.conformance.inbox import WAIT, Inbox, sample_event, wait_set
from tests.support.servers.redis import RedisServer, _free_port

BusMaker = Callable[..., Awaitable[RedisStreamsBus]]
# redis-py types every reply as a union of all reply shapes; these tests index replies freely.
RawRedis = Any


@pytest.fixture
async def make_bus(redis_server: RedisServer) -> AsyncIterator[BusMaker]:
    """Open RedisStreamsBuses on the session server (options overridable); closed afterwards."""
    buses: list[RedisStreamsBus] = []

    async def make(**options: object) -> RedisStreamsBus:
        bus = RedisStreamsBus({"url": redis_server.url, "visibility_timeout": 2.0, **options})
        await bus.open()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[RawRedis]:
    """A plain redis-py client on the session server, to look at (and tamper with) streams."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def fresh(prefix: str) -> str:
    return f"cemesh.{prefix}.{uuid.uuid4().hex}"


async def consumers(client: RawRedis, topic: str, group: str) -> dict[str, int]:
    """The group's consumers and how many entries are pending on each."""
    found = await client.xinfo_consumers(stream_key(topic), group_name(group))
    return {c["name"].decode(): int(c["pending"]) for c in found}


async def test_topic_and_group_layout_on_the_server(make_bus: BusMaker, raw: RawRedis) -> None:
    """A stream named as the topic, a group named as the group created at the end of the stream
    before subscribe returns, one entry per event (envelope + key fields), one consumer per
    subscription, deleted again by a clean close."""
    bus = await make_bus()
    topic, group = fresh("broker"), fresh("trigger")
    before = sample_event(0)
    await bus.publish(topic, before)  # published before the group exists: not for it
    inbox = Inbox()
    subscription = await bus.subscribe(topic, group=group, handler=inbox.handler)
    groups = await raw.xinfo_groups(topic)
    assert [g["name"].decode() for g in groups] == [group]
    last_id = (await raw.xinfo_stream(topic))["last-generated-id"]
    assert groups[0]["last-delivered-id"] == last_id  # created at $
    event = sample_event(1)
    await bus.publish(topic, event, key="clé 🔑")
    await bus.publish(topic, sample_event(2))  # no key: no key field
    await inbox.wait_for_count(2)
    assert before.id not in inbox.ids()
    entries = await raw.xrange(topic)
    assert [set(fields) for _, fields in entries][1:] == [{EVENT_FIELD, KEY_FIELD}, {EVENT_FIELD}]
    assert decode_envelope(entries[1][1][EVENT_FIELD]) == event
    assert entries[1][1][KEY_FIELD] == "clé 🔑".encode()
    assert inbox.messages[0].key == "clé 🔑" and inbox.messages[1].key is None
    assert len(await consumers(raw, topic, group)) == 1
    await subscription.close()
    assert await consumers(raw, topic, group) == {}  # nothing pending: consumer deleted
    assert (await raw.xpending(topic, group))["pending"] == 0


async def test_group_keeps_events_published_while_no_subscription_is_live(
    make_bus: BusMaker,
) -> None:
    """A group outlives its subscriptions: what is published meanwhile reaches the next one."""
    bus = await make_bus()
    topic, group = fresh("broker"), fresh("trigger")
    await (await bus.subscribe(topic, group=group, handler=Inbox().handler)).close()
    events = [sample_event(i) for i in range(5)]
    for event in events:
        await bus.publish(topic, event)
    other = await make_bus()  # another replica
    inbox = Inbox()
    await other.subscribe(topic, group=group, handler=inbox.handler)
    await inbox.wait_for_ids({e.id for e in events})
    assert all(m.attempt == 1 for m in inbox.messages)


async def test_close_releases_held_messages_for_immediate_takeover(
    make_bus: BusMaker, raw: RawRedis
) -> None:
    """Closing never acks: a stuck handler's message goes to the group's other subscriber at
    once (well before the visibility timeout), and the closed consumer is gone."""
    bus = await make_bus(visibility_timeout=30.0, claim_interval=0.1)
    topic, group = fresh("broker"), fresh("trigger")
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    closing = await bus.subscribe(topic, group=group, handler=stuck)
    event = sample_event()
    await bus.publish(topic, event)
    await wait_set(started, "the stuck handler to start")
    peer = Inbox()
    await bus.subscribe(topic, group=group, handler=peer.handler)
    began = time.monotonic()
    await closing.close()
    await peer.wait_for_count(1, within=5.0)
    assert time.monotonic() - began < 5.0  # not the 30 s visibility timeout
    assert peer.ids() == [event.id] and peer.messages[0].attempt == 2
    assert len(await consumers(raw, topic, group)) == 2  # the peer and the placeholder
    assert RELEASED_CONSUMER in await consumers(raw, topic, group)


async def test_handler_busy_longer_than_visibility_timeout_is_not_redelivered(
    make_bus: BusMaker,
) -> None:
    """Keep-alives hold a long delivery: no takeover by the group's peer meanwhile."""
    visibility = 0.6
    bus = await make_bus(visibility_timeout=visibility, claim_interval=0.05)
    topic, group = fresh("broker"), fresh("trigger")
    started, redelivered = asyncio.Event(), asyncio.Event()

    async def slow(message: Message) -> None:
        started.set()
        # Holding the message for 4 visibility timeouts is the point of this test.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 4 * visibility)

    async def peer(message: Message) -> None:
        redelivered.set()

    await bus.subscribe(topic, group=group, handler=slow)
    await bus.publish(topic, sample_event())
    await wait_set(started, "the slow handler to start")
    await bus.subscribe(topic, group=group, handler=peer)  # would take it over
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(redelivered.wait(), 4 * visibility)
    assert not redelivered.is_set(), "taken over while its handler was still working on it"


async def test_pending_message_of_a_crashed_consumer_is_taken_over_after_visibility_timeout(
    make_bus: BusMaker, raw: RawRedis
) -> None:
    """A consumer that read a message and died (no ack, no release: here a bare XREADGROUP) loses
    it to the group's live subscriptions once it was pending for the visibility timeout, with
    the server's delivery count as attempt."""
    visibility = 0.5
    bus = await make_bus(visibility_timeout=visibility, claim_interval=0.05)
    topic, group = fresh("broker"), fresh("trigger")
    await (await bus.subscribe(topic, group=group, handler=Inbox().handler)).close()
    event = sample_event()
    await bus.publish(topic, event)
    read = await raw.xreadgroup(group, "crashed-replica", {topic: ">"}, count=1)
    read_at = time.monotonic()
    assert len(read[0][1]) == 1
    inbox = Inbox()
    survivor = await bus.subscribe(topic, group=group, handler=inbox.handler)
    await inbox.wait_for_count(1)
    assert time.monotonic() - read_at >= visibility - 0.02
    assert inbox.ids() == [event.id]
    assert inbox.messages[0].attempt == 2
    await survivor.close()  # acks are sent in the background; close sends what is left
    assert (await raw.xpending(topic, group))["pending"] == 0  # acked by the survivor


async def test_nack_delay_longer_than_visibility_timeout_is_honoured(make_bus: BusMaker) -> None:
    """NACK_DELAY beyond the visibility timeout: the message is held (and kept alive) locally,
    so that neither this subscription nor a peer gets it before the delay."""
    visibility, delay = 0.4, 1.5
    bus = await make_bus(visibility_timeout=visibility, claim_interval=0.05)
    topic, group = fresh("broker"), fresh("trigger")
    loop = asyncio.get_running_loop()
    inbox = Inbox()
    times: list[float] = []

    async def nack_first(message: Message) -> None:
        times.append(loop.time())
        inbox.record(message)
        if len(inbox.messages) == 1:
            raise Nack(delay)

    await bus.subscribe(topic, group=group, handler=nack_first)
    await bus.subscribe(topic, group=group, handler=nack_first)  # a peer that could take it
    await bus.publish(topic, sample_event())
    await inbox.wait_for_count(2, within=delay + WAIT)
    assert times[1] - times[0] >= delay - 0.02
    assert [m.attempt for m in inbox.messages] == [1, 2]


async def test_undecodable_entry_never_reaches_the_handler_nor_blocks_others(
    make_bus: BusMaker, raw: RawRedis
) -> None:
    """Someone else's entry in the stream is kept pending (not handed over, not dropped); the
    events behind it flow."""
    bus = await make_bus()
    topic, group = fresh("broker"), fresh("trigger")
    inbox = Inbox()
    await bus.subscribe(topic, group=group, handler=inbox.handler)
    foreign = await raw.xadd(topic, {"payload": b"not an envelope"})
    event = sample_event()
    await bus.publish(topic, event)
    await inbox.wait_for_ids({event.id})
    assert inbox.ids() == [event.id]
    pending = await raw.xpending_range(topic, group, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [foreign]


async def test_ordered_subscribe_is_refused(make_bus: BusMaker) -> None:
    """No ORDERED_BY_KEY: ``ordered=True`` is a terminal SubscribeError, not a silent no-op."""
    bus = await make_bus()
    with pytest.raises(SubscribeError) as raised:
        await bus.subscribe(
            fresh("broker"), group=fresh("trigger"), handler=Inbox().handler, ordered=True
        )
    assert raised.value.retryable is False


def _stream_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence): ids compare numerically, not as text
    (``...-6`` comes before ``...-14``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence)


async def test_trim_deletes_only_entries_every_group_acked(
    make_bus: BusMaker, raw: RawRedis
) -> None:
    """Trimming keeps every entry some group still needs (pending or not yet delivered) and
    deletes the ones every group acked; a stream without groups is trimmed whole."""
    bus = await make_bus(trim_interval=0)  # trimmed by hand below
    topic, group = fresh("broker"), fresh("trigger")
    hold = asyncio.Event()
    held_seq = 250
    inbox = Inbox()

    async def handler(message: Message) -> None:
        if message.event.get("seq") == held_seq:
            await hold.wait()
        inbox.record(message)

    await bus.subscribe(topic, group=group, handler=handler, concurrency=8)
    events = [sample_event(i) for i in range(600)]
    await asyncio.gather(*(bus.publish(topic, e) for e in events))
    await inbox.wait_for_count(len(events) - 1)
    held_id = (await raw.xpending_range(topic, group, "-", "+", 10))[0]["message_id"]
    # Approximate trimming deletes whole nodes (100 entries): some, and none from the held one.
    assert await bus.trim(topic) >= 100
    remaining = await raw.xrange(topic, count=1)
    assert _stream_id(remaining[0][0]) <= _stream_id(held_id)
    assert decode_envelope((await raw.xrange(topic, held_id, held_id))[0][1][EVENT_FIELD])
    hold.set()
    await inbox.wait_for_count(len(events))
    await bus.trim(topic)
    assert await raw.xlen(topic) < 200

    lonely = fresh("broker")  # no group: nobody will ever read these
    await asyncio.gather(*(bus.publish(lonely, sample_event(i)) for i in range(300)))
    await bus.trim(lonely)
    assert await raw.xlen(lonely) < 100


async def test_maxlen_caps_each_stream_approximately(make_bus: BusMaker, raw: RawRedis) -> None:
    """``maxlen`` adds ``MAXLEN ~`` to every XADD."""
    bus = await make_bus(maxlen=100)
    topic = fresh("broker")
    await asyncio.gather(*(bus.publish(topic, sample_event(i)) for i in range(1000)))
    assert 100 <= await raw.xlen(topic) < 300


async def test_open_without_server_fails_retryably_and_publish_says_so() -> None:
    """No server: open() raises a retryable BusError, publish a retryable PublishError."""
    bus = RedisStreamsBus({"url": f"redis://127.0.0.1:{_free_port()}/0", "connect_timeout": 0.5})
    started = time.monotonic()
    with pytest.raises(BusError) as raised:
        await bus.open()
    assert raised.value.retryable is True
    with pytest.raises(PublishError) as published:
        await bus.publish("cemesh.broker.x", sample_event())
    assert published.value.retryable is True
    assert time.monotonic() - started < 10
    await bus.close()


async def test_events_survive_a_server_crash_and_live_subscriptions_resume(
    restartable_redis_server: RedisServer,
) -> None:
    """DURABLE with an fsynced AOF: a group's unconsumed events survive a crash of the server
    (SIGKILL, restart on the same port and data dir); publishing while it is down fails
    retryably; a subscription that stayed open consumes again once the server is back."""
    server = restartable_redis_server
    options = {"url": server.url, "visibility_timeout": 2.0, "connect_timeout": 0.5}
    topic, parked, live = fresh("broker"), fresh("parked"), fresh("live")
    bus = RedisStreamsBus(options)
    await bus.open()
    try:
        await (await bus.subscribe(topic, group=parked, handler=Inbox().handler)).close()
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
        await bus.publish(topic, after)  # the client reconnects by itself
        await live_inbox.wait_for_ids({after.id})

        resumed = Inbox()
        await bus.subscribe(topic, group=parked, handler=resumed.handler)
        expected = {e.id for e in before} | {after.id}
        await resumed.wait_until(lambda: set(resumed.ids()) >= expected, "the parked events")
    finally:
        await bus.close()
