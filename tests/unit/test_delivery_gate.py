"""broker.dataplane.dispatch.gate: the per-origin in-flight limit of deliveries."""

from __future__ import annotations

import asyncio

import pytest

from broker.dataplane.dispatch.gate import Gate, OriginGates


async def _hold(
    gate: Gate, log: list[str], name: str, release: asyncio.Event, entered: asyncio.Event
) -> None:
    if not gate.enter():
        await gate.wait()
    log.append(name)
    entered.set()
    try:
        await release.wait()
    finally:
        gate.leave()


async def test_a_gate_lets_in_at_most_its_limit_and_the_rest_in_arrival_order() -> None:
    gate = Gate(2)
    log: list[str] = []
    releases = {name: asyncio.Event() for name in "abcde"}
    entered = {name: asyncio.Event() for name in "abcde"}
    tasks = [asyncio.create_task(_hold(gate, log, n, releases[n], entered[n])) for n in "abcde"]
    async with asyncio.timeout(5):
        await entered["b"].wait()
        for _ in range(5):
            await asyncio.sleep(0)
        assert log == ["a", "b"]
        assert gate.free == 0
        releases["b"].set()
        await entered["c"].wait()
        assert log == ["a", "b", "c"]
        # A newcomer does not overtake the ones waiting, even when a slot was just freed.
        assert not gate.enter()
        for name in "acde":
            releases[name].set()
        await asyncio.gather(*tasks)
    assert log == ["a", "b", "c", "d", "e"]
    assert gate.free == 2


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    gate = Gate(1)
    assert gate.enter()
    first = asyncio.create_task(gate.wait())
    second = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.leave()  # handed to the first waiter ...
    first.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(5):
        await second  # the slot went on to the next one
    gate.leave()
    assert gate.free == 1


async def test_a_waiter_cancelled_while_waiting_gives_up_its_place() -> None:
    gate = Gate(1)
    assert gate.enter()
    waiting = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.leave()
    assert gate.free == 1
    assert gate.enter()


def test_urls_on_one_origin_share_a_gate_and_default_ports_are_filled_in() -> None:
    gates = OriginGates(4)
    assert gates("http://a.example/x") is gates("http://a.example:80/y")
    assert gates("https://a.example/") is gates("https://a.example:443/z")
    assert gates("http://a.example/") is not gates("https://a.example/")
    assert gates("http://a.example:8080/") is not gates("http://a.example/")
    assert gates("http://a.example:bad/") is gates("http://a.example:bad/other")
