"""Raw client rates with publish and consume overlapping, as cemesh runs them (issue 14, item 3).

``bench/buses.py``'s first raw figure publishes every event, then consumes them all, and reports
``N / (publish time + consume time)``; its publishers also batch more than cemesh can (all events
in flight at once, Redis pipelines of 500). cemesh publishes one event per ingress request, at most
``--connections`` at once, while its consumers drain the same topic. The functions here measure the
plain client that way:

- one consumer group is subscribed (and, for Kafka, has its partition assigned) before the clock
  starts, and consumes + acks while the publishers run;
- ``concurrency`` publisher tasks each publish one event at a time and wait for its ack (aiokafka
  ``send`` + delivery, JetStream ``publish``); for Redis, the XADDs of those tasks go through the
  adapter's own :class:`adapters.redis_streams.publisher.Publisher`, so they are pipelined exactly
  as cemesh pipelines concurrent publishes;
- the rate is ``N / (time from the first publish to the last ack)``.

Consumers ack the way the adapters do: a Kafka commit per fetched batch, a JetStream ack per
message, XACK per XREADGROUP batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

CONSUME_TIMEOUT = 120.0  # seconds the whole overlapped run may take


async def _publishers(
    count: int, concurrency: int, publish_one: Callable[[], Awaitable[object]]
) -> None:
    """``count`` publishes by ``concurrency`` tasks, each waiting for its own ack."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await publish_one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _run(
    count: int,
    concurrency: int,
    publish_one: Callable[[], Awaitable[object]],
    consume: Callable[[int], Awaitable[None]],
) -> float:
    """Seconds from the first publish to the last ack of ``count`` events, the two overlapping."""
    start = time.perf_counter()
    consuming = asyncio.create_task(consume(count))
    try:
        await _publishers(count, concurrency, publish_one)
        await asyncio.wait_for(consuming, CONSUME_TIMEOUT)
    finally:
        consuming.cancel()
    return time.perf_counter() - start


async def kafka(bootstrap: str, count: int, payload: bytes, concurrency: int) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = "bench-raw-overlapped"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    await producer.start()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=200,
    )
    try:
        await (await producer.send(topic, b"warm-up"))  # the topic exists before the group joins
        await consumer.start()
        while not await consumer.getmany(timeout_ms=1000):  # joined, assigned, warm-up read
            pass
        await consumer.commit()

        async def publish_one() -> object:
            return await (await producer.send(topic, payload))

        async def consume(wanted: int) -> None:
            got = 0
            while got < wanted:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                got += sum(len(records) for records in batches.values())
                if batches:
                    await consumer.commit()

        return await _run(count, concurrency, publish_one, consume)
    finally:
        await consumer.stop()
        await producer.stop()


async def kafka_confluent(bootstrap: str, count: int, payload: bytes, concurrency: int) -> float:
    """librdkafka (confluent-kafka) through the adapter's own asyncio bridges, which add no
    batching of their own: the producer batches as librdkafka does for ``linger_ms``."""
    from aiokafka import ConsumerRebalanceListener, TopicPartition

    from adapters.kafka.librdkafka_consumer import LibrdkafkaConsumer
    from adapters.kafka.librdkafka_producer import LibrdkafkaProducer
    from adapters.kafka.options import KafkaOptions

    topic = "bench-raw-overlapped-confluent"
    options = KafkaOptions(
        bootstrap_servers=bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=200
    )
    producer = LibrdkafkaProducer(options)
    consumer = LibrdkafkaConsumer(options, topic)

    class Listener(ConsumerRebalanceListener):  # nothing to do: one member, no handlers
        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            pass

        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            pass

    try:
        await producer.send(topic, b"warm-up", None, [])  # the topic exists before the join
        consumer.subscribe([topic], listener=Listener())
        warm = 0
        while warm < 1:  # joined, assigned, warm-up read
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            warm += sum(len(records) for records in batches.values())
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
        await consumer.commit(offsets)

        async def publish_one() -> object:
            await producer.send(topic, payload, None, [])
            return None

        async def consume(wanted: int) -> None:
            got = 0
            while got < wanted:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                got += sum(len(records) for records in batches.values())
                if batches:
                    await consumer.commit(
                        {tp: records[-1].offset + 1 for tp, records in batches.items()}
                    )

        return await _run(count, concurrency, publish_one, consume)
    finally:
        await consumer.stop()
        await producer.close()


async def nats(url: str, count: int, payload: bytes, concurrency: int) -> float:
    import nats as nats_client
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats_client.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCHOVERLAP", subjects=["bench.overlap"])
        sub = await js.pull_subscribe("bench.overlap", durable="bench-overlap")

        async def publish_one() -> object:
            return await js.publish("bench.overlap", payload)

        async def consume(wanted: int) -> None:
            got = 0
            while got < wanted:
                try:
                    messages = await sub.fetch(500, timeout=1)
                except NatsTimeout:
                    continue
                for message in messages:
                    await message.ack()
                    got += 1
            await nc.flush()

        return await _run(count, concurrency, publish_one, consume)
    finally:
        await nc.close()


async def redis(url: str, count: int, payload: bytes, concurrency: int) -> float:
    import redis.asyncio as aioredis

    from adapters.redis_streams.publisher import Publisher

    client = aioredis.from_url(url)
    stream, group = "bench-raw-overlapped", "bench-raw-overlapped"
    publisher = Publisher(client, maxlen=None)
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)

        async def publish_one() -> object:
            await publisher.xadd(stream, {b"data": payload})
            return None

        async def consume(wanted: int) -> None:
            got = 0
            while got < wanted:
                reply = await client.xreadgroup(group, "c1", {stream: ">"}, count=500, block=1000)
                for _name, entries in reply or []:
                    if entries:
                        await client.xack(stream, group, *(entry_id for entry_id, _ in entries))
                        got += len(entries)

        return await _run(count, concurrency, publish_one, consume)
    finally:
        await publisher.close()
        await client.aclose()


RAW_OVERLAPPED: dict[str, Callable[[str, int, bytes, int], Awaitable[float]]] = {
    "kafka": kafka,
    "kafka-confluent": kafka_confluent,
    "nats": nats,
    "redis": redis,
}
