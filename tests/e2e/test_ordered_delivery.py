"""Ordered delivery: ``kafka.eventing.knative.dev/delivery.order: ordered`` (issue 3, item 5).

An ordered Trigger delivers events with the same ``partitionkey`` one at a time, in publish
order; different keys still run in parallel. Unordered (the default) runs deliveries of one key
concurrently. Checked here on the embedded default (the memory bus declares ORDERED_BY_KEY).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

from tests.support.cemesh import running_cemesh
from tests.support.subscriber import Received, RecordingSubscriber

KEYS = ("a", "b", "c")
PER_KEY = 12


class OverlapProbe:
    """A subscriber's respond(): records per-key order and how many of a key run at once."""

    def __init__(self) -> None:
        self.order: dict[str, list[int]] = defaultdict(list)
        self.running: dict[str, int] = defaultdict(int)
        self.max_running: dict[str, int] = defaultdict(int)
        self.max_total = 0

    async def __call__(self, received: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        assert received.event is not None
        key, seq = str(received.event.get("partitionkey")), int(received.body)
        self.order[key].append(seq)
        self.running[key] += 1
        self.max_running[key] = max(self.max_running[key], self.running[key])
        self.max_total = max(self.max_total, sum(self.running.values()))
        await asyncio.sleep(0.01 * (seq % 3))  # finish out of step with arrival
        self.running[key] -= 1
        return (202, [], b"")


def _trigger(name: str, url: str, order: str) -> str:
    return f"""
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
  annotations:
    kafka.eventing.knative.dev/delivery.order: {order}
spec:
  broker: default
  subscriber:
    uri: {url}
"""


async def test_ordered_trigger_delivers_one_key_at_a_time_in_order(tmp_path: Path) -> None:
    ordered, unordered = OverlapProbe(), OverlapProbe()
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(ordered) as ordered_sub,
        RecordingSubscriber(unordered) as unordered_sub,
    ):
        await mesh.apply(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n"
        )
        await mesh.apply(_trigger("ordered", ordered_sub.url, "ordered"))
        await mesh.apply(_trigger("unordered", unordered_sub.url, "unordered"))
        for seq in range(PER_KEY):
            for key in KEYS:
                response = await mesh.post_event(
                    "/default/default",
                    {
                        "ce-specversion": "1.0",
                        "ce-id": f"{key}-{seq}",
                        "ce-source": "/order",
                        "ce-type": "t",
                        "ce-partitionkey": key,
                        "content-type": "text/plain",
                    },
                    str(seq),
                )
                assert response.status_code == 202
        total = len(KEYS) * PER_KEY
        await ordered_sub.wait_for(total, timeout=30)
        await unordered_sub.wait_for(total, timeout=30)

    for key in KEYS:
        assert ordered.order[key] == list(range(PER_KEY)), key
        assert ordered.max_running[key] == 1, key
    assert ordered.max_total > 1  # keys still run in parallel
    assert max(unordered.max_running.values()) > 1  # unordered: one key runs concurrently
