"""Kafka bus throughput: the raw aiokafka client (the ceiling) against the adapter's Bus API.

    .venv/bin/python bench/kafka_bus.py [--events 10000] [--size 1024] [--concurrency 64]

Starts its own Tansu (memory storage) on a free 127.0.0.1 port, stops it (that PID) at the end.

- raw publish: one AIOKafkaProducer (acks=all), every send queued at once, then awaited;
  raw consume: one group consumer reading the topic from the start, one commit at the end.
- bus publish: ``KafkaBus.publish`` from ``--concurrency`` tasks (each waits for its ack, as
  ingress does); bus consume: ``subscribe(concurrency=...)`` with a handler that acks at once,
  from the first event handed out to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.kafka import KafkaBus
from adapters.kafka.wire import encode_record
from broker.core.events import CloudEvent, new_event
from broker.dataplane.bus import Message
from tests.support.servers.kafka import KafkaServer, find_binary


def events(count: int, size: int) -> list[CloudEvent]:
    payload = b"x" * size
    return [
        new_event(type="bench", source="/bench", data=payload, datacontenttype="text/plain")
        for _ in range(count)
    ]


async def raw(server: KafkaServer, count: int, size: int) -> dict[str, float]:
    topic = "bench-raw"
    batch = events(count, size)
    records = [encode_record(event) for event in batch]
    producer = AIOKafkaProducer(
        bootstrap_servers=server.bootstrap_servers, acks="all", enable_idempotence=False
    )
    await producer.start()
    start = time.perf_counter()
    futures = [await producer.send(topic, value, headers=headers) for value, headers in records]
    await asyncio.gather(*futures)
    published = time.perf_counter() - start
    await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=server.bootstrap_servers,
        group_id="bench-raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=1000,
        heartbeat_interval_ms=100,
    )
    await consumer.start()
    got = 0
    start = 0.0
    while got < count:
        for batch_records in (await consumer.getmany(timeout_ms=1000, max_records=500)).values():
            if not start:
                start = time.perf_counter()
            got += len(batch_records)
    await consumer.commit()
    consumed = time.perf_counter() - start
    await consumer.stop()
    return {"raw_publish_per_s": count / published, "raw_consume_per_s": count / consumed}


async def through_bus(
    server: KafkaServer, count: int, size: int, concurrency: int
) -> dict[str, float]:
    bus = KafkaBus(
        {
            "bootstrap_servers": server.bootstrap_servers,
            "session_timeout_ms": 1000,
            "heartbeat_interval_ms": 100,
        }
    )
    await bus.open()
    topic, group = "bench-bus", "bench-bus"
    received = 0
    done = asyncio.Event()
    first = 0.0

    async def handler(message: Message) -> None:
        nonlocal received, first
        if not first:
            first = time.perf_counter()
        received += 1
        if received == count:
            done.set()

    async def nothing(message: Message) -> None:
        raise AssertionError("nothing is published before the measurement")

    # Fix the group's position at the end of the (new) topic, and leave: the events published
    # next wait on the topic, so that consuming is measured on its own.
    subscription = await bus.subscribe(topic, group=group, handler=nothing)
    await subscription.close()

    queue = iter(events(count, size))

    async def publisher() -> None:
        for event in queue:
            await bus.publish(topic, event)

    start = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    published = time.perf_counter() - start

    await bus.subscribe(topic, group=group, handler=handler, concurrency=concurrency)
    await asyncio.wait_for(done.wait(), 120)
    consumed = time.perf_counter() - first
    await bus.close()
    return {"bus_publish_per_s": count / published, "bus_consume_per_s": count / consumed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cemesh-bench-kafka-") as base:
        server = KafkaServer(find_binary(), Path(base))
        server.start()
        try:
            figures = await raw(server, args.events, args.size)
            figures |= await through_bus(server, args.events, args.size, args.concurrency)
        finally:
            server.stop()
    for name, value in figures.items():
        print(f"{name:>20}: {value:10,.0f}")
    print(json.dumps({name: round(value) for name, value in figures.items()}))


if __name__ == "__main__":
    asyncio.run(main())
