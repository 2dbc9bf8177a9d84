"""What the memory bus promises beyond the shared contract (its docstring, ``adapters/memory/``).

The contract itself is checked by ``test_bus_contract.py`` like for every adapter; these tests
cover the memory bus's own choices: back-pressure instead of dropping (``queue_size``), what
happens to a group without subscribers, option validation, logging of handler failures, and
that a delayed redelivery holds back its key only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.memory import MemoryBus
from adapters.memory.budget import event_footprint
from broker.core.errors import BusError, PublishError
from broker.core.events import CloudEvent, new_event
from broker.dataplane.bus import Message, Nack, Subscription, create_bus
from tests.conformance.inbox import WAIT, Inbox, sample_event, wait_set

Names = Callable[[str], str]

# A pause that gives the bus the chance to do something it must NOT do (complete a publish that
# must wait, deliver to a group that must not get the event); never used to wait for something.
SETTLE = 0.1


@pytest.fixture
async def small_bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus({"queue_size": 2})
    await bus.open()
    yield bus
    await bus.close()


async def test_full_group_makes_publish_wait_instead_of_dropping(
    small_bus: MemoryBus, topic: str
) -> None:
    """Back-pressure: with ``queue_size`` untaken messages queued, publish waits for room."""
    release = asyncio.Event()
    started = asyncio.Event()
    inbox = Inbox()

    async def slow(message: Message) -> None:
        started.set()
        await release.wait()
        inbox.record(message)

    await small_bus.subscribe(topic, group="g", handler=slow)
    events = [sample_event(i) for i in range(4)]
    await small_bus.publish(topic, events[0])  # taken by the handler at once
    await wait_set(started, "the handler to take the first event")
    await small_bus.publish(topic, events[1])
    await small_bus.publish(topic, events[2])  # the group now holds queue_size (2) events
    blocked = asyncio.create_task(small_bus.publish(topic, events[3]))
    await asyncio.sleep(SETTLE)  # room for a wrongful completion of the blocked publish
    assert not blocked.done()
    release.set()
    await asyncio.wait_for(blocked, WAIT)
    await inbox.wait_for_ids({event.id for event in events})
    assert inbox.ids() == [event.id for event in events]


async def test_close_fails_a_waiting_publish_with_publish_error(
    small_bus: MemoryBus, topic: str
) -> None:
    """A publish waiting for room when the bus closes raises a terminal PublishError."""
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()  # until the bus is closed

    await small_bus.subscribe(topic, group="g", handler=stuck)
    for index in range(3):
        await small_bus.publish(topic, sample_event(index))
    await wait_set(started, "the handler to start")
    blocked = asyncio.create_task(small_bus.publish(topic, sample_event(3)))
    await asyncio.sleep(SETTLE)  # room for a wrongful completion of the blocked publish
    assert not blocked.done()
    await small_bus.close()
    with pytest.raises(PublishError) as raised:
        await asyncio.wait_for(blocked, WAIT)
    assert raised.value.retryable is False


def _megabyte_event(index: int) -> CloudEvent:
    return new_event(type="big", source="/big", id=f"big-{index}", data=b"x" * 1024 * 1024)


async def test_bytes_bound_the_whole_bus_and_acks_make_room(topic: str) -> None:
    """With ``queue_bytes`` held in events (counted until acked), publish waits for room."""
    footprint = event_footprint(_megabyte_event(0))
    bus = MemoryBus({"queue_bytes": 2 * footprint})
    release = asyncio.Event()
    inbox = Inbox()

    async def slow(message: Message) -> None:
        await release.wait()
        inbox.record(message)

    try:
        await bus.subscribe(topic, group="g", handler=slow)
        await bus.publish(topic, _megabyte_event(0))  # in the handler: still counted
        await bus.publish(topic, _megabyte_event(1))
        assert bus.bytes_held == 2 * footprint
        blocked = asyncio.create_task(bus.publish(topic, _megabyte_event(2)))
        await asyncio.sleep(SETTLE)  # room for a wrongful completion of the blocked publish
        assert not blocked.done()
        assert bus.bytes_held <= bus.queue_bytes
        release.set()
        await asyncio.wait_for(blocked, WAIT)
        await inbox.wait_for_ids({f"big-{i}" for i in range(3)})
        assert bus.bytes_held == 0
    finally:
        await bus.close()


async def test_a_full_bus_refuses_a_publish_after_publish_timeout(topic: str) -> None:
    """No room within ``publish_timeout``: a retryable PublishError, and nothing is queued."""
    footprint = event_footprint(_megabyte_event(0))
    bus = MemoryBus({"queue_bytes": footprint, "publish_timeout": 0.05})
    try:
        await bus.subscribe(topic, group="g", handler=lambda m: asyncio.Event().wait())
        await bus.publish(topic, _megabyte_event(0))
        with pytest.raises(PublishError) as raised:
            await asyncio.wait_for(bus.publish(topic, _megabyte_event(1)), WAIT)
        assert raised.value.retryable is True
        assert "full" in raised.value.message
        assert bus.bytes_held == footprint
    finally:
        await bus.close()


async def test_deleting_a_group_gives_its_bytes_back(topic: str) -> None:
    bus = MemoryBus()
    try:
        await bus.subscribe(topic, group="g", handler=lambda m: asyncio.Event().wait())
        for index in range(3):
            await bus.publish(topic, _megabyte_event(index))
        assert bus.bytes_held == 3 * event_footprint(_megabyte_event(0))
        await bus.delete_group(topic, "g")
        assert bus.bytes_held == 0
    finally:
        await bus.close()


def test_the_footprint_counts_data_and_every_attribute() -> None:
    small = new_event(type="t", source="/s", id="1")
    big_name = small.evolve(set={"x" * 1_000_000: "v"})
    big_value = small.evolve(set={"ext": "v" * 1_000_000})
    with_data = CloudEvent(dict(small.attributes), b"d" * 1_000_000)
    for bigger in (big_name, big_value, with_data):
        assert event_footprint(bigger) >= event_footprint(small) + 1_000_000


async def test_publish_from_a_handler_is_not_held_back(topic: str) -> None:
    """A handler publishing into its own full group (a reply re-entering) cannot deadlock."""
    bus = MemoryBus({"queue_size": 1})
    inbox = Inbox()
    replies = [sample_event(i) for i in range(1, 4)]

    async def reply_three_times(message: Message) -> None:
        inbox.record(message)
        if len(inbox.messages) == 1:
            for reply in replies:  # the group is full after the first one
                await asyncio.wait_for(bus.publish(topic, reply), WAIT)

    await bus.subscribe(topic, group="g", handler=reply_three_times)
    first = sample_event(0)
    await bus.publish(topic, first)
    await inbox.wait_for_ids({first.id, *(reply.id for reply in replies)})
    await bus.close()


async def test_topic_without_group_drops_the_event(topic: str) -> None:
    """No group on the topic: there is no one to deliver to, publish returns at once."""
    bus = MemoryBus()
    await bus.publish(topic, sample_event())
    inbox = Inbox()
    await bus.subscribe(topic, group="g", handler=inbox.handler)
    later = sample_event(1)
    await bus.publish(topic, later)
    await inbox.wait_for_count(1)
    await asyncio.sleep(SETTLE)  # room for a wrongful delivery of the event published before
    assert inbox.ids() == [later.id]
    await bus.close()


async def test_group_without_subscribers_keeps_its_backlog_but_holds_no_publisher_back(
    small_bus: MemoryBus, topic: str
) -> None:
    """A group whose last subscriber left keeps what it held, gets nothing new, blocks no one."""
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()  # until the subscription is closed

    subscription = await small_bus.subscribe(topic, group="g", handler=stuck)
    held = [sample_event(i) for i in range(3)]
    for event in held:
        await small_bus.publish(topic, event)
    await wait_set(started, "the handler to start")
    await subscription.close()
    # The group is full (queue_size 2 + the one given back) but nobody consumes it any more.
    unseen = [sample_event(i) for i in range(3, 8)]
    for event in unseen:
        await asyncio.wait_for(small_bus.publish(topic, event), WAIT)
    inbox = Inbox()
    await small_bus.subscribe(topic, group="g", handler=inbox.handler)
    await inbox.wait_for_ids({event.id for event in held})
    await asyncio.sleep(SETTLE)  # room for a wrongful delivery of the events published meanwhile
    assert inbox.ids() == [event.id for event in held]  # the one given back first


async def test_emptied_group_without_subscribers_is_forgotten(topic: str) -> None:
    bus = MemoryBus()
    inbox = Inbox()
    subscription = await bus.subscribe(topic, group="g", handler=inbox.handler)
    await bus.publish(topic, sample_event())
    await inbox.wait_for_count(1)
    await subscription.close()
    assert topic not in bus._topics
    await bus.close()


async def test_nack_delay_holds_back_its_key_only(topic: str) -> None:
    """Ordered groups: while a nacked event waits for its delay, its key waits; others go on."""
    bus = MemoryBus()
    inbox = Inbox()
    nacked: set[str] = set()

    async def nack_first(message: Message) -> None:
        if not nacked:
            nacked.add(message.event.id)
            raise Nack(60.0)  # far beyond the test: only what is not held back arrives
        inbox.record(message)

    await bus.subscribe(topic, group="g", handler=nack_first, ordered=True)
    first, same_key, other_key, no_key = (sample_event(i) for i in range(4))
    await bus.publish(topic, first, key="a")
    await bus.publish(topic, same_key, key="a")
    await bus.publish(topic, other_key, key="b")
    await bus.publish(topic, no_key)
    await inbox.wait_for_ids({other_key.id, no_key.id})
    await asyncio.sleep(SETTLE)  # room for a wrongful delivery of the held-back key
    assert same_key.id not in inbox.ids()
    await bus.close()


async def test_handler_nacking_at_once_does_not_freeze_the_loop(topic: str) -> None:
    """``Nack(0)`` from a handler that never awaits still lets the rest of the program run."""
    bus = MemoryBus()
    nacks = 0
    limit = 10_000  # a spinning bus reaches this before anything else runs; then it stops

    async def nack_at_once(message: Message) -> None:
        nonlocal nacks
        nacks += 1
        if nacks < limit:
            raise Nack(0.0)

    inbox = Inbox()
    await bus.subscribe(topic, group="g", handler=nack_at_once)
    await bus.subscribe(topic, group="other", handler=inbox.handler)
    await bus.publish(topic, sample_event())
    other = sample_event(1)
    await bus.publish(topic, other)
    await inbox.wait_for_ids({other.id})
    assert nacks < limit, "the nack loop ran without letting the other group's handler run"
    await bus.close()


async def test_handler_error_is_logged_with_the_exception(
    topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    inbox = Inbox()

    async def fail_once(message: Message) -> None:
        inbox.record(message)
        if len(inbox.messages) == 1:
            raise ValueError("boom on purpose")

    with caplog.at_level(logging.WARNING, logger="adapters.memory"):
        await bus.subscribe(topic, group="g", handler=fail_once)
        await bus.publish(topic, sample_event())
        await inbox.wait_for_count(2)
    records = [r for r in caplog.records if r.name == "adapters.memory"]
    assert len(records) == 1
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], ValueError)
    await bus.close()


async def test_handler_may_close_its_own_subscription(topic: str) -> None:
    """Closing from inside a handler neither deadlocks nor acks the message being handled."""
    bus = MemoryBus()
    closed = asyncio.Event()
    holder: list[Subscription] = []

    async def close_self(message: Message) -> None:
        await holder[0].close()
        closed.set()
        await asyncio.sleep(0)  # the cancellation of this task lands here

    holder.append(await bus.subscribe(topic, group="g", handler=close_self))
    event = sample_event()
    await bus.publish(topic, event)
    await wait_set(closed, "the handler to close its subscription")
    inbox = Inbox()
    await bus.subscribe(topic, group="g", handler=inbox.handler)
    await inbox.wait_for_count(1)
    assert inbox.messages[0].event.id == event.id
    assert inbox.messages[0].attempt == 2
    await bus.close()


async def test_handler_swallowing_the_cancellation_does_not_ack(topic: str) -> None:
    """A handler that catches the cancellation of close() and returns still does not ack."""
    bus = MemoryBus()
    started = asyncio.Event()

    async def swallow(message: Message) -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # until the subscription is closed

    subscription = await bus.subscribe(topic, group="g", handler=swallow)
    event = sample_event()
    await bus.publish(topic, event)
    await wait_set(started, "the handler to start")
    await asyncio.wait_for(subscription.close(), WAIT)
    inbox = Inbox()
    await bus.subscribe(topic, group="g", handler=inbox.handler)
    await inbox.wait_for_count(1)
    assert inbox.ids() == [event.id]
    await bus.close()


@pytest.mark.parametrize(
    "options",
    [
        {"queue_size": 0},
        {"queue_size": "10"},
        {"queue_size": True},
        {"queue_sise": 10},
        {"queue_bytes": 0},
        {"queue_bytes": 1.5},
        {"publish_timeout": -1},
        {"publish_timeout": "5"},
    ],
)
def test_bad_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(BusError) as raised:
        MemoryBus(options)
    assert raised.value.retryable is False


def test_built_by_name_with_options() -> None:
    bus = create_bus("memory", {"queue_size": 3})
    assert isinstance(bus, MemoryBus)
    assert bus.queue_size == 3
    assert MemoryBus().queue_size == 100_000


async def test_unordered_group_runs_one_keys_events_concurrently(topic: str) -> None:
    """ordered=False (the default): events sharing a key are not held back behind each other."""
    bus = MemoryBus()
    both_started = asyncio.Event()
    started: list[str] = []

    async def handler(message: Message) -> None:
        started.append(message.event.id)
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 5)  # only returns if both run at once

    await bus.subscribe(topic, group="g", handler=handler, concurrency=2)
    await bus.publish(topic, sample_event(0), key="same")
    await bus.publish(topic, sample_event(1), key="same")
    await asyncio.wait_for(both_started.wait(), 5)
    await bus.close()


# --- group selection (SelectsGroups, issue 14) ---------------------------------------------------


def _by_seq_parity(event: CloudEvent) -> list[str]:
    """Selects group "even" for events with an even ``seq``, "odd" for the others."""
    return ["even" if int(event.attributes["seq"]) % 2 == 0 else "odd"]


async def test_covered_groups_get_only_the_events_the_selector_names_them_for(topic: str) -> None:
    bus = MemoryBus()
    await bus.open()
    try:
        inboxes = {name: Inbox() for name in ("even", "odd", "everything")}
        for name, inbox in inboxes.items():
            await bus.subscribe(topic, group=name, handler=inbox.handler)
        bus.select_groups(topic, _by_seq_parity, frozenset({"even", "odd"}))
        events = [sample_event(i) for i in range(6)]
        for event in events:
            await bus.publish(topic, event)
        await inboxes["everything"].wait_for_count(6)  # not covered: every event
        await inboxes["even"].wait_for_ids({e.id for e in events[0::2]})
        await inboxes["odd"].wait_for_ids({e.id for e in events[1::2]})
        await asyncio.sleep(SETTLE)  # room for a wrongful extra delivery
        assert sorted(inboxes["even"].ids()) == sorted(e.id for e in events[0::2])
        assert sorted(inboxes["odd"].ids()) == sorted(e.id for e in events[1::2])

        bus.select_groups(topic, None, frozenset())  # no selection: everyone gets everything
        last = sample_event(7)
        await bus.publish(topic, last)
        for inbox in inboxes.values():
            await inbox.wait_for_ids({last.id})
    finally:
        await bus.close()


async def test_a_full_group_holds_back_only_the_publishes_it_is_selected_for(
    small_bus: MemoryBus, topic: str
) -> None:
    """Back-pressure comes from the groups that get the event: a stuck Trigger that an event
    does not match does not hold that event back."""
    release = asyncio.Event()

    async def stuck(message: Message) -> None:
        await release.wait()

    inbox = Inbox()
    await small_bus.subscribe(topic, group="even", handler=stuck)
    await small_bus.subscribe(topic, group="odd", handler=inbox.handler)
    small_bus.select_groups(topic, _by_seq_parity, frozenset({"even", "odd"}))
    for seq in (0, 2, 4):  # one taken by the stuck handler, two queued: "even" is full
        await small_bus.publish(topic, sample_event(seq))
    odd = [sample_event(seq) for seq in (1, 3, 5, 7)]
    for event in odd:
        await asyncio.wait_for(small_bus.publish(topic, event), WAIT)  # never waits for "even"
    await inbox.wait_for_ids({e.id for e in odd})
    blocked = asyncio.create_task(small_bus.publish(topic, sample_event(6)))
    await asyncio.sleep(SETTLE)  # room for a wrongful completion
    assert not blocked.done()
    release.set()
    await asyncio.wait_for(blocked, WAIT)
