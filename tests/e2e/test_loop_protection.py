"""Loop protection (issue 6 item 5; K45, K107, K169): a reply loop through a Sequence, a Parallel
or a Trigger ends when ``knativebrokerttl`` runs out, and is reported (a log line and the
``cemesh_reply_loops_stopped`` counter), never an endless loop.

The ttl travels with an event through cemesh's own Brokers and Channels (a Trigger keeps it when
its subscriber is a Sequence's channel) and a Subscription's reply inherits it decremented, so
even a loop that never re-enters a Broker (a Sequence replying to itself) is bounded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.flows import replying, wait_until
from tests.support.subscriber import RecordingSubscriber

MAX_TTL = 5
LOOP = "com.example.loop"


def headers(event_id: str, **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/loops",
        "ce-type": LOOP,
        "content-type": "application/json",
        **extra,
    }


def echo() -> Any:
    """A step that replies with the very event it got (same type: a loop waiting to happen)."""
    return replying(lambda event: event)


def sequence(name: str, step_url: str, reply_ref: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "flows.knative.dev/v1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {"steps": [{"uri": step_url}], "reply": {"ref": reply_ref}},
    }


def loops_stopped(mesh: RunningCemesh) -> int:
    return int(mesh.runtime.metrics.loops_stopped)


async def test_broker_trigger_sequence_reply_to_broker_loop_ends_at_the_broker_ttl(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """K169's caveat, guarded: the Sequence replies an event its own Trigger matches again."""
    caplog.set_level(logging.WARNING)
    async with (
        running_cemesh(tmp_path, max_ttl=MAX_TTL) as mesh,
        RecordingSubscriber(echo()) as step,
    ):
        await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        broker_ref = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}
        await mesh.apply(sequence("looping", step.url, broker_ref))
        [trigger] = await mesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "to-sequence"},
                "spec": {
                    "broker": "default",
                    "filter": {"attributes": {"type": LOOP}},
                    "subscriber": {
                        "ref": {
                            "apiVersion": "flows.knative.dev/v1",
                            "kind": "Sequence",
                            "name": "looping",
                        }
                    },
                },
            }
        )
        assert trigger["status"]["subscriberUri"].endswith(
            "/channels/default/looping-kn-sequence-0"
        )

        response = await mesh.post_event("/default/default", headers("loop-1"), b"{}")
        assert response.status_code == 202, response.text
        await wait_until(lambda: loops_stopped(mesh) > 0)
        # ttl 5, 4, 3, 2, 1 at the broker: five passes through the Sequence, then it stops.
        assert len(step.received) == MAX_TTL
        # The step never sees the loop guard, as a Trigger's subscriber never does (K96).
        assert all("ce-knativebrokerttl" not in r.headers for r in step.received)
        assert any("knativebrokerttl ran out" in r.getMessage() for r in caplog.records)
        metrics = (await mesh.client.get("/metrics")).text
        assert "cemesh_reply_loops_stopped_total 1.0" in metrics


async def test_sequence_replying_into_its_own_first_channel_ends_at_the_ttl(
    tmp_path: Path,
) -> None:
    """A loop that never passes a Broker: each Subscription reply counts one hop."""
    async with (
        running_cemesh(tmp_path, max_ttl=MAX_TTL) as mesh,
        RecordingSubscriber(echo()) as step,
    ):
        self_ref = {"apiVersion": "flows.knative.dev/v1", "kind": "Sequence", "name": "ouroboros"}
        await mesh.apply(sequence("ouroboros", step.url, self_ref))
        response = await mesh.post_event(
            "/channels/default/ouroboros-kn-sequence-0", headers("self-1"), b"{}"
        )
        assert response.status_code == 202, response.text
        await wait_until(lambda: loops_stopped(mesh) > 0)
        # The first delivery had no ttl; its reply got 5, then 4, 3, 2, 1: six deliveries.
        assert len(step.received) == MAX_TTL + 1


async def test_parallel_branch_replying_into_the_parallel_ends_at_the_ttl(tmp_path: Path) -> None:
    async with (
        running_cemesh(tmp_path, max_ttl=MAX_TTL) as mesh,
        RecordingSubscriber(echo()) as branch,
    ):
        self_ref = {"apiVersion": "flows.knative.dev/v1", "kind": "Parallel", "name": "spiral"}
        await mesh.apply(
            {
                "apiVersion": "flows.knative.dev/v1",
                "kind": "Parallel",
                "metadata": {"name": "spiral"},
                "spec": {
                    "branches": [{"subscriber": {"uri": branch.url}}],
                    "reply": {"ref": self_ref},
                },
            }
        )
        # A producer that already set a ttl: it is honoured, not reset.
        response = await mesh.post_event(
            "/channels/default/spiral-kn-parallel",
            headers("p-1", **{"ce-knativebrokerttl": "3"}),
            b"{}",
        )
        assert response.status_code == 202, response.text
        await wait_until(lambda: loops_stopped(mesh) > 0)
        assert len(branch.received) == 3  # ttl 3, then replies with 2 and 1
