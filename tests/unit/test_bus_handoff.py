"""The shared hand-off queue (broker/dataplane/bus/handoff.py): one taker per message, per-key lanes
in admission order across redeliveries, and a message handed to a cancelled taker given back."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.dataplane.bus.handoff import HandOff


async def test_a_message_goes_to_one_waiting_taker_in_arrival_order() -> None:
    handoff: HandOff[str] = HandOff()
    first = asyncio.create_task(handoff.take())
    second = asyncio.create_task(handoff.take())
    await asyncio.sleep(0)  # both wait now
    handoff.put("a")
    assert await first == "a"
    assert not second.done()
    handoff.put("b")
    assert await second == "b"


async def test_ready_messages_are_taken_first_in_first_out() -> None:
    handoff: HandOff[int] = HandOff()
    for item in range(3):
        handoff.put(item)
    assert [await handoff.take() for _ in range(3)] == [0, 1, 2]


async def test_a_lane_releases_its_next_message_only_when_the_one_out_is_finished() -> None:
    handoff: HandOff[str] = HandOff()
    handoff.put("k1", lane="k")
    handoff.put("k2", lane="k")
    handoff.put("x1", lane="x")
    assert await handoff.take() == "k1"
    assert await handoff.take() == "x1"  # another lane is not held back
    assert not handoff.ready  # k2 waits behind k1
    handoff.finish("k")
    assert await handoff.take() == "k2"
    handoff.finish("k")
    handoff.finish("x")
    assert handoff.lanes == 0


async def test_a_redelivered_message_keeps_its_lane_so_later_ones_do_not_overtake() -> None:
    handoff: HandOff[str] = HandOff()
    handoff.put("k1", lane="k")
    handoff.put("k2", lane="k")
    assert await handoff.take() == "k1"
    handoff.release("k1")  # the handler failed: k1 comes again, its lane still taken
    assert await handoff.take() == "k1"
    handoff.finish("k")
    assert await handoff.take() == "k2"


async def test_a_message_handed_to_a_cancelled_taker_is_given_back_to_the_front() -> None:
    given_back: list[str] = []
    handoff: HandOff[str] = HandOff(on_given_back=given_back.append)
    taker = asyncio.create_task(handoff.take())
    await asyncio.sleep(0)
    handoff.put("a")  # handed to the waiting taker...
    handoff.put("b")
    taker.cancel()  # ...which is cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await taker
    assert given_back == ["a"]
    assert await handoff.take() == "a"  # at the front, before b
    assert await handoff.take() == "b"


async def test_a_given_back_message_goes_to_the_next_waiting_taker() -> None:
    handoff: HandOff[str] = HandOff()
    doomed = asyncio.create_task(handoff.take())
    patient = asyncio.create_task(handoff.take())
    await asyncio.sleep(0)
    handoff.put("a")
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert await asyncio.wait_for(patient, 5) == "a"


async def test_a_cancelled_taker_that_got_nothing_leaves_no_trace() -> None:
    handoff: HandOff[str] = HandOff()
    taker = asyncio.create_task(handoff.take())
    await asyncio.sleep(0)
    taker.cancel()
    await asyncio.gather(taker, return_exceptions=True)
    handoff.put("a")
    assert list(handoff.ready) == ["a"]  # not handed to the dead taker


async def test_hooks_count_what_leaves_and_comes_back() -> None:
    handed: list[str] = []
    handoff: HandOff[str] = HandOff(on_handed=handed.append)
    handoff.put("a")
    waiting = asyncio.create_task(handoff.take())
    assert await handoff.take() == "a"
    handoff.put("b")
    assert await waiting == "b"
    assert handed == ["a", "b"]


async def test_dropped_lanes_forget_their_waiting_messages() -> None:
    handoff: HandOff[str] = HandOff()
    handoff.put("p0-k1", lane=(0, "k"))
    handoff.put("p0-k2", lane=(0, "k"))
    handoff.put("p1-k1", lane=(1, "k"))
    handoff.drop_lanes(lambda lane: isinstance(lane, tuple) and lane[0] == 0)
    assert handoff.lanes == 1
    handoff.clear()
    assert handoff.lanes == 0 and not handoff.ready


# A run: messages (lane, seq) admitted in order; takers take, fail (redeliver) or finish them.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["a", "b", "c", None])),
        st.tuples(st.just("settle"), st.booleans()),  # True: ack, False: redeliver
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_per_lane_order_and_one_out_at_a_time_hold_for_any_run(ops: list[tuple]) -> None:
    """Whatever the interleaving of publishes, acks and redeliveries: a lane has at most one
    message out, and its messages are acked in admission order; nothing is lost."""

    async def run() -> None:
        handoff: HandOff[tuple[str | None, int]] = HandOff()
        admitted: dict[str | None, list[int]] = defaultdict(list)
        acked: dict[str | None, list[int]] = defaultdict(list)
        out: list[tuple[str | None, int]] = []
        count = 0
        for op, arg in ops:
            if op == "put":
                item = (arg, count)
                count += 1
                admitted[arg].append(item[1])
                handoff.put(item, arg)
            if handoff.ready:
                item = await handoff.take()
                lane = item[0]
                assert lane is None or all(o[0] != lane for o in out), "two of a lane out"
                out.append(item)
            if op == "settle" and out:
                item = out.pop(0)
                if arg:
                    acked[item[0]].append(item[1])
                    handoff.finish(item[0])
                else:
                    handoff.release(item)  # redelivered: comes back, lane still held
        # Drain: ack everything still out or queued.
        while out or handoff.ready:
            if handoff.ready:
                out.append(await handoff.take())
            item = out.pop(0)
            acked[item[0]].append(item[1])
            handoff.finish(item[0])
        for lane, seqs in admitted.items():
            if lane is not None:
                assert acked[lane] == seqs, f"lane {lane} acked out of order"
            else:
                assert sorted(acked[lane]) == seqs
        assert handoff.lanes == 0

    asyncio.run(run())
