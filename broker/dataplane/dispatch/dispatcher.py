"""Consume loops: one bus subscription (consumer group) per Trigger and per Subscription.

The dispatcher is handed a :class:`~broker.core.spec.Snapshot` at a time and makes the bus
subscriptions match it: new Triggers and Subscriptions are subscribed (and only then reported
Ready, K61), changed ones have their spec swapped in place (no resubscribe, so nothing is missed),
removed ones are unsubscribed. For each message it filters (Triggers: K62, K70-K91), strips
``knativebrokerttl`` (K96), and hands the event to the
:class:`~broker.dataplane.dispatch.delivery.Deliverer`, which owns retries, replies and dead
letters. The handler returns (ack) only once the outcome is settled; a Nack from the deliverer keeps
the event on the bus.

Many Triggers on one Broker (issue 14). Each Trigger keeps its own consumer group, so its
retries, backoff, ordering, concurrency, backlog and (on a durable bus) at-least-once across
restarts stay its own. On a bus that :class:`~broker.dataplane.bus.SelectsGroups` (the in-memory
bus, where every group is a queue in this process) the dispatcher also gives each Broker topic the
:class:`~broker.dataplane.dispatch.trigger_index.TriggerIndex` of its Triggers' filters, and the
bus queues an event only for the groups of the Triggers it matches: one indexed match per event
instead of one queue entry, handler call and filter call per Trigger. Such a message carries the
selector that picked it (``Message.selected_by``); the handler runs the Trigger's filter again
only when that selector tested another predicate than the Trigger's current one (its filter
changed between publish and delivery) or none (a durable bus, a group not covered). Events a
Trigger is not given count as ``filtered`` in total, not per Trigger. On the durable buses each
group is the server's and receives every event, as before (docs/trigger-index.md says why).

Loop guard (K45, K107, and issue 6: loops through Sequences and Parallels). ``knativebrokerttl``
travels with an event through cemesh's own Brokers and Channels: a Trigger strips it only when its
subscriber is not one of them (K96), and a Subscription's reply inherits the ttl of the event it
answers, decremented (set to ``max_ttl`` when missing), so a reply loop that never re-enters a
Broker (a Sequence replying to its own first channel) still ends; a reply whose ttl ran out is
dropped, logged and counted (``loops_stopped``). A Subscription's reply into one of cemesh's
Brokers takes the Trigger-reply path, where the Broker's ingress decrements and counts. The rules
live in :mod:`broker.dataplane.reply`; each consumer's
:class:`~broker.dataplane.dispatch.delivery.Target` (with its reply handler) and whether its
subscriber is one of cemesh's own are decided once per snapshot, and the deliverer hands each reply
the ttl of the event it answers.

Draining (SIGTERM): new messages are nacked back to the bus while in-flight deliveries finish, up
to the drain timeout; only then are the subscriptions closed. The log says what the drain waits
for (in-flight deliveries per Trigger/Subscription, and for how long) and how it ended. On a
durable bus a delivery waiting out a retry backoff is handed back to the bus at once (a
:class:`~broker.dataplane.bus.Nack`: it is redelivered after the restart, or by another replica)
instead of holding the shutdown; on the in-memory bus nothing survives the process, so it is waited
for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from time import perf_counter
from urllib.parse import urlsplit

from prometheus_client.metrics_core import GaugeMetricFamily

from broker.core.errors import NotFound
from broker.core.events import BROKER_TTL, DEFAULT_MAX_TTL, CloudEvent, EventFilter
from broker.core.metrics import DeliveryMeter, Metrics
from broker.core.spec import Snapshot, SubscriptionSpec, TriggerSpec
from broker.dataplane.bus import (
    Bus,
    Capability,
    Message,
    Nack,
    ReportsBacklog,
    SelectsGroups,
    Subscription,
)
from broker.dataplane.dispatch.delivery import (
    Deliverer,
    DeliveryRecord,
    Outcome,
    Target,
    TokenSource,
    reply_poster,
)
from broker.dataplane.dispatch.http import HttpClient
from broker.dataplane.dispatch.trigger_index import TriggerIndex
from broker.dataplane.reply import ReplyToBroker, subscription_reply, trigger_reply
from broker.dataplane.routes import Route, match_route, may_name_route

log = logging.getLogger(__name__)

BACKLOG_METRIC = "cemesh_bus_group_backlog"


@dataclass(slots=True)
class _Consumer:
    """One live bus subscription and the spec it currently serves."""

    spec: TriggerSpec | SubscriptionSpec
    target: Target
    subscription: Subscription | None = None
    durable: bool = False  # its bus keeps what is handed back to it (Capability.DURABLE)
    # Its subscriber is none of cemesh's Brokers/Channels: it never sees knativebrokerttl (K96).
    strip_ttl: bool = True
    in_flight: int = 0  # deliveries of this consumer under way now
    _labels: tuple[str, str, str, str] = ("", "", "", "")
    _labels_of: object = None  # the spec _labels were made from
    _meter: DeliveryMeter | None = None
    _meter_of: object = None  # the spec _meter was picked for

    @property
    def name(self) -> str:
        kind = "trigger" if isinstance(self.spec, TriggerSpec) else "subscription"
        return f"{kind} {self.spec.namespace}/{self.spec.name}"

    def meter(self, metrics: Metrics) -> DeliveryMeter:
        """Its metrics meter (for its current spec's labels)."""
        if self._meter_of is not self.spec or self._meter is None:
            self._meter = metrics.delivery_meter(self.labels)
            self._meter_of = self.spec
        return self._meter

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """Its metric labels: (kind, namespace, Broker or Channel, name); made once per spec."""
        spec = self.spec
        if self._labels_of is not spec:
            if isinstance(spec, TriggerSpec):
                self._labels = ("trigger", spec.namespace, spec.broker, spec.name)
            else:
                self._labels = ("subscription", spec.namespace, spec.channel, spec.name)
            self._labels_of = spec
        return self._labels


class _IndexSelector:
    """A Broker topic's group selector (:class:`~broker.dataplane.bus.SelectsGroups`): the
    groups of the Triggers whose filter an event matches, by the
    :class:`~broker.dataplane.dispatch.trigger_index.TriggerIndex` of their filters.

    The index is built at the first event: applying 1,000 Triggers one sync after another
    would otherwise build it once per sync, for no event. ``filters`` is the predicate each
    group was selected by: a message this selector named a group for has passed that filter.
    """

    __slots__ = ("_deliveries", "_entries", "_index", "filters")

    def __init__(
        self, entries: list[tuple[str, str, EventFilter]], deliveries: Counter[str]
    ) -> None:
        self._entries = entries
        self._deliveries = deliveries
        self._index: TriggerIndex[str] | None = None
        self.filters = {group: predicate for group, _, predicate in entries}

    def __call__(self, event: CloudEvent) -> list[str]:
        index = self._index
        if index is None:
            index = self._index = TriggerIndex(self._entries)
        groups = index.matching(event)
        self._deliveries["filtered"] += len(self._entries) - len(groups)
        return groups


def _proved(selected_by: object, spec: TriggerSpec) -> bool:
    """Whether the selector that named ``spec``'s group for a message already tested the
    Trigger's filter as it is now (the very same predicate: a filter changed since the message
    was selected is tested again)."""
    return (
        selected_by.__class__ is _IndexSelector
        and selected_by.filters.get(spec.group) is spec.filter
    )


class Dispatcher:
    """Keeps bus subscriptions in step with the snapshot and delivers what they receive."""

    def __init__(
        self,
        *,
        buses: Mapping[str, Bus],
        bus_of_topic: Callable[[str], str],
        deliverer: Deliverer,
        client: HttpClient,
        reply_to_broker: ReplyToBroker,
        metrics: Metrics,
        concurrency: int,
        max_ttl: int = DEFAULT_MAX_TTL,
        tokens: TokenSource | None = None,
    ) -> None:
        self._tokens = tokens  # for Subscriptions' replies (the deliverer has its own)
        self._buses = buses
        self._bus_of_topic = bus_of_topic
        self._deliverer = deliverer
        self._client = client
        self._reply_to_broker = reply_to_broker
        self._concurrency = concurrency
        self._consumers: dict[str, _Consumer] = {}
        self._lock = asyncio.Lock()
        self._draining = False
        self._hand_back = asyncio.Event()  # set by drain: durable deliveries stop backing off
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._deliveries = metrics.deliveries
        self._metrics = metrics
        metrics.add_source(self.backlog_families)
        self._max_ttl = max_ttl
        # Ingress routes of the Brokers and Channels cemesh serves now (see _route).
        self._routes: frozenset[Route] = frozenset()
        self._route_names: frozenset[str] = frozenset()  # the names of the routes
        # Broker topics whose bus selects groups by the index: (group, filter) of each Trigger.
        self._selections: dict[str, frozenset[tuple[str, str]]] = {}

    @property
    def live(self) -> frozenset[str]:
        """uids of the Triggers and Subscriptions whose bus subscription is live."""
        return frozenset(uid for uid, c in self._consumers.items() if c.subscription is not None)

    async def apply(self, snapshot: Snapshot) -> None:
        """Subscribe, update and unsubscribe so that consumers match ``snapshot``."""
        wanted: dict[str, TriggerSpec | SubscriptionSpec] = {
            **snapshot.triggers,
            **snapshot.subscriptions,
        }
        routes = frozenset(
            {("broker", *key) for key in snapshot.brokers}
            | {("channel", *key) for key in snapshot.channels}
        )
        routes_changed, self._routes = routes != self._routes, routes
        self._route_names = frozenset(name for _, _, name in routes)
        async with self._lock:
            # Before subscribing: a new Trigger's group is covered from its first event on.
            self._select_groups(snapshot.triggers)
            for uid in [uid for uid in self._consumers if uid not in wanted]:
                removed = self._consumers.pop(uid)
                if removed.subscription is not None:
                    await removed.subscription.close()
            for uid, spec in wanted.items():
                consumer = self._consumers.get(uid)
                if consumer is not None and (consumer.spec.topic, consumer.spec.group) == (
                    spec.topic,
                    spec.group,
                ):
                    if routes_changed or consumer.spec != spec:
                        # Routes may have changed even when the spec did not: rebuild the target.
                        self._retarget(consumer, spec)
                    continue
                if consumer is not None and consumer.subscription is not None:
                    await consumer.subscription.close()
                bus = self._buses[self._bus_of_topic(spec.topic)]
                consumer = _Consumer(
                    spec,
                    self._target(spec),
                    durable=Capability.DURABLE in bus.capabilities,
                    strip_ttl=self._route(spec.subscriber_uri) is None,
                )
                self._consumers[uid] = consumer
                handler = functools.partial(self._handle, consumer)
                if not spec.ordered:
                    consumer.subscription = await bus.subscribe(
                        spec.topic, group=spec.group, handler=handler, concurrency=self._concurrency
                    )
                elif Capability.ORDERED_BY_KEY in bus.capabilities:
                    # Ordered delivery (kafka.eventing.knative.dev/delivery.order: ordered): one
                    # event per partition key at a time, in order; keys still run in parallel.
                    consumer.subscription = await bus.subscribe(
                        spec.topic,
                        group=spec.group,
                        handler=handler,
                        concurrency=self._concurrency,
                        ordered=True,
                    )
                else:
                    # The bus cannot order per key: one delivery at a time orders everything.
                    consumer.subscription = await bus.subscribe(
                        spec.topic, group=spec.group, handler=handler, concurrency=1
                    )

    async def redeliver(self, trigger_uid: str, event: CloudEvent) -> None:
        """Deliver ``event`` to one Trigger as if its group had received it (a replay).

        The Trigger's filter, delivery policy, retries, dead letter and reply all apply, and the
        metrics count it. Returns once the outcome is settled; raises NotFound when the Trigger
        is not served now, and Nack when the event is to be tried again later (draining, or the
        dead-letter sink failed too).
        """
        consumer = self._consumers.get(trigger_uid)
        if consumer is None or not isinstance(consumer.spec, TriggerSpec):
            raise NotFound(f"trigger {trigger_uid} is not served now")
        await self._handle(consumer, Message(event, key=event.key))

    def _select_groups(self, triggers: Mapping[str, TriggerSpec]) -> None:
        """Give each Broker topic on a bus that :class:`~broker.dataplane.bus.SelectsGroups`
        the index of its Triggers' filters, so that an event goes only to the groups of the
        Triggers it matches (module docstring). Rebuilt only for topics whose Triggers or
        filters changed."""
        by_topic: dict[str, list[TriggerSpec]] = {}
        for spec in triggers.values():
            by_topic.setdefault(spec.topic, []).append(spec)
        for topic in [topic for topic in self._selections if topic not in by_topic]:
            bus = self._buses.get(self._bus_of_topic(topic))
            if isinstance(bus, SelectsGroups):
                bus.select_groups(topic, None, frozenset())
            del self._selections[topic]
        for topic, specs in by_topic.items():
            bus = self._buses.get(self._bus_of_topic(topic))
            if not isinstance(bus, SelectsGroups):
                continue
            signature = frozenset((spec.group, spec.filter_source) for spec in specs)
            if self._selections.get(topic) == signature:
                continue
            entries = [(spec.group, spec.filter_source, spec.filter) for spec in specs]
            covered = frozenset(spec.group for spec in specs)
            bus.select_groups(topic, self._selector(entries), covered)
            self._selections[topic] = signature

    def _selector(self, entries: list[tuple[str, str, EventFilter]]) -> _IndexSelector:
        """The groups the index of ``entries`` selects for an event; the others count as
        filtered."""
        return _IndexSelector(entries, self._deliveries)

    def _retarget(self, consumer: _Consumer, spec: TriggerSpec | SubscriptionSpec) -> None:
        """Swap in ``spec`` with its target and ttl handling for the current snapshot's routes."""
        consumer.spec, consumer.target = spec, self._target(spec)
        consumer.strip_ttl = self._route(spec.subscriber_uri) is None

    def _target(self, spec: TriggerSpec | SubscriptionSpec) -> Target:
        if isinstance(spec, TriggerSpec):
            return Target(
                spec.subscriber_uri,
                spec.delivery,
                headers=(("kn-namespace", spec.namespace),),  # K95
                on_reply=trigger_reply(self._reply_to_broker, spec.namespace, spec.broker),
                strict_reply=True,  # K100
                audience=spec.subscriber_audience,
                ca_certs=spec.subscriber_ca_certs,
                identity=spec.identity,
                log_fields=(("trigger", f"{spec.namespace}/{spec.name}"),),
            )
        on_reply = (
            subscription_reply(
                reply_poster(
                    self._client,
                    spec.reply_uri,
                    spec.delivery,
                    audience=spec.reply_audience,
                    ca_certs=spec.reply_ca_certs,
                    identity=spec.identity,
                    tokens=self._tokens,
                ),
                self._route(spec.reply_uri),
                reply_to_broker=self._reply_to_broker,
                max_ttl=self._max_ttl,
                metrics=self._metrics,
                subscription=f"{spec.namespace}/{spec.name}",
            )
            if spec.reply_uri
            else None
        )
        return Target(  # K102, K109
            spec.subscriber_uri,
            spec.delivery,
            on_reply=on_reply,
            audience=spec.subscriber_audience,
            ca_certs=spec.subscriber_ca_certs,
            identity=spec.identity,
            log_fields=(("subscription", f"{spec.namespace}/{spec.name}"),),
        )

    async def _handle(self, consumer: _Consumer, message: Message) -> None:
        if self._draining:
            raise Nack(0.5)  # leave it on the bus for whoever comes next; no busy loop
        self._inflight += 1
        consumer.in_flight += 1
        if self._inflight == 1:  # it is set only when this drops to 0
            self._idle.clear()
        try:
            spec = consumer.spec
            event = message.event
            if (
                isinstance(spec, TriggerSpec)
                and not _proved(message.selected_by, spec)
                and not spec.filter(event)
            ):
                self._deliveries["filtered"] += 1
                if self._metrics.detail:
                    consumer.meter(self._metrics).outcome("filtered")
                return
            ttl = event.attributes.get(BROKER_TTL)
            if ttl is not None and consumer.strip_ttl:
                event = event.evolve(remove=(BROKER_TTL,))  # K96
            # else into one of our Brokers/Channels (a Sequence, say): the ttl goes along,
            # so that a loop back into this Broker through it still runs out.
            record = DeliveryRecord()
            started = perf_counter()
            try:
                outcome = await self._deliverer.deliver(
                    event,
                    consumer.target,
                    hand_back=self._hand_back if consumer.durable else None,
                    reply_ttl=ttl,
                    record=record,
                )
            finally:
                if record.retries:
                    self._metrics.retries[consumer.labels] += record.retries
            self._count(consumer, event, outcome, record, perf_counter() - started)
        finally:
            self._inflight -= 1
            consumer.in_flight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _count(
        self,
        consumer: _Consumer,
        event: CloudEvent,
        outcome: Outcome,
        record: DeliveryRecord,
        took: float,
    ) -> None:
        """Record one settled delivery: its outcome and its latency by the subscriber's code."""
        metrics = self._metrics
        # The member's value as a plain attribute (Enum.value is a property: slower, per event).
        name: str = outcome._value_
        self._deliveries[name] += 1
        if metrics.detail:
            consumer.meter(metrics).settled(event.type, name, record.status, took)

    def backlog_families(self) -> Iterator[GaugeMetricFamily]:
        """``cemesh_bus_group_backlog`` per Trigger/Subscription whose bus can tell cheaply
        (:class:`~broker.dataplane.bus.ReportsBacklog`: the in-memory bus; the durable buses
        would need a round trip per group per scrape, so they are left out)."""
        family = GaugeMetricFamily(
            BACKLOG_METRIC,
            "Events a Trigger's or Subscription's consumer group holds on its bus, not yet "
            "acked (queued or being delivered).",
            labels=["resource_kind", "namespace_name", "parent_name", "resource_name", "bus"],
        )
        for consumer in list(self._consumers.values()):
            spec = consumer.spec
            bus_name = self._bus_of_topic(spec.topic)
            bus = self._buses.get(bus_name)
            if isinstance(bus, ReportsBacklog):
                held = bus.backlog(spec.topic, spec.group)
                if held is not None:
                    family.add_metric([*consumer.labels, bus_name], held)
        yield family

    def _route(self, uri: str) -> Route | None:
        """``("broker"|"channel", namespace, name)`` when ``uri`` is the ingress of a Broker or
        Channel cemesh serves now, else None. Decided by path (cemesh does not know the host
        names it is reached by); asked once per consumer and snapshot."""
        if not may_name_route(uri, self._route_names):
            return None  # most subscribers: no URL parsing needed to tell
        route = match_route(urlsplit(uri).path)
        return route if route in self._routes else None

    def in_flight(self) -> dict[str, int]:
        """In-flight deliveries per Trigger/Subscription (``"trigger ns/name"``), busy ones only."""
        return {c.name: c.in_flight for c in self._consumers.values() if c.in_flight}

    async def drain(self, grace: float) -> None:
        """Stop taking new messages, let in-flight deliveries finish (up to ``grace`` s), close.

        Deliveries to durable buses that are waiting out a backoff are handed back at once.
        """
        self._draining = True
        self._hand_back.set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self._inflight:
            log.info(
                "draining: waiting for in-flight deliveries",
                extra={
                    "in_flight": self._inflight,
                    "by_consumer": self.in_flight(),
                    "drain_timeout": grace,
                },
            )
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            # Durable buses redeliver these; the in-memory bus counts what it loses on close.
            log.warning(
                "drain timeout: closing with deliveries in flight",
                extra={
                    "in_flight": self._inflight,
                    "by_consumer": self.in_flight(),
                    "waited": round(loop.time() - started, 3),
                },
            )
        else:
            log.info("drained", extra={"waited": round(loop.time() - started, 3)})
        await self.close()

    async def close(self) -> None:
        async with self._lock:
            consumers, self._consumers = list(self._consumers.values()), {}
            for consumer in consumers:
                if consumer.subscription is not None:
                    await consumer.subscription.close()
