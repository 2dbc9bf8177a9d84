"""Consume loops: one bus subscription (consumer group) per Trigger and per Subscription.

The dispatcher is handed a :class:`~broker.spec.Snapshot` at a time and makes the bus
subscriptions match it: new Triggers and Subscriptions are subscribed (and only then reported
Ready, K61), changed ones have their spec swapped in place (no resubscribe, so nothing is missed),
removed ones are unsubscribed. For each message it filters (Triggers: K62, K70-K91), strips
``knativebrokerttl`` (K96), and hands the event to the :class:`~broker.dispatch.delivery.Deliverer`,
which owns retries, replies and dead letters. The handler returns (ack) only once the outcome is
settled; a Nack from the deliverer keeps the event on the bus.

Loop guard (K45, K107, and issue 6: loops through Sequences and Parallels). ``knativebrokerttl``
travels with an event through cemesh's own Brokers and Channels: a Trigger strips it only when its
subscriber is not one of them (K96), and a Subscription's reply inherits the ttl of the event it
answers, decremented (set to ``max_ttl`` when missing), so a reply loop that never re-enters a
Broker (a Sequence replying to its own first channel) still ends; a reply whose ttl ran out is
dropped, logged and counted (``loops_stopped``). A Subscription's reply into one of cemesh's
Brokers takes the Trigger-reply path, where the Broker's ingress decrements and counts.

Draining (SIGTERM): new messages are nacked back to the bus while in-flight deliveries finish, up
to the drain timeout; only then are the subscriptions closed. The log says what the drain waits
for (in-flight deliveries per Trigger/Subscription, and for how long) and how it ended. On a
durable bus a delivery waiting out a retry backoff is handed back to the bus at once (a
:class:`~broker.bus.Nack`: it is redelivered after the restart, or by another replica) instead of
holding the shutdown; on the in-memory bus nothing survives the process, so it is waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.bus import Bus, Capability, Message, Nack, Subscription
from broker.dispatch.client import HttpClient
from broker.dispatch.delivery import Deliverer, Target, TokenSource, reply_poster
from broker.errors import BindingError
from broker.events import BROKER_TTL, DEFAULT_MAX_TTL, CloudEvent
from broker.ingress import TtlExhausted, apply_broker_ttl, match_route
from broker.metrics import Metrics
from broker.spec import Snapshot, SubscriptionSpec, TriggerSpec

log = logging.getLogger(__name__)

ReplyToBroker = Callable[[str, str, CloudEvent], Awaitable[bool]]


@dataclass(slots=True)
class _Consumer:
    """One live bus subscription and the spec it currently serves."""

    spec: TriggerSpec | SubscriptionSpec
    target: Target
    subscription: Subscription | None = None
    durable: bool = False  # its bus keeps what is handed back to it (Capability.DURABLE)
    in_flight: int = 0  # deliveries of this consumer under way now

    @property
    def name(self) -> str:
        kind = "trigger" if isinstance(self.spec, TriggerSpec) else "subscription"
        return f"{kind} {self.spec.namespace}/{self.spec.name}"


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
        self._max_ttl = max_ttl
        # Ingress routes of the Brokers and Channels cemesh serves now (see _route).
        self._routes: frozenset[tuple[str, str, str]] = frozenset()
        self._route_cache: dict[str, tuple[str, str, str] | None] = {}

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
        self._routes = frozenset(
            {("broker", *key) for key in snapshot.brokers}
            | {("channel", *key) for key in snapshot.channels}
        )
        self._route_cache = {}
        async with self._lock:
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
                    if consumer.spec != spec:
                        consumer.spec, consumer.target = spec, self._target(spec)
                    continue
                if consumer is not None and consumer.subscription is not None:
                    await consumer.subscription.close()
                bus = self._buses[self._bus_of_topic(spec.topic)]
                consumer = _Consumer(
                    spec, self._target(spec), durable=Capability.DURABLE in bus.capabilities
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

    def _target(self, spec: TriggerSpec | SubscriptionSpec) -> Target:
        if isinstance(spec, TriggerSpec):
            # on_reply is bound per event (it carries the event's ttl); see _handle.
            return Target(
                spec.subscriber_uri,
                spec.delivery,
                headers=(("kn-namespace", spec.namespace),),  # K95
                strict_reply=True,  # K100
                audience=spec.subscriber_audience,
                ca_certs=spec.subscriber_ca_certs,
                identity=spec.identity,
                log_fields=(("trigger", f"{spec.namespace}/{spec.name}"),),
            )
        on_reply = (
            reply_poster(
                self._client,
                spec.reply_uri,
                spec.delivery,
                audience=spec.reply_audience,
                ca_certs=spec.reply_ca_certs,
                identity=spec.identity,
                tokens=self._tokens,
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
        self._idle.clear()
        try:
            spec, target = consumer.spec, consumer.target
            event = message.event
            if isinstance(spec, TriggerSpec):
                if not spec.filter(event):
                    self._deliveries["filtered"] += 1
                    return
                ttl = event.attributes.get(BROKER_TTL)
                if self._route(spec.subscriber_uri) is None:
                    event = event.evolve(remove=(BROKER_TTL,))  # K96
                # else into one of our Brokers/Channels (a Sequence, say): the ttl goes along,
                # so that a loop back into this Broker through it still runs out.
                target = dataclasses.replace(
                    target, on_reply=functools.partial(self._reply, spec, ttl)
                )
            else:
                event, target = self._channel_hop(spec, target, event)
            outcome = await self._deliverer.deliver(
                event, target, hand_back=self._hand_back if consumer.durable else None
            )
            self._deliveries[outcome.value] += 1
        finally:
            self._inflight -= 1
            consumer.in_flight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _reply(self, spec: TriggerSpec, ttl: object, reply: CloudEvent) -> None:
        """A Trigger subscriber's reply re-enters its Broker (K104, K105) with the ttl (K107)."""
        if ttl is not None:
            reply = reply.evolve(set={BROKER_TTL: ttl})  # type: ignore[dict-item]
        await self._reply_to_broker(spec.namespace, spec.broker, reply)

    def _route(self, uri: str) -> tuple[str, str, str] | None:
        """``("broker"|"channel", namespace, name)`` when ``uri`` is the ingress of a Broker or
        Channel cemesh serves now, else None. Decided by path (cemesh does not know the host
        names it is reached by); cached per URI until the next snapshot."""
        try:
            return self._route_cache[uri]
        except KeyError:
            pass
        route = match_route(urlsplit(uri).path)
        if route not in self._routes:
            route = None
        if len(self._route_cache) < 10_000:  # URIs come from config; this only bounds a leak
            self._route_cache[uri] = route
        return route

    def _channel_hop(
        self, spec: SubscriptionSpec, target: Target, event: CloudEvent
    ) -> tuple[CloudEvent, Target]:
        """A Subscription's event and target with the loop guard applied (module docstring)."""
        ttl = event.attributes.get(BROKER_TTL)
        if ttl is not None and self._route(spec.subscriber_uri) is None:
            event = event.evolve(remove=(BROKER_TTL,))  # as K96: subscribers never see it
        if spec.reply_uri and target.on_reply is not None:
            route = self._route(spec.reply_uri)
            if ttl is not None or route is not None:
                on_reply = functools.partial(self._channel_reply, spec, target.on_reply, route, ttl)
                target = dataclasses.replace(target, on_reply=on_reply)
        return event, target

    async def _channel_reply(
        self,
        spec: SubscriptionSpec,
        post: Callable[[CloudEvent], Awaitable[None]],
        route: tuple[str, str, str] | None,
        ttl: object,
        reply: CloudEvent,
    ) -> None:
        """A Subscription's reply, carrying the ttl of the event it answers (loop guard)."""
        if route is not None and route[0] == "broker":
            # As a Trigger's reply: the Broker's ingress decrements the ttl and counts a loop.
            if ttl is not None:
                reply = reply.evolve(set={BROKER_TTL: ttl})  # type: ignore[dict-item]
            await self._reply_to_broker(route[1], route[2], reply)
            return
        reply = reply.evolve(set={BROKER_TTL: ttl} if ttl is not None else None)  # type: ignore[dict-item]
        try:
            apply_broker_ttl(reply, self._max_ttl)
        except TtlExhausted:
            self._metrics.loops_stopped += 1
            log.warning(
                "reply dropped: knativebrokerttl ran out (loop guard)",
                extra={"subscription": f"{spec.namespace}/{spec.name}", "event_id": reply.id},
            )
            return
        except BindingError:  # not an integer: count from the top rather than fail the delivery
            reply.attributes[BROKER_TTL] = self._max_ttl
        await post(reply)

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
