"""The in-memory bus: the embedded default adapter, a real implementation of :class:`Bus`.

It keeps everything in this process and survives nothing (no ``DURABLE``), but otherwise honours
the whole contract of ``broker/dataplane/bus/contract.py`` and passes the same conformance suite as
the adapters for real servers.

Model:

- Topics and groups are created on demand. A group receives every event published while it has
  at least one subscription, starting the moment its first ``subscribe`` returned. A topic with
  no group drops what is published to it: there is no one to deliver to (a freshly started
  cemesh subscribes its Triggers before it accepts events).
- When the last subscription of a group closes, the group keeps what it already holds (including
  messages that were in a handler) for the next subscriber of that group, but receives nothing
  new until one subscribes again, and it is forgotten once it is empty. Without that, a deleted
  Trigger's group would fill up and then either stall every publisher of its topic
  (back-pressure) or grow without bound.
- Subscriptions of one group compete: each message goes to one of them. ``concurrency`` bounds
  the handler tasks of a subscription. They are started on demand: a subscription starts with
  none (one if its group holds a backlog or has other subscriptions, so that competing
  consumers all wait for work from the start); a message that has to wait because no task of
  the group is free starts one (up to ``concurrency``); a task that finds nothing to do while
  another one already waits ends (never the subscription's last). Tasks are reused from
  message to message (never one task per message). A subscription that never got a message
  costs no task, one that did costs one, not ``concurrency``: 10,000 Triggers at concurrency
  128 were 1.28 million idle tasks and ~110 KiB per Trigger (issue 14), and starting even one
  task each was a tenth of a restart with 10,000 Triggers.
- Two bounds, and ``publish`` waits (back-pressure) rather than dropping anything while either is
  reached: ``queue_bytes``, the memory the whole bus may hold in events (their data and
  attributes plus a fixed per-event overhead, see :func:`event_footprint`; an event counts once
  for every group that holds it, from its publish until that group acks it or is deleted), and
  ``queue_size``, the messages one live group may hold that no handler has taken (how far one
  group may fall behind, in events, whatever their size: a bound on queueing latency). The byte
  bound is what bounds the process's memory: count alone would let 10,000 events of 4 MiB in.
  A publish waits at most ``publish_timeout`` seconds (default: as long as it takes), then raises
  a retryable :class:`~broker.core.errors.PublishError` (the ingress answers 503 with
  ``Retry-After``). Two exceptions, both to avoid deadlocks: redeliveries are never held back,
  and neither is a publish made from inside a handler of this bus (a reply re-entering a
  broker): handlers are what drains the queues, so a handler waiting for room could be waiting
  for itself. An event larger than ``queue_bytes`` is taken when the bus holds nothing else.
- Settling: the handler returning acks; :class:`~broker.dataplane.bus.Nack` redelivers after its
  delay; any other exception is logged and redelivered after :data:`ERROR_REDELIVERY_DELAY` (so that
  a broken handler does not spin the CPU). Redeliveries carry ``attempt + 1`` and join the back of
  the queue, so one failing message cannot starve the others. Cancellation (closing a
  subscription or the bus) never acks: the message goes back to the *front* of its group's queue,
  for the group's next handler (``attempt + 1`` too if its handler had been called).
- Order per key (``ORDERED_BY_KEY``, at any concurrency, for groups subscribed with
  ``ordered=True``): while a message with key ``k`` is queued for, in the handler of, or waiting
  for redelivery to a group, later messages with key ``k`` wait behind it in that group. Only
  the next one is released once it is acked, so a key's messages are acked in publish order even
  across redeliveries. Messages without a key are not ordered; unordered groups run a key's
  messages concurrently.
- ``delete_group`` stops the group's subscriptions (as ``close`` does: nothing is acked) and
  then forgets the group with everything it holds; the next ``subscribe`` of that name makes a
  new, empty group.
- ``delete_topic`` does that for every group of the topic: the topic is nothing but its groups.
- Group selection (:class:`~broker.dataplane.bus.SelectsGroups`): the dispatcher may give a
  topic a selector (its Triggers' filters, indexed) and the groups it covers; a covered group
  then gets only the events the selector names it for, so an event costs one queue entry per
  Trigger it matches rather than per Trigger of its Broker, and only the groups that get an
  event can hold its publish back. Groups it does not cover get every event, as ever. A
  message carries the selector that named its group for it, if one did (``selected_by``).
- Events are passed by reference, not copied: consumers treat them as immutable (see
  ``broker/core/events.py``).
- ``close`` loses what the groups still hold (queued, or waiting for a redelivery): it logs how
  many events per group, as a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from adapters.memory.budget import ByteBudget, WaitQueue, event_footprint
from adapters.memory.options import MemoryOptions
from adapters.memory.selection import GroupSelection, live_targets, selected_by
from broker.core.errors import BusError, PublishError
from broker.core.events import CloudEvent
from broker.dataplane.bus import (
    BusFactory,
    Capability,
    GroupSelector,
    Handler,
    Message,
    SelectsGroups,
    redelivery_delay,
)
from broker.dataplane.bus.arguments import check_subscribe
from broker.dataplane.bus.handoff import HandOff
from broker.dataplane.bus.options import parse_options

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

# Redelivery delay after a handler raised something other than Nack: long enough that a handler
# failing on every message does not busy-loop, short enough not to matter for a transient error.
ERROR_REDELIVERY_DELAY = 0.05

# True in the handler tasks of memory-bus subscriptions (and in tasks they start): their
# publishes skip back-pressure (see the module docstring).
_in_handler: ContextVar[bool] = ContextVar("cemesh_memory_bus_in_handler", default=False)


class _Entry:
    """One event held for one group (each group counts its own attempts)."""

    __slots__ = ("attempt", "event", "key", "selected_by", "size")

    def __init__(self, event: CloudEvent, key: str | None, size: int, by: GroupSelector | None):
        self.event = event
        self.key = key
        self.size = size  # its event_footprint, charged to the bus's byte budget
        self.attempt = 1
        self.selected_by = by  # the selector that named the group, if one did


class _Group:
    """The queue of one consumer group of one topic, shared by its subscriptions.

    ``held`` counts the messages the group holds that no handler is working on (ready, waiting
    behind their key, or waiting for a redelivery delay); it is what ``queue_size`` bounds.
    ``taken`` counts the messages in a handler. The hand-off to handler tasks, the per-key
    guard and the give-back on cancel are :class:`~broker.dataplane.bus.handoff.HandOff`'s.
    """

    __slots__ = (
        "_budget",
        "_loop",
        "_putters",
        "_timers",
        "bytes",
        "handoff",
        "held",
        "name",
        "ordered",
        "subscriptions",
        "taken",
        "topic",
    )

    def __init__(self, topic: str, name: str, *, ordered: bool, budget: ByteBudget) -> None:
        self.topic = topic
        self.name = name
        self._budget = budget
        self.bytes = 0  # the footprint of everything held or taken, charged to the budget
        # Fixed when the group is made: the per-key guard must see a key's every message.
        self.ordered = ordered
        self.handoff: HandOff[_Entry] = HandOff(
            on_handed=self._handed, on_given_back=self._given_back, on_queued=self._queued
        )
        self.held = 0
        self.taken = 0
        self.subscriptions: set[_MemorySubscription] = set()
        self._putters = WaitQueue()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop = asyncio.get_running_loop()

    def _handed(self, entry: _Entry) -> None:
        self.held -= 1
        self.taken += 1
        if self._putters.waiters:  # per message: skip the call when no publisher waits
            self._putters.wake_one()

    def _queued(self) -> None:
        # A message waits with no handler task free: let a subscription start one.
        for subscription in self.subscriptions:
            if subscription.grow():
                return

    def _given_back(self, entry: _Entry) -> None:
        # Handed to a handler task cancelled before the handler saw it: not a delivery.
        self.taken -= 1
        self.held += 1

    # -- producing side ---------------------------------------------------------------------

    def put(self, entry: _Entry) -> None:
        """A newly published message."""
        self.held += 1
        self.bytes += entry.size
        self._budget.held += entry.size
        # Its lane: its key when the group is ordered (per-key guard), else none.
        self.handoff.put(entry, entry.key if self.ordered else None)

    async def wait_for_space(self, limit: int) -> None:
        """Return once the group holds fewer than ``limit`` untaken messages, or is not live."""
        while self.held >= limit and self.subscriptions:
            await self._putters.wait()

    def wake_putter(self) -> None:
        self._putters.wake_one()

    def wake_all_putters(self) -> None:
        """Let every waiting publisher look again (group no longer live, or bus closed)."""
        self._putters.wake_all()

    def release_all(self) -> None:
        """The group is forgotten with everything it holds: give its bytes back to the bus."""
        self._budget.release(self.bytes)
        self.bytes = 0

    # -- consuming side ---------------------------------------------------------------------

    def ack(self, entry: _Entry) -> None:
        """The handler returned: forget ``entry`` and release the next message of its key."""
        self.taken -= 1
        self.bytes -= entry.size
        self._budget.release(entry.size)
        if self.ordered:  # else it had no lane to finish
            self.handoff.finish(entry.key)

    def redeliver(self, entry: _Entry, delay: float) -> None:
        """The handler failed: deliver ``entry`` again after ``delay`` seconds, attempt + 1."""
        entry.attempt += 1
        self.taken -= 1
        self.held += 1  # its key (if any) stays taken, so nothing of that key overtakes it
        # Even with no delay, through the loop: a handler that nacks without awaiting anything
        # would otherwise take the message back at once, forever, and freeze the event loop.
        timer: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(timer)
            self.handoff.release(entry)

        timer = self._loop.call_later(max(delay, 0.0), due)
        self._timers.add(timer)

    def give_back(self, entry: _Entry) -> None:
        """Cancelled in its handler, never acked: back at the front for the next handler."""
        entry.attempt += 1
        self.taken -= 1
        self.held += 1
        self.handoff.release(entry, front=True)

    @property
    def idle(self) -> bool:
        """No subscription, nothing held, nothing in a handler: the group can be forgotten."""
        return not self.subscriptions and self.held == 0 and self.taken == 0

    def cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


class _MemorySubscription:
    """Up to ``concurrency`` handler tasks consuming one group for one subscriber, started on
    demand (see the module docstring)."""

    def __init__(self, bus: MemoryBus, group: _Group, handler: Handler, concurrency: int) -> None:
        self._bus = bus
        self._group = group
        self._handler = handler
        self._closed = False
        self._concurrency = concurrency
        self._name = f"memory-bus {group.topic}/{group.name}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting = 0  # tasks started that have not looked for a message yet
        if group.handoff.ready:  # a backlog waits for it; else the first message starts one
            self._start_task(on_demand=False)

    def _start_task(self, *, on_demand: bool) -> None:
        task = asyncio.create_task(self._work(on_demand), name=self._name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ensure_task(self) -> None:
        """Start a handler task if the subscription has none yet."""
        if not self._tasks and not self._closed:
            self._start_task(on_demand=False)

    def grow(self) -> bool:
        """A message waits with no handler task free: start one if below ``concurrency`` and
        none started is still on its way to take it; whether one was started."""
        if (
            self._closed
            or len(self._tasks) >= self._concurrency
            or self._starting >= len(self._group.handoff.ready)
        ):
            return False
        self._starting += 1
        self._start_task(on_demand=True)
        return True

    async def _work(self, on_demand: bool) -> None:
        _in_handler.set(True)  # this task runs in its own copy of the context
        group = self._group
        handoff = group.handoff
        handler = self._handler
        if on_demand:
            self._starting -= 1  # started by grow(): here now
        while not self._closed:  # checked for handlers that swallow the cancellation of close()
            if not handoff.ready and len(self._tasks) > 1 and handoff.has_waiting_taker:
                return  # nothing to do and another task already waits: not needed now
            entry = await handoff.take()
            message = Message(entry.event, entry.key, entry.attempt, entry.selected_by)
            # run_handler, written out: one coroutine less per message (and one frame less to
            # pass through on every suspension of the handler).
            try:
                await handler(message)
                delay = None
            except Exception as exc:
                delay = redelivery_delay(
                    exc,
                    message,
                    error_delay=ERROR_REDELIVERY_DELAY,
                    logger=log,
                    log_extra={"topic": group.topic, "group": group.name},
                )
            except BaseException:  # cancellation (close) and interpreter exit: never an ack
                group.give_back(entry)
                raise
            if delay is not None:
                group.redeliver(entry, delay)
                continue
            if self._closed:
                # The handler swallowed the cancellation of close(): still not an ack.
                group.give_back(entry)
            else:
                group.ack(entry)

    def stop(self) -> list[asyncio.Task[None]]:
        """Detach from the group and cancel the handler tasks; return the tasks to await."""
        self._closed = True
        group = self._group
        self._bus._subscriptions.discard(self)
        if self in group.subscriptions:
            group.subscriptions.discard(self)
            if not group.subscriptions:
                group.wake_all_putters()  # a group nobody consumes holds no publisher back
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # A handler may close its own subscription: its task is cancelled, not awaited.
        current = asyncio.current_task()
        return [task for task in tasks if task is not current and not task.done()]

    async def close(self) -> None:
        """Stop the handler tasks without acking what they hold. Idempotent."""
        tasks = self.stop()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._bus._forget_if_idle(self._group)


class MemoryBus:
    """The in-process bus (``bus: memory``); options: :class:`.options.MemoryOptions`."""

    name = "memory"
    capabilities = frozenset(
        {Capability.NACK_DELAY, Capability.REDELIVERY_COUNT, Capability.ORDERED_BY_KEY}
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(MemoryOptions, self.name, options)
        self.queue_size = self.options.queue_size
        self.publish_timeout: float | None = self.options.publish_timeout
        self._budget = ByteBudget(self.options.queue_bytes)
        self._topics: dict[str, dict[str, _Group]] = {}
        self._subscriptions: set[_MemorySubscription] = set()
        self._closed = False
        self._selections: dict[str, GroupSelection[_Group]] = {}  # topic -> its group selector
        self._groups_changed = 0  # moves whenever a group is made or forgotten

    def backlog(self, topic: str, group: str) -> int | None:
        """Events ``group`` holds or has in a handler (:class:`ReportsBacklog`)."""
        state = self._topics.get(topic, {}).get(group)
        return None if state is None else state.held + state.taken

    async def open(self) -> None:
        """Nothing to connect to. Idempotent; a closed bus stays closed."""
        if self._closed:
            raise BusError("memory bus is closed", retryable=False)

    @property
    def queue_bytes(self) -> int:
        return self._budget.limit

    @property
    def bytes_held(self) -> int:
        """The footprint of every event the bus holds (counted once per group holding it)."""
        return self._budget.held

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Queue ``event`` for every live group of ``topic`` that wants it (all of them, unless
        a selector says otherwise: :meth:`select_groups`); wait while the bus is full.

        Raises a retryable PublishError when there is no room within ``publish_timeout``.
        """
        if self._closed:
            raise PublishError("memory bus is closed", retryable=False)
        targets = self._targets(topic, event)
        if not targets:
            return  # no group wants it: no one to deliver to
        size = event_footprint(event)
        budget = self._budget
        if (not budget.waiting.waiters and self._blocker(targets, size) is None) or (
            _in_handler.get()
        ):
            self._put(topic, targets, event, key, size)
            return
        try:
            async with asyncio.timeout(self.publish_timeout):
                await self._wait_for_room(topic, event, size)
        except TimeoutError:
            raise PublishError(
                f"the in-memory bus is full (its subscribers are behind): no room within "
                f"{self.publish_timeout:g} s",
                retryable=True,
            ) from None
        self._put(topic, self._targets(topic, event), event, key, size)
        if budget.held < budget.limit:
            # Woken for room, and some is left: the next waiting publisher may fit too.
            budget.waiting.wake_one()

    def select_groups(
        self, topic: str, selector: GroupSelector | None, covered: frozenset[str]
    ) -> None:
        """:class:`~broker.dataplane.bus.SelectsGroups`: from the next publish on, a group of
        ``topic`` in ``covered`` gets only the events ``selector`` names it for."""
        if selector is None or not covered:
            self._selections.pop(topic, None)
        else:
            self._selections[topic] = GroupSelection(selector, covered)

    def _put(self, topic: str, to: list[_Group], e: CloudEvent, key: str | None, n: int) -> None:
        """Queue event ``e`` (footprint ``n``) for ``to``, each tagged with its selector if any."""
        selection = self._selections.get(topic)
        for group in to:
            group.put(_Entry(e, key, n, selected_by(selection, group.name)))

    def _targets(self, topic: str, event: CloudEvent) -> list[_Group]:
        """The live groups of ``topic`` that get ``event``."""
        selection, version = self._selections.get(topic), self._groups_changed
        return live_targets(self._topics.get(topic), selection, version, event)

    def _blocker(self, targets: list[_Group], size: int) -> _Group | ByteBudget | None:
        """What ``size`` more bytes for each of ``targets`` wait for, if anything."""
        limit = self.queue_size
        for group in targets:
            if group.held >= limit:
                return group
        return None if self._budget.has_room(size * len(targets)) else self._budget

    async def _wait_for_room(self, topic: str, event: CloudEvent, size: int) -> None:
        """Return once there is room for ``event`` in every live group of ``topic`` that gets it.

        Publishers already waiting for bytes go first: a newcomer queues behind them rather
        than taking the room an ack just made for them.
        """
        limit = self.queue_size
        woken_by: _Group | ByteBudget | None = None
        if self._budget.waiting.waiters:
            await self._budget.waiting.wait()
            woken_by = self._budget
        while True:
            targets = self._targets(topic, event)
            if not targets:
                return
            blocker = self._blocker(targets, size)
            if blocker is None:
                return
            if isinstance(woken_by, _Group) and woken_by is not blocker and woken_by.held < limit:
                woken_by.wake_putter()  # room made for us that we cannot use yet: pass it on
            if isinstance(blocker, _Group):
                await blocker.wait_for_space(limit)
            else:
                await blocker.waiting.wait()
            woken_by = blocker
            if self._closed:
                raise PublishError("memory bus closed while publishing", retryable=False)

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> _MemorySubscription:
        """Consume ``topic`` as ``group`` with ``concurrency`` handler tasks; live on return.

        ``ordered`` (fixed by the group's first subscription) turns on the per-key guard.
        """
        check_subscribe(
            self.name,
            self.capabilities,
            closed=self._closed,
            concurrency=concurrency,
            ordered=ordered,
        )
        groups = self._topics.setdefault(topic, {})
        state = groups.get(group)
        if state is None:
            state = groups[group] = _Group(topic, group, ordered=ordered, budget=self._budget)
            self._groups_changed += 1
        subscription = _MemorySubscription(self, state, handler, concurrency)
        state.subscriptions.add(subscription)
        if len(state.subscriptions) > 1:
            # Competing consumers: each waits for work from the start, so that every one of
            # them gets some (a lone subscription starts its first task on its first message).
            for member in state.subscriptions:
                member.ensure_task()
        self._subscriptions.add(subscription)
        return subscription

    async def delete_group(self, topic: str, group: str) -> None:
        """Stop ``group``'s subscriptions, then forget the group and what it holds. Idempotent."""
        if self._closed:
            raise BusError("memory bus is closed", retryable=False)
        state = self._topics.get(topic, {}).get(group)
        if state is None:
            return
        # A subscribe racing with this one joins the same group object: stop it too.
        while state.subscriptions:
            tasks = [task for s in list(state.subscriptions) for task in s.stop()]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        state.cancel_timers()
        state.wake_all_putters()
        state.release_all()
        groups = self._topics.get(topic)
        if groups is not None and groups.get(group) is state:
            del groups[group]
            self._groups_changed += 1
            if not groups:
                del self._topics[topic]

    async def delete_topic(self, topic: str) -> None:
        """Delete every group of ``topic`` (as :meth:`delete_group`). Idempotent."""
        if self._closed:
            raise BusError("memory bus is closed", retryable=False)
        while self._topics.get(topic):  # a group subscribed meanwhile goes too
            for group in list(self._topics[topic]):
                await self.delete_group(topic, group)

    async def close(self) -> None:
        """Stop every subscription (cancelling its handlers) and drop all state. Idempotent."""
        self._closed = True
        # Cancel every handler task before any of them runs its cancellation: a message given
        # back by one subscription must not be handed to another one that is closing too.
        tasks = [task for s in list(self._subscriptions) for task in s.stop()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        lost: dict[str, int] = {}
        for groups in self._topics.values():
            for group in groups.values():
                group.cancel_timers()
                group.wake_all_putters()
                if group.held or group.taken:
                    lost[f"{group.topic}/{group.name}"] = group.held + group.taken
                group.release_all()
        self._budget.waiting.wake_all()
        self._topics.clear()
        self._selections.clear()
        self._groups_changed += 1
        if lost:
            # Nothing here survives the process: say how much went with it.
            log.warning(
                "in-memory bus closed with undelivered events: they are lost",
                extra={"lost": sum(lost.values()), "by_group": lost},
            )

    def _forget_if_idle(self, group: _Group) -> None:
        groups = self._topics.get(group.topic)
        if groups is not None and group.idle and groups.get(group.name) is group:
            del groups[group.name]
            self._groups_changed += 1
            if not groups:
                del self._topics[group.topic]


# Checked by mypy: MemoryBus is a BusFactory building a Bus.
_factory: BusFactory = MemoryBus
_selects: type[SelectsGroups] = MemoryBus
