"""What the Kafka bus promises beyond the shared contract (its docstring, ``adapters/kafka/``).

The contract itself is checked by ``test_bus_contract.py`` like for every adapter; these tests
run against the session's real Tansu server and cover the Kafka adapter's own choices: records
in the CloudEvents Kafka binding (C71-C73), topics created with the configured partitions,
offsets committed only over the settled prefix, a group resuming from its committed offset in a
new bus (a restarted cemesh), revoked handlers cancelled after the grace period, records that
are not events skipped, and error mapping.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from adapters.kafka import KafkaBus
from adapters.kafka.wire import TYPES_HEADER, kafka_topic
from broker.core.errors import BusError, PublishError
from broker.core.events import CloudEvent
from broker.dataplane.bus import Message
from tests.conformance.inbox import WAIT, Inbox, sample_event, wait_set
from tests.support.servers.kafka import KafkaServer, _free_port

Names = Callable[[str], str]
MakeBus = Callable[..., Awaitable[KafkaBus]]


@pytest.fixture(params=["aiokafka", "confluent"])
def driver(request: pytest.FixtureRequest) -> str:
    """Every test here runs with each client library the bus can use (``driver``)."""
    return str(request.param)


@pytest.fixture
async def make_bus(kafka_server: KafkaServer, driver: str) -> AsyncIterator[MakeBus]:
    """Open KafkaBuses on the session's server (test timeouts; ``options`` override them)."""
    buses: list[KafkaBus] = []

    async def make(**options: Any) -> KafkaBus:
        bus = KafkaBus(
            {
                "driver": driver,
                "bootstrap_servers": kafka_server.bootstrap_servers,
                "session_timeout_ms": 1000,
                "heartbeat_interval_ms": 100,
                "request_timeout_ms": 10_000,
                **options,
            }
        )
        buses.append(bus)
        await bus.open()
        return bus

    yield make
    for bus in buses:
        await bus.close()


async def read_raw(server: KafkaServer, topic: str, count: int) -> list[Any]:
    """The first ``count`` records of ``topic`` as a plain Kafka consumer sees them."""
    consumer = AIOKafkaConsumer(
        kafka_topic(topic), bootstrap_servers=server.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(WAIT):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def committed(server: KafkaServer, topic: str, group: str) -> dict[int, int | None]:
    """The group's committed offset of every partition of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=server.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(kafka_topic(topic))
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(kafka_topic(topic)) or set()
        tps = [TopicPartition(kafka_topic(topic), p) for p in sorted(partitions)]
        consumer.assign(tps)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def wait_committed(
    server: KafkaServer, topic: str, group: str, condition: Callable[[dict[int, int | None]], bool]
) -> dict[int, int | None]:
    """Poll the group's committed offsets until ``condition`` holds (bounded by WAIT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        offsets = await committed(server, topic, group)
        if condition(offsets):
            return offsets
        if loop.time() > deadline:
            pytest.fail(f"committed offsets never satisfied the condition: {offsets}")
        await asyncio.sleep(0.05)  # polling interval of a bounded wait on the server's state


async def test_records_use_the_kafka_binary_binding_and_the_key_C71_C73(
    make_bus: MakeBus, kafka_server: KafkaServer, topic: str
) -> None:
    """C71: value = data, content-type header, ce_ headers; C73: the key is the record key."""
    bus = await make_bus()
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": "wire-1",
            "source": "/s",
            "type": "t",
            "datacontenttype": "text/plain",
            "partitionkey": "order-7",
            "count": 3,
        },
        b"hello",
    )
    await bus.publish(topic, event, key="order-7")
    [record] = await read_raw(kafka_server, topic, 1)
    headers = dict(record.headers)
    assert record.key == b"order-7"
    assert record.value == b"hello"
    assert headers["content-type"] == b"text/plain"
    assert headers["ce_id"] == b"wire-1"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_partitionkey"] == b"order-7"
    assert headers["ce_count"] == b"3"
    assert json.loads(headers[TYPES_HEADER]) == {"count": "Integer"}


async def test_events_of_other_producers_are_delivered_binary_and_structured_C71_C72(
    make_bus: MakeBus, kafka_server: KafkaServer, topic: str, unique: Names
) -> None:
    """Records another Kafka producer wrote in either CloudEvents mode reach the handler."""
    bus = await make_bus()
    inbox = Inbox()
    await bus.subscribe(topic, group=unique("group"), handler=inbox.handler)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers)
    await producer.start()
    try:
        binary_headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"foreign-binary"),
            ("ce_source", b"/other"),
            ("ce_type", b"t"),
            ("content-type", b"text/plain"),
        ]
        await producer.send_and_wait(kafka_topic(topic), b"hi", key=b"k", headers=binary_headers)
        structured = {"specversion": "1.0", "id": "foreign-structured", "source": "/o",
                      "type": "t", "data": {"x": 1}}  # fmt: skip
        await producer.send_and_wait(
            kafka_topic(topic),
            json.dumps(structured).encode(),
            headers=[("content-type", b"application/cloudevents+json; charset=UTF-8")],
        )
    finally:
        await producer.stop()
    await inbox.wait_for_ids({"foreign-binary", "foreign-structured"})
    by_id = {m.event.id: m for m in inbox.messages}
    assert by_id["foreign-binary"].event.data == b"hi"
    assert by_id["foreign-binary"].event.datacontenttype == "text/plain"
    assert by_id["foreign-binary"].key == "k"
    assert json.loads(by_id["foreign-structured"].event.data or b"") == {"x": 1}


async def test_record_that_is_not_an_event_is_skipped_and_logged(
    make_bus: MakeBus,
    kafka_server: KafkaServer,
    topic: str,
    unique: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record that is no CloudEvent cannot be delivered: logged, passed over, not blocking."""
    bus = await make_bus(num_partitions=1)
    group = unique("group")
    inbox = Inbox()
    await bus.subscribe(topic, group=group, handler=inbox.handler)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(kafka_topic(topic), b"not an event")
    finally:
        await producer.stop()
    after = sample_event(1)
    with caplog.at_level(logging.ERROR, logger="adapters.kafka"):
        await bus.publish(topic, after)
        await inbox.wait_for_ids({after.id})
    assert inbox.ids() == [after.id]
    assert any("not a CloudEvent" in r.getMessage() for r in caplog.records)
    await wait_committed(kafka_server, topic, group, lambda offsets: offsets.get(0) == 2)


async def test_topic_is_created_with_the_configured_partitions(
    make_bus: MakeBus, kafka_server: KafkaServer, unique: Names
) -> None:
    """Topics are created on first use with ``num_partitions``; cemesh names are mapped."""
    topic = unique("topic") + "/with ünïcode_and_slash"
    bus = await make_bus(num_partitions=5)
    inbox = Inbox()
    await bus.subscribe(topic, group=unique("group"), handler=inbox.handler)  # before publish
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_server.bootstrap_servers)
    await admin.start()
    try:
        [described] = await admin.describe_topics([kafka_topic(topic)])
    finally:
        await admin.close()
    assert described["error_code"] == 0
    assert len(described["partitions"]) == 5
    events = [sample_event(i) for i in range(10)]
    for index, event in enumerate(events):
        await bus.publish(topic, event, key=f"k{index}")
    await inbox.wait_for_ids({e.id for e in events})


async def test_offsets_are_committed_only_over_the_settled_prefix(
    make_bus: MakeBus, kafka_server: KafkaServer, topic: str, unique: Names
) -> None:
    """The commit point never passes a message still in a handler, though later ones are acked."""
    bus = await make_bus(num_partitions=1)
    group = unique("group")
    release = asyncio.Event()
    inbox = Inbox()
    held = sample_event(1)

    async def handler(message: Message) -> None:
        if message.event.id == held.id:
            await release.wait()
        inbox.record(message)

    await bus.subscribe(topic, group=group, handler=handler, concurrency=4)
    start = (await committed(kafka_server, topic, group))[0]
    assert start is not None  # subscribe fixed the group's position before returning
    events = [sample_event(0), held, sample_event(2), sample_event(3), sample_event(4)]
    for event in events:
        await bus.publish(topic, event)
    await inbox.wait_for_ids({e.id for e in events} - {held.id})
    # The first event is acked and committed; the held one stops the commit point.
    await wait_committed(kafka_server, topic, group, lambda o: o[0] == start + 1)
    release.set()
    await inbox.wait_for_ids({e.id for e in events})
    await wait_committed(kafka_server, topic, group, lambda o: o[0] == start + len(events))


async def test_group_resumes_from_its_committed_offset_in_a_new_bus(
    make_bus: MakeBus, topic: str, unique: Names
) -> None:
    """DURABLE: a restarted cemesh (a new bus) gets what its group had not acked, and no more."""
    group = unique("group")
    first_bus = await make_bus()
    first = Inbox()
    stuck_started = asyncio.Event()
    stuck = sample_event(99)

    async def handler(message: Message) -> None:
        if message.event.id == stuck.id:
            stuck_started.set()
            await asyncio.Event().wait()  # never acked: the bus closes under it
        first.record(message)

    await first_bus.subscribe(topic, group=group, handler=handler, concurrency=4)
    acked = [sample_event(i) for i in range(10)]
    for event in acked:
        await first_bus.publish(topic, event, key=event.id)
    await first.wait_for_ids({e.id for e in acked})
    await first_bus.publish(topic, stuck, key=stuck.id)
    await wait_set(stuck_started, "the stuck handler to start")
    await first_bus.close()

    second_bus = await make_bus()
    later = [sample_event(i) for i in range(100, 105)]
    for event in later:  # published while the group has no member
        await second_bus.publish(topic, event, key=event.id)
    second = Inbox()
    await second_bus.subscribe(topic, group=group, handler=second.handler)
    expected = {e.id for e in later} | {stuck.id}
    await second.wait_for_ids(expected)
    await asyncio.sleep(0.2)  # room for a wrongful redelivery of an acked event to show up
    assert sorted(second.ids()) == sorted(expected)


async def test_group_starts_after_a_batch_published_before_it_and_resumes_after_it(
    make_bus: MakeBus, kafka_server: KafkaServer, topic: str, unique: Names
) -> None:
    """A new group gets only what is published after ``subscribe``, even when what came before
    is one multi-record batch (whose start Tansu lists as the partition's end), and a group
    whose committed offset is the end of such a batch resumes there, not inside the batch."""
    bus = await make_bus(num_partitions=1)
    earlier = [sample_event(i) for i in range(20)]
    await bus.publish_batch(topic, earlier)  # one record batch
    group = unique("group")
    first = Inbox()
    await bus.subscribe(topic, group=group, handler=first.handler)
    now = sample_event(100)
    await bus.publish(topic, now)
    await first.wait_for_ids({now.id})
    await asyncio.sleep(0.2)  # room for an earlier event to show up wrongly
    assert first.ids() == [now.id]

    acked = [sample_event(i) for i in range(200, 220)]
    await bus.publish_batch(topic, acked)
    await first.wait_for_ids({now.id} | {e.id for e in acked})
    await wait_committed(kafka_server, topic, group, lambda o: o[0] == 41)  # 20 + 1 + 20
    await bus.close()
    second_bus = await make_bus(num_partitions=1)
    second = Inbox()
    await second_bus.subscribe(topic, group=group, handler=second.handler)
    last = sample_event(300)
    await second_bus.publish(topic, last)
    await second.wait_for_ids({last.id})
    await asyncio.sleep(0.2)
    assert second.ids() == [last.id]  # nothing of the acked batch again


async def test_revoked_handler_is_cancelled_after_the_grace_and_redelivered(
    make_bus: MakeBus, topic: str, unique: Names
) -> None:
    """Rebalance: a handler still running after ``rebalance_grace_ms`` is cancelled, never acked,
    and its event is delivered again by the partition's owner."""
    bus = await make_bus(num_partitions=1, rebalance_grace_ms=200)
    group = unique("group")
    event = sample_event()
    started = asyncio.Event()
    cancelled = asyncio.Event()
    inbox = Inbox()

    async def first_time_stuck(message: Message) -> None:
        inbox.record(message)
        if message.attempt == 1:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    await bus.subscribe(topic, group=group, handler=first_time_stuck)
    await bus.publish(topic, event)
    await wait_set(started, "the handler to start")
    # A second member (recording into the same inbox) joins: a rebalance.
    await bus.subscribe(topic, group=group, handler=inbox.handler)
    await wait_set(cancelled, "the revoked handler to be cancelled")
    # One partition: whichever member owns it now delivers the event again (attempt 2: this
    # bus remembers the count).
    await inbox.wait_for_count(2)
    again = inbox.messages[1]
    assert again.event.id == event.id
    assert again.attempt == 2


async def test_publish_to_an_unreachable_server_is_a_retryable_error(topic: str) -> None:
    """A bus that cannot connect raises retryable errors (the producer may try again)."""
    bus = KafkaBus({"bootstrap_servers": f"127.0.0.1:{_free_port()}", "request_timeout_ms": 2000})
    try:
        with pytest.raises(BusError) as opened:
            await bus.open()
        assert opened.value.retryable is True
        with pytest.raises(PublishError) as published:
            await bus.publish(topic, sample_event())
        assert published.value.retryable is True
    finally:
        await bus.close()


async def test_oversized_event_is_a_terminal_publish_error(make_bus: MakeBus, topic: str) -> None:
    """An event over the producer's max request size (1 MiB) can never be published."""
    bus = await make_bus()
    event = sample_event()
    huge = CloudEvent(dict(event.attributes), b"x" * (2 * 1024 * 1024))
    with pytest.raises(PublishError) as raised:
        await bus.publish(topic, huge)
    assert raised.value.retryable is False
