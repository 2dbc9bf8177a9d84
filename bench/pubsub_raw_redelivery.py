"""Pub/Sub emulator, raw client only: is a message delivered again after it was acked?

The question behind it (issue 11, item 7): after a SIGKILL, cemesh on the Pub/Sub emulator
delivered events more than once (tests/durability/test_crash.py). This reproduces the crash test's
pattern with nothing of cemesh: N messages published; consumer A (a child process) reads them
over StreamingPull and acks them one by one at ``--rate``/s, extending what it holds every 2.5 s
(ModifyAckDeadline, 10 s); it is SIGKILLed after ``--acked-before-kill`` acks. Consumer B then
does the same until every message is acked (or ``--limit`` seconds) and counts deliveries of
messages already acked by A or B.

Measured (2 cores, the emulator tests/support/servers/pubsub.py starts), 1,000 messages, 300
acked before the kill, 500 more published while B consumes, acks at 40/s:

- subscription without message ordering: 0 deliveries of acked messages (1,500 before that
  with none published after the kill: 0 too). The emulator honours acks and lease extensions;
  it ignores ``max_outstanding_messages`` (it sends every message at once) and holds what it had
  sent to the dead stream until that lease ends;
- ``--ordering`` (``enable_message_ordering``, what cemesh made every group until issue 11):
  6,880 deliveries, 5,554 of them of messages already acked. That is the emulator, and why
  cemesh now orders a Pub/Sub subscription only for ordered Triggers/Subscriptions.

Run: ``.venv/bin/python bench/pubsub_raw_redelivery.py [--ordering] [--publish-after-kill 500]``
(starts its own emulator on a free loopback port, stops it by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from google.auth.credentials import AnonymousCredentials
from google.pubsub_v1 import types
from google.pubsub_v1.services.subscriber.async_client import SubscriberAsyncClient
from google.pubsub_v1.services.subscriber.transports.grpc_asyncio import (
    SubscriberGrpcAsyncIOTransport,
)

SUBSCRIPTION = "projects/bench/subscriptions/raw-redelivery"
TOPIC = "projects/bench/topics/raw-redelivery"
ACK_DEADLINE = 10
LEASE_PERIOD = 2.5


async def consume(
    host: str, rate: float, stop_after: int, limit: float, acked_file: Path | None, seen: set[bytes]
) -> tuple[int, int, int]:
    """Ack up to ``stop_after`` messages at ``rate``/s: (acked, deliveries, of acked ones)."""
    client = SubscriberAsyncClient(
        transport=SubscriberGrpcAsyncIOTransport(
            channel=grpc.aio.insecure_channel(host), credentials=AnonymousCredentials()
        )
    )
    stop = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        yield types.StreamingPullRequest(
            subscription=SUBSCRIPTION,
            stream_ack_deadline_seconds=ACK_DEADLINE,
            max_outstanding_messages=32,
        )
        await stop.wait()

    held: dict[bytes, str] = {}
    counts = {"deliveries": 0, "again": 0}
    call = await client.streaming_pull(requests=requests(), timeout=None)

    async def read() -> None:
        async for response in call:
            for item in response.received_messages:
                counts["deliveries"] += 1
                if item.message.data in seen:
                    counts["again"] += 1
                else:
                    held[item.message.data] = item.ack_id

    async def lease() -> None:
        while True:
            await asyncio.sleep(LEASE_PERIOD)
            if held:
                await client.modify_ack_deadline(
                    subscription=SUBSCRIPTION,
                    ack_ids=list(held.values()),
                    ack_deadline_seconds=ACK_DEADLINE,
                )

    tasks = [asyncio.create_task(read()), asyncio.create_task(lease())]
    start, acked = time.monotonic(), 0
    while acked < stop_after and time.monotonic() - start < limit:
        await asyncio.sleep(1 / rate)
        if held:
            data, ack_id = next(iter(held.items()))
            del held[data]
            await client.acknowledge(subscription=SUBSCRIPTION, ack_ids=[ack_id])
            seen.add(data)
            acked += 1
            if acked_file is not None:
                with acked_file.open("a") as file:
                    file.write(data.decode() + "\n")
    stop.set()
    for task in tasks:
        task.cancel()
    return acked, counts["deliveries"], counts["again"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--acked-before-kill", type=int, default=400)
    parser.add_argument("--rate", type=float, default=80.0)
    parser.add_argument("--limit", type=float, default=150.0, help="seconds B may take")
    parser.add_argument(
        "--ordering", action="store_true", help="enable_message_ordering (as cemesh's groups)"
    )
    parser.add_argument(
        "--publish-after-kill", type=int, default=0, help="messages published while B consumes"
    )
    parser.add_argument("--victim", nargs=2, metavar=("HOST", "ACKED_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.victim:  # consumer A, in the child process
        host, acked_file = args.victim
        asyncio.run(consume(host, args.rate, 10**9, 10**9, Path(acked_file), set()))
        return

    from google.cloud import pubsub_v1

    from tests.support.servers.pubsub import launch

    with tempfile.TemporaryDirectory() as workdir:
        emulator = launch(Path(workdir))
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        publisher.create_topic(name=TOPIC)
        subscriber.create_subscription(
            request={
                "name": SUBSCRIPTION,
                "topic": TOPIC,
                "ack_deadline_seconds": ACK_DEADLINE,
                "enable_message_ordering": args.ordering,
            }
        )
        futures = [publisher.publish(TOPIC, f"m{i}".encode()) for i in range(args.messages)]
        for future in futures:
            future.result()
        acked_file = Path(workdir) / "acked"
        acked_file.touch()
        victim = subprocess.Popen(
            [sys.executable, __file__, "--victim", emulator.host, str(acked_file)]
        )
        try:
            while len(acked_file.read_text().split()) < args.acked_before_kill:
                time.sleep(0.05)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        seen = {line.encode() for line in acked_file.read_text().split()}
        by_a = len(seen)
        later = args.publish_after_kill
        if later:  # published at ~100/s while B consumes, as the crash test's producers do

            def publish_later() -> None:
                for i in range(later):
                    publisher.publish(TOPIC, f"n{i}".encode()).result()
                    time.sleep(0.01)

            threading.Thread(target=publish_later, daemon=True).start()
        acked, deliveries, again = asyncio.run(
            consume(emulator.host, args.rate, args.messages + later - by_a, args.limit, None, seen)
        )
        print(
            f"raw client: {args.messages} + {later} messages; A acked {by_a}, then SIGKILL; "
            f"B: {deliveries} deliveries, {again} of messages already acked, "
            f"{args.messages + later - by_a - acked} never acked within {args.limit:g}s"
        )


if __name__ == "__main__":
    main()
