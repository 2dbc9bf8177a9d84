"""The in-process activator and queue-proxy (issue 5): requests held at zero, containerConcurrency
never exceeded, least-loaded replica first, 503 paths (full queue, hold timeout), concurrency
counted for the autoscaler, drain before a replica stops."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from broker.features.serving.activator import Activator, HoldTimeout, Overloaded
from broker.features.serving.backend import Replica, RevisionRef

REF = RevisionRef("default", "fn", "fn-00001")


class ListBackend:
    """A Backend whose ready replicas are a list the test edits (no processes involved)."""

    def __init__(self, count: int = 0) -> None:
        self.replicas = [Replica(f"r{i}", f"http://127.0.0.1:{9000 + i}") for i in range(count)]

    async def ensure(self, revision: RevisionRef, template: Mapping[str, Any], n: int) -> None:
        self.replicas = [Replica(f"r{i}", f"http://127.0.0.1:{9000 + i}") for i in range(n)]

    def ready(self, revision: RevisionRef) -> list[Replica]:
        return self.replicas

    async def wait_ready(self, revision: RevisionRef, timeout: float) -> bool:  # noqa: ASYNC109
        return bool(self.replicas)

    async def forget(self, revision: RevisionRef) -> None:
        self.replicas = []

    async def stop(self) -> None:
        self.replicas = []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def activator(
    backend: ListBackend, concurrency: int = 0, queue: int = 100, clock: Clock | None = None
) -> tuple[Activator, list[int]]:
    woken: list[int] = []
    return (
        Activator(
            REF,
            backend,  # type: ignore[arg-type]
            container_concurrency=concurrency,
            queue_size=queue,
            clock=clock or Clock(),
            wake=lambda: woken.append(1),
        ),
        woken,
    )


async def test_least_loaded_replica_is_chosen() -> None:
    act, _ = activator(ListBackend(3))
    first = await act.acquire(1)
    second = await act.acquire(1)
    third = await act.acquire(1)
    assert {first.id, second.id, third.id} == {"r0", "r1", "r2"}
    act.release(second.id)
    assert (await act.acquire(1)).id == second.id


async def test_container_concurrency_1_is_never_exceeded_and_waiters_are_served_in_order() -> None:
    act, woken = activator(ListBackend(2), concurrency=1)
    order: list[int] = []

    async def request(i: int) -> None:
        replica = await act.acquire(5)
        order.append(i)
        await asyncio.sleep(0)  # hold the slot across a scheduling point
        act.release(replica.id)

    await asyncio.gather(*(request(i) for i in range(20)))
    assert max(act.max_seen.values()) == 1
    assert sorted(order) == list(range(20))
    assert order[:2] == [0, 1]
    assert act.active == act.waiting == 0
    assert not woken  # replicas were ready: nothing to wake


async def test_a_request_at_zero_wakes_the_revision_once_and_waits_for_a_replica() -> None:
    backend = ListBackend(0)
    act, woken = activator(backend, concurrency=1)
    waiting = [asyncio.create_task(act.acquire(5)) for _ in range(3)]
    await asyncio.sleep(0)
    assert act.waiting == 3
    assert len(woken) >= 1 and not any(t.done() for t in waiting)
    await backend.ensure(REF, {}, 2)
    act.replicas_changed()
    assert act.active == 2  # slots handed over at once
    await asyncio.sleep(0)
    done = [t for t in waiting if t.done()]
    assert len(done) == 2  # two replicas, one slot each
    act.release(done[0].result().id)
    third = await next(t for t in waiting if t not in done)
    assert third.id == done[0].result().id


async def test_past_the_hold_timeout_the_request_gets_hold_timeout() -> None:
    act, _ = activator(ListBackend(0))
    with pytest.raises(HoldTimeout):
        await act.acquire(0.01)
    assert act.waiting == 0


async def test_a_full_queue_is_overloaded() -> None:
    act, _ = activator(ListBackend(0), queue=2)
    held = [asyncio.create_task(act.acquire(5)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await act.acquire(5)
    act.close()
    for task in held:
        with pytest.raises(HoldTimeout):
            await task


async def test_a_slot_handed_over_as_the_timeout_strikes_is_given_back() -> None:
    backend = ListBackend(0)
    act, _ = activator(backend, concurrency=1)
    task = asyncio.create_task(act.acquire(5))
    await asyncio.sleep(0)
    await backend.ensure(REF, {}, 1)
    act.replicas_changed()  # the slot is handed over...
    task.cancel()  # ...and the waiter is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert act.active == 0 and not act.inflight


async def test_concurrency_is_sampled_as_a_time_weighted_average_with_waiting_requests() -> None:
    clock = Clock()
    act, _ = activator(ListBackend(1), concurrency=1, clock=clock)
    act.sample(clock.now)
    first = await act.acquire(5)  # 1 in flight
    clock.now += 1.0
    second = asyncio.create_task(act.acquire(5))  # 1 in flight + 1 waiting
    await asyncio.sleep(0)
    clock.now += 1.0
    act.release(first.id)
    act.release((await second).id)
    average, requests = act.sample(clock.now + 2.0)  # then idle for 2 s
    assert requests == 2
    assert average == pytest.approx((1 * 1 + 2 * 1) / 4)
    assert act.sample(clock.now + 3.0) == (0.0, 0)


async def test_drained_returns_once_the_replica_is_idle() -> None:
    act, _ = activator(ListBackend(1))
    replica = await act.acquire(1)
    drained = asyncio.create_task(act.drained(replica.id, 5))
    await asyncio.sleep(0)
    assert not drained.done()
    act.release(replica.id)
    await asyncio.wait_for(drained, 1)
    await act.drained("never-used", 5)  # idle already
