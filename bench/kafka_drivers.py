"""Kafka client drivers side by side: aiokafka against librdkafka (confluent-kafka), same server.

    .venv/bin/python bench/kafka_drivers.py [--events 20000] [--size 1024] [--rounds 2]

Both clients come with the ``kafka`` extra (and ``dev``); the Kafka bus uses either
(``driver``: ``confluent``, the default, or ``aiokafka``), and ``make bench-buses`` compares
cemesh on each.

Starts one Tansu on a free 127.0.0.1 port (stopped, by its PID, at the end). For each driver,
alternating for ``--rounds`` rounds, on a topic of its own: publish ``--events`` messages of
``--size`` bytes (acks=all, every send in flight at once, then wait for every ack), then consume
them all in a consumer group committing once per fetched batch. Reports, per driver and phase,
messages/s and this process's CPU per message (``time.process_time``: every thread, so
librdkafka's own threads count). The Tansu server's CPU is the same for both and not shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.servers.kafka import launch


def _phase(events: int, started: tuple[float, float]) -> dict[str, float]:
    wall = time.perf_counter() - started[0]
    cpu = time.process_time() - started[1]
    return {"per_s": round(events / wall), "cpu_us": round(cpu / events * 1e6, 1)}


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


async def aiokafka_run(bootstrap: str, topic: str, count: int, payload: bytes) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1
    )
    await producer.start()
    try:
        started = _clock()
        futures = [await producer.send(topic, payload) for _ in range(count)]
        await asyncio.gather(*futures)
        publish = _phase(count, started)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        got = 0
        started = _clock()
        first = True
        while got < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            if batches and first:  # the group join is not the consuming rate
                started, first = _clock(), False
            got += sum(len(records) for records in batches.values())
            if batches:
                await consumer.commit()
        consume = _phase(count, started)
    finally:
        await consumer.stop()
    return {"publish": publish, "consume": consume}


def confluent_run(bootstrap: str, topic: str, count: int, payload: bytes) -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1, "enable.idempotence": False}
    )
    acked = 0

    def on_delivery(error: Any, _message: Any) -> None:
        nonlocal acked
        if error is None:
            acked += 1

    started = _clock()
    for _ in range(count):
        while True:
            try:
                producer.produce(topic, payload, on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: serve delivery reports, retry
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    publish = _phase(count, started)
    if acked != count:
        raise RuntimeError(f"confluent-kafka: {acked} of {count} acked")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        got = 0
        started = _clock()
        first = True
        while got < count:
            messages = consumer.consume(num_messages=1000, timeout=1.0)
            messages = [m for m in messages if m.error() is None]
            if messages and first:
                started, first = _clock(), False
            got += len(messages)
            if messages:
                consumer.commit(asynchronous=False)
        consume = _phase(count, started)
    finally:
        consumer.close()
    return {"publish": publish, "consume": consume}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    payload = b"x" * args.size
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cemesh-kafka-drivers-") as tmp:
        server = launch(Path(tmp))
        try:
            bootstrap = server.bootstrap_servers
            for round_ in range(args.rounds):
                for driver in ("aiokafka", "confluent-kafka"):
                    topic = f"drivers-{driver}-{round_}"
                    if driver == "aiokafka":
                        figures = asyncio.run(aiokafka_run(bootstrap, topic, args.events, payload))
                    else:
                        figures = confluent_run(bootstrap, topic, args.events, payload)
                    results.append({"driver": driver, "round": round_, **figures})
                    print(
                        f"{driver:<16} round {round_}: publish {figures['publish']['per_s']:>7,}/s "
                        f"{figures['publish']['cpu_us']:>6} us CPU/msg; consume "
                        f"{figures['consume']['per_s']:>7,}/s {figures['consume']['cpu_us']:>6} "
                        "us CPU/msg",
                        flush=True,
                    )
        finally:
            server.stop()
    print(json.dumps({"events": args.events, "size": args.size, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
