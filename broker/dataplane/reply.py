"""The reply path: the loop guard ``knativebrokerttl`` and replies re-entering the mesh.

Owns every rule about an event coming back into cemesh (K45, K104-K109, issue 6):

- :func:`apply_broker_ttl`: set (missing) or decrement (present) ``knativebrokerttl``; an event
  whose ttl runs out is looping and is refused (:class:`TtlExhausted`).
- :func:`passes_loop_guard`: the same for a reply, which is dropped, logged (``reply dropped``)
  and counted (``loops_stopped``) instead of failing its delivery.
- :class:`BrokerReentry`: a reply published into a Broker as its ingress would (the ingress's
  programmatic entry; the dispatcher reaches it through a :data:`ReplyToBroker` callable).
- :func:`trigger_reply` and :func:`subscription_reply`: the reply handlers the dispatcher builds
  once per snapshot for each Trigger and Subscription. They receive each reply together with the
  ttl of the event it answers, so a reply loop through Sequences, Parallels and Channels that
  never re-enters a Broker still ends.

Both the ingress and the dispatcher import this module; it imports neither of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from broker.core.errors import BindingError, PublishError
from broker.core.events import ARRIVAL_TIME, BROKER_TTL, AttributeValue, CloudEvent, now_rfc3339
from broker.core.metrics import Metrics
from broker.core.spec import BrokerSpec
from broker.dataplane.bus import Bus
from broker.dataplane.live_feed import LiveFeed
from broker.dataplane.routes import Route

log = logging.getLogger(__name__)

# A reply and the knativebrokerttl of the event it answers (None: that event had none).
ReplyHandler = Callable[[CloudEvent, AttributeValue | None], Awaitable[None]]
# Publishes a reply into Broker (namespace, name); False when the loop guard dropped it.
ReplyToBroker = Callable[[str, str, CloudEvent], Awaitable[bool]]


class TtlExhausted(BindingError):
    """The event's knativebrokerttl reached zero: it is looping (K45, K107)."""


def apply_broker_ttl(event: CloudEvent, max_ttl: int) -> None:
    """Set (missing) or decrement (present) ``knativebrokerttl`` in place (K45, K107).

    Raises :class:`TtlExhausted` when it runs out, and :class:`~broker.core.errors.BindingError`
    when the present value is not an integer.
    """
    attributes = event.attributes
    raw = attributes.get(BROKER_TTL)
    if raw is None:
        attributes[BROKER_TTL] = max_ttl
        return
    try:
        ttl = int(raw)
    except (TypeError, ValueError):
        raise BindingError(f"extension {BROKER_TTL} must be an integer, got {raw!r}") from None
    ttl -= 1
    if ttl <= 0:
        raise TtlExhausted(
            f"extension {BROKER_TTL} ran out: the event has passed through the broker too many "
            "times (a reply loop?) and is dropped"
        )
    attributes[BROKER_TTL] = ttl


def passes_loop_guard(
    reply: CloudEvent, max_ttl: int, metrics: Metrics, who: tuple[str, str]
) -> bool:
    """Apply the ttl to ``reply`` in place; False once it ran out (then logged and counted).

    ``who`` names what the reply came through for the log, e.g. ``("broker", "ns/name")``.
    Raises :class:`~broker.core.errors.BindingError` when the present ttl is not an integer.
    """
    try:
        apply_broker_ttl(reply, max_ttl)
    except TtlExhausted:
        metrics.loops_stopped += 1
        log.warning(
            "reply dropped: knativebrokerttl ran out (loop guard)",
            extra={who[0]: who[1], "event_id": reply.attributes.get("id")},
        )
        return False
    return True


def with_ttl(reply: CloudEvent, ttl: AttributeValue | None) -> CloudEvent:
    """``reply`` carrying the ttl of the event it answers (unchanged when that had none)."""
    return reply if ttl is None else reply.evolve(set={BROKER_TTL: ttl})


class BrokerReentry:
    """Publishes replies into the Brokers of the current snapshot, as their ingress would."""

    def __init__(
        self,
        *,
        buses: Mapping[str, Bus],
        metrics: Metrics,
        max_ttl: int,
        feed: LiveFeed | None = None,
    ) -> None:
        self.buses = buses
        self.feed = feed or LiveFeed()  # replies show in the Broker's live feed too
        self.brokers: Mapping[tuple[str, str], BrokerSpec] = {}  # set with every snapshot
        self.max_ttl = max_ttl
        self._metrics = metrics

    async def publish(self, namespace: str, name: str, event: CloudEvent) -> bool:
        """Put ``event`` into a Broker as ingress would. False if the loop guard dropped it.

        Raises PublishError if the Broker is gone or its bus refuses the event, so that the
        delivery that produced this reply is retried (K106).
        """
        broker = self.brokers.get((namespace, name))
        if broker is None:
            raise PublishError(f"broker {namespace}/{name} does not exist", retryable=True)
        if not passes_loop_guard(
            event, self.max_ttl, self._metrics, ("broker", f"{namespace}/{name}")
        ):
            return False
        event.attributes[ARRIVAL_TIME] = now_rfc3339()
        await self.buses[broker.bus].publish(broker.topic, event, key=event.key)
        if self.feed.watched:
            self.feed.offer(("broker", namespace, name), (event,))
        return True


def trigger_reply(reply_to_broker: ReplyToBroker, namespace: str, broker: str) -> ReplyHandler:
    """A Trigger subscriber's reply re-enters its Broker (K104, K105) with the ttl (K107)."""

    async def on_reply(reply: CloudEvent, ttl: AttributeValue | None) -> None:
        await reply_to_broker(namespace, broker, with_ttl(reply, ttl))

    return on_reply


def subscription_reply(
    post: ReplyHandler,
    route: Route | None,
    *,
    reply_to_broker: ReplyToBroker,
    max_ttl: int,
    metrics: Metrics,
    subscription: str,
) -> ReplyHandler:
    """A Subscription's reply handler: the reply carries the ttl of the event it answers.

    ``post`` sends the reply to the reply URI
    (:func:`broker.dataplane.dispatch.delivery.reply_poster`).

    ``route`` is where the reply URI leads when it is one of cemesh's Brokers or Channels
    (:func:`broker.dataplane.routes.match_route`), else None. Into a Broker the reply takes the
    Trigger path (that Broker's ingress decrements the ttl and counts a loop). Elsewhere it is
    POSTed with the ttl decremented, or dropped once it ran out; a reply to an outside URI answering
    an event without a ttl goes out unaltered.
    """
    if route is not None and route[0] == "broker":
        return trigger_reply(reply_to_broker, route[1], route[2])

    async def on_reply(reply: CloudEvent, ttl: AttributeValue | None) -> None:
        if ttl is None and route is None:
            await post(reply, ttl)
            return
        # A copy: the guard writes the ttl in place.
        reply = reply.evolve(set={BROKER_TTL: ttl} if ttl is not None else None)
        try:
            if not passes_loop_guard(reply, max_ttl, metrics, ("subscription", subscription)):
                return
        except BindingError:  # not an integer: count from the top rather than fail the delivery
            reply.attributes[BROKER_TTL] = max_ttl
        await post(reply, ttl)

    return on_reply
