"""THE bus adapter contract: the :class:`Bus` Protocol, its messages, handlers and capabilities.

A bus moves events from ingress to the dispatcher. Every adapter (``adapters/memory/``,
``adapters/kafka/``, ...) implements :class:`Bus`; the one conformance suite in
``tests/conformance/`` holds each of them to it:

- ``publish`` returns only once the backend durably accepted the event; otherwise it raises
  :class:`~broker.core.errors.PublishError` (``retryable`` set) chained from the driver's error.
- ``subscribe`` returns only when the subscription is live: nothing published after it returns
  is missed. The same ``group`` means competing consumers (that is how replicas share work);
  different groups each get every event.
- At-least-once: the handler returning acks the message; the handler raising (or raising
  :class:`Nack` with a delay) makes the bus redeliver it later. Closing or cancelling never acks
  in-flight messages. An adapter never drops a message, never retries a handler by itself beyond
  redelivery, and never dead-letters: retry and dead letters live in ``broker/dispatch`` only.
- Events cross the bus unaltered: every attribute, extension and data byte.
- Ordering: ``subscribe(..., ordered=True)`` asks that events with the same key reach the group's
  handler one at a time, in publish order, even across redeliveries; only adapters declaring
  ``ORDERED_BY_KEY`` accept it. With ``ordered=False`` (the default) an adapter may hand events of
  one key to several handler tasks at once, so unordered consumers run at full concurrency.
- ``delete_group(topic, group)`` removes what the server keeps for ``group`` of ``topic`` (the
  Kafka consumer group and its committed offsets, the JetStream durable consumer, the Redis
  Streams consumer group and its pending entries, the Pub/Sub subscription), first closing the
  group's live subscriptions in this process (never acking what they hold). A later
  ``subscribe`` with that name starts a new group at "now": it gets none of the old backlog.
  Other groups of the topic are untouched. Idempotent: a group (or topic) that does not exist
  is fine. Failures are :class:`~broker.core.errors.BusError` chained from the driver's error.
  cemesh calls it only when a Trigger or Subscription is deleted, never while one is merely not
  Ready (its group must keep collecting events until it is Ready again).
- ``delete_topic(topic)`` removes the topic from the server with all it holds: its events and
  every group's state on it (the Kafka topic, the JetStream stream with its consumers, the Redis
  stream with its groups, the Pub/Sub topic with its subscriptions), first closing every live
  subscription of the topic in this process (never acking what they hold). A later ``publish``
  or ``subscribe`` of that name starts a new, empty topic, and a group subscribing to it again,
  even under an old name, gets only what is published after its ``subscribe`` returned.
  Idempotent: a topic that does not exist is fine. Failures are
  :class:`~broker.core.errors.BusError` chained from the driver's error. cemesh calls it only
  once the Broker or Channel that owns the topic is deleted and no longer served
  (:mod:`broker.controlplane.eventing.topics` says which topics are cemesh's to delete).

Adapters are built from a plain mapping of options (``BusFactory``), so that they need nothing
from the rest of cemesh but the bus layer, ``events`` and ``errors``;
:mod:`broker.dataplane.bus.registry` finds them by name.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from broker.core.events import CloudEvent


class Capability(enum.Enum):
    """What an adapter promises beyond the base contract (declared, and checked by the suite)."""

    DURABLE = "durable"  # an accepted event survives a restart of cemesh and of the bus
    ORDERED_BY_KEY = "ordered_by_key"  # events with one key reach one group in publish order
    NACK_DELAY = "nack_delay"  # Nack(delay) is honoured (redelivery not before delay)
    REDELIVERY_COUNT = "redelivery_count"  # Message.attempt counts deliveries of this message


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of one event to one subscription group."""

    event: CloudEvent
    key: str | None = None
    attempt: int = 1  # 1 on first delivery; adapters with REDELIVERY_COUNT increase it
    # The selector that named this message's group for it (SelectsGroups), so a handler can
    # tell what the selection already proved; None when the group got it unselected.
    selected_by: GroupSelector | None = None


Handler = Callable[[Message], Awaitable[None]]


class Nack(Exception):  # a control-flow signal, named like faststream's
    """Raised by a handler: do not ack; redeliver the message after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(f"nack, redeliver after {delay:.3f}s")
        self.delay = delay


async def run_handler(
    handler: Handler,
    message: Message,
    *,
    error_delay: float,
    logger: logging.Logger,
    log_extra: Mapping[str, Any],
) -> float | None:
    """Run ``handler`` on ``message`` as the contract says; what every adapter's worker calls.

    Returns None when the handler returned (ack), else the delay after which the message is to be
    redelivered (:func:`redelivery_delay`). Cancellation and other BaseExceptions propagate:
    the caller must not ack then.
    """
    try:
        await handler(message)
    except Exception as exc:
        return redelivery_delay(
            exc, message, error_delay=error_delay, logger=logger, log_extra=log_extra
        )
    return None


def redelivery_delay(
    exc: Exception,
    message: Message,
    *,
    error_delay: float,
    logger: logging.Logger,
    log_extra: Mapping[str, Any],
) -> float:
    """The delay after which ``message`` is redelivered, its handler having raised ``exc``:
    the :class:`Nack`'s, or ``error_delay`` after any other exception (logged on the adapter's
    ``logger`` with ``log_extra``).

    :func:`run_handler` is this around an ``await handler(message)``; an adapter on a hot path
    may write that ``try`` itself to save a coroutine per message, and call this in its
    ``except Exception``.
    """
    if isinstance(exc, Nack):
        return exc.delay
    logger.warning(
        "bus handler failed; redelivering the message",
        exc_info=exc,
        extra={
            **log_extra,
            "event_id": message.event.attributes.get("id"),
            "attempt": message.attempt,
        },
    )
    return error_delay


class Subscription(Protocol):
    """A live subscription; ``close`` stops consuming without acking in-flight messages."""

    async def close(self) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """The adapter contract: six methods and the declared capabilities."""

    name: str
    capabilities: frozenset[Capability]

    async def open(self) -> None:
        """Connect. Idempotent."""
        ...

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Return only once the event is durably accepted; raise PublishError otherwise."""
        ...

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> Subscription:
        """Start consuming ``topic`` as ``group``; return once live (``ordered``: see above)."""
        ...

    async def delete_group(self, topic: str, group: str) -> None:
        """Close ``group``'s subscriptions here, then delete its server-side state (see above).

        Idempotent; raises BusError (chained from the driver's error) when it cannot.
        """
        ...

    async def delete_topic(self, topic: str) -> None:
        """Close ``topic``'s subscriptions here, then delete it and its groups (see above).

        Idempotent; raises BusError (chained from the driver's error) when it cannot.
        """
        ...

    async def close(self) -> None:
        """Stop every subscription and disconnect. Idempotent; never acks in-flight work."""
        ...


@runtime_checkable
class ReportsBacklog(Protocol):
    """Optional: a bus that can tell, without a round trip, how many events a group holds."""

    def backlog(self, topic: str, group: str) -> int | None:
        """Events of ``group`` not yet acked (queued or in a handler); None: unknown group."""
        ...


# Given an event published to a topic, the groups of that topic that want it (issue 14).
GroupSelector = Callable[[CloudEvent], Collection[str]]


@runtime_checkable
class SelectsGroups(Protocol):
    """Optional: a bus that hands an event only to the groups of its topic that want it.

    A bus whose publish fans each event out to every group in this process (the in-memory bus)
    would otherwise make one queue entry and one handler call per group and event, which with
    10,000 Triggers on a Broker is the whole cost of an event. The dispatcher gives it a
    selector per topic (its Triggers' filters, indexed:
    :mod:`broker.dataplane.dispatch.trigger_index`): a group in ``covered`` then receives an
    event only when ``selector(event)`` names it, as a :class:`Message` whose ``selected_by`` is
    that selector (what it proved need not be tested again); a group not in ``covered`` still
    receives every event, with ``selected_by`` None. Whatever a covered group is not given is,
    for it, as if it had been received and acked at once. ``selector=None`` drops the topic's
    selection: every group gets every event again. A bus backed by a server (Kafka, NATS, ...)
    does not offer it: there each group is the server's, and what it must receive is decided
    where it is stored.
    """

    def select_groups(
        self, topic: str, selector: GroupSelector | None, covered: frozenset[str]
    ) -> None:
        """Use ``selector`` for the groups ``covered`` of ``topic`` from the next publish on."""
        ...


@runtime_checkable
class PublishesBatch(Protocol):
    """Optional: a bus that sends the events of one batch together and awaits their acks once.

    The ingress hands it the events of a batched request (``application/cloudevents-batch+json``)
    instead of awaiting one ``publish`` after the other, so a request of 100 events costs about
    one round trip to the server, not 100. Each event is keyed by its ``key``. The guarantees are
    ``publish``'s, for every event: the call returns only once all of them are durably accepted,
    and on a bus declaring ``ORDERED_BY_KEY`` events of one key are stored in the order given.
    If any is refused it raises :class:`~broker.core.errors.PublishError` (``retryable`` as
    ``publish`` would say) once it waits for none of the others; some of them may have been
    stored, so the sender's retry may store them twice, which at-least-once allows.
    """

    async def publish_batch(self, topic: str, events: Sequence[CloudEvent]) -> None:
        """Publish every event of ``events`` to ``topic`` as ``publish`` would, together."""
        ...


BusFactory = Callable[[Mapping[str, Any]], Bus]
