"""A Trigger's filter runs once per event on the in-memory bus, and a changed filter still wins.

The in-memory bus queues an event only for the Triggers the index of the Broker's filters
selects, and tags the message with that selection; the dispatcher's handler then skips the
filter only when the selection tested the Trigger's current filter (issue 14). These tests run
a real :class:`~broker.dataplane.dispatch.dispatcher.Dispatcher` on a real in-memory bus,
delivering to a real HTTP subscriber, with filters that count their calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from adapters.memory import MemoryBus
from broker.core.events import CloudEvent, new_event
from broker.core.metrics import Metrics
from broker.core.spec import DeliveryPolicy, Snapshot, TriggerSpec
from broker.dataplane.dispatch.client import DeliveryClient
from broker.dataplane.dispatch.delivery import Deliverer
from broker.dataplane.dispatch.dispatcher import Dispatcher
from broker.dataplane.dispatch.filters import compile_trigger_filter
from tests.support.subscriber import Received, RecordingSubscriber, Reply

TOPIC = "cemesh.broker.default.b"
WAIT = 10.0


@dataclass
class CountingFilter:
    """A Trigger's compiled filter that counts how often it is run."""

    spec: dict[str, Any]
    calls: int = 0

    def __post_init__(self) -> None:
        self._predicate, self.source = compile_trigger_filter(self.spec)

    def __call__(self, event: CloudEvent) -> bool:
        self.calls += 1
        return self._predicate(event)


def trigger(name: str, subscriber: str, counting: CountingFilter) -> TriggerSpec:
    return TriggerSpec(
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        broker="b",
        topic=TOPIC,
        group=f"trigger-{name}",
        subscriber_uri=f"{subscriber}/{name}",
        delivery=DeliveryPolicy(timeout=WAIT),
        filter=counting,
        filter_source=counting.source,
    )


def event(type_: str, n: int) -> CloudEvent:
    return new_event(type=type_, source="/test", id=f"{type_}-{n}", extensions={"n": str(n)})


async def _no_reply(namespace: str, broker: str, reply: CloudEvent) -> bool:
    raise AssertionError("these subscribers never reply")


@asynccontextmanager
async def dispatching(metrics: Metrics) -> AsyncIterator[tuple[Dispatcher, MemoryBus]]:
    """A dispatcher delivering one event at a time per Trigger from an in-memory bus."""
    bus = MemoryBus()
    client = DeliveryClient()
    dispatcher = Dispatcher(
        buses={"memory": bus},
        bus_of_topic=lambda topic: "memory",
        deliverer=Deliverer(client),
        client=client,
        reply_to_broker=_no_reply,
        metrics=metrics,
        concurrency=1,
    )
    await bus.open()
    try:
        yield dispatcher, bus
    finally:
        await dispatcher.close()
        await bus.close()
        await client.close()


async def test_an_event_the_index_selected_is_filtered_once_not_again_in_the_handler() -> None:
    # The pin comes from CESQL, so the index runs the whole filter for events of type a; the
    # handler must not run it a second time. Events of type b are never tested at all.
    counting = CountingFilter({"filters": [{"cesql": "type = 'a' AND INT(n) >= 0"}]})
    async with RecordingSubscriber() as subscriber, dispatching(Metrics()) as (dispatcher, bus):
        await dispatcher.apply(Snapshot(triggers={"uid-t": trigger("t", subscriber.url, counting)}))
        wanted = [event("a", n) for n in range(5)]
        for sent in [*wanted, *(event("b", n) for n in range(5))]:
            await bus.publish(TOPIC, sent)
        got = await subscriber.wait_for(len(wanted))
        assert sorted(r.event.id for r in got if r.event) == sorted(e.id for e in wanted)
        assert counting.calls == len(wanted)


async def test_an_event_without_a_selection_is_filtered_in_the_handler() -> None:
    # A replay (and every message of a durable bus) carries no selection: the handler tests.
    counting = CountingFilter({"filters": [{"exact": {"type": "a"}}]})
    async with RecordingSubscriber() as subscriber, dispatching(Metrics()) as (dispatcher, _):
        await dispatcher.apply(Snapshot(triggers={"uid-t": trigger("t", subscriber.url, counting)}))
        await dispatcher.redeliver("uid-t", event("b", 1))
        assert counting.calls == 1
        await dispatcher.redeliver("uid-t", event("a", 2))
        assert counting.calls == 2
        [received] = await subscriber.wait_for(1)
        assert received.event is not None and received.event.id == "a-2"


async def test_a_filter_changed_between_selection_and_handling_is_obeyed() -> None:
    first_arrived = asyncio.Event()
    release = asyncio.Event()

    async def hold_the_first(received: Received) -> Reply:
        if not first_arrived.is_set():
            first_arrived.set()
            await release.wait()
        return (202, [], b"")

    old = CountingFilter({"filters": [{"cesql": "type = 'a'"}]})
    new = CountingFilter({"filters": [{"cesql": "type = 'c'"}]})
    metrics = Metrics()
    async with (
        RecordingSubscriber(hold_the_first) as subscriber,
        dispatching(metrics) as (dispatcher, bus),
    ):
        await dispatcher.apply(Snapshot(triggers={"uid-t": trigger("t", subscriber.url, old)}))
        await bus.publish(TOPIC, event("a", 1))  # delivered, held by the subscriber
        await asyncio.wait_for(first_arrived.wait(), WAIT)
        await bus.publish(TOPIC, event("a", 2))  # selected by the old filter, queued
        assert bus.backlog(TOPIC, "trigger-t") == 2
        await dispatcher.apply(Snapshot(triggers={"uid-t": trigger("t", subscriber.url, new)}))
        await bus.publish(TOPIC, event("c", 3))  # selected by the new filter
        release.set()
        got = await subscriber.wait_for(2)
        assert [r.event.id for r in got if r.event] == ["a-1", "c-3"]
        # a-2 was tested again against the new filter, in the handler, and filtered.
        assert new.calls == 2  # the index on c-3, the handler on a-2
        assert metrics.deliveries["filtered"] >= 1
        await asyncio.sleep(0.2)  # room for a wrongful late delivery of a-2
        assert len(subscriber.received) == 2
