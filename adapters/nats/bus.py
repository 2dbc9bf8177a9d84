"""The NATS JetStream bus (``bus: nats``): a stream per topic, a durable pull consumer per group.

Model:

- Topic ``t`` is stored in the file-backed stream :func:`stream_name` (``t`` with ``.`` made
  ``_``: stream names may not contain dots) that captures the one subject :func:`subject_of`
  (``t`` itself when it is a valid NATS subject). Streams are created on first use, idempotently;
  one that already exists with another configuration (an operator changed it) is used as it is.
  Retention is ``interest`` by default: an event is kept until every group of the topic acked
  it, and an event published while a topic has no group is not kept (as with the memory bus);
  ``retention: limits`` plus ``max_age`` keeps a replayable log instead.
- A group is the durable pull consumer :func:`consumer_name` of that stream (explicit ack, no
  delivery limit: the adapter never dead-letters). ``subscribe`` creates (or updates) it before
  returning, with deliver policy ``new``: a new group starts at the end of the stream, so it gets
  everything published after ``subscribe`` returned; an existing group resumes where it was
  (which is what makes events survive a restart of cemesh). Subscriptions of one group pull from
  the same consumer, so they compete; every group gets its own copy.
- Each event is one message: the payload is the cemesh envelope (``broker/core/events.py``), which
  keeps typed extensions (int, bool) that the NATS binary binding (C76, ``ce-`` headers) would
  turn into strings. Headers: ``Nats-Msg-Id`` (:func:`dedup_id`: source and id, plus the
  ``knativebrokerttl`` when present) so that publishing the same event again within
  ``duplicate_window`` is stored once, and ``Cemesh-Key`` (the key, percent-encoded; absent
  when there is none). ``publish`` returns once the stream answered with its PubAck.
- Pulling: each subscription keeps at most one pull request open, for as many messages as it
  has free handler slots (``concurrency`` minus the messages it holds), so the server never sends
  it more than its handlers can take. Requests expire after :data:`PULL_EXPIRES` and are simply
  renewed; a reconnect renews them at once. Nothing here blocks the event loop.
- Settling: the handler returning acks; :class:`~broker.dataplane.bus.Nack` naks with its delay (NAK
  ``delay``); another exception is logged and naked after :data:`ERROR_REDELIVERY_DELAY`. A
  message a handler still holds is kept alive with ``in_progress`` every third of ``ack_wait``
  (deliveries with retries and backoff can take minutes); one whose holder died (a crash, a lost
  connection) is redelivered by the server after ``ack_wait``. Closing a subscription or the bus
  never acks: it naks what it holds (and what the server had already sent) so that the group's
  next subscriber gets it at once. ``Message.attempt`` is the server's delivery count
  (``num_delivered``); a message naked by ``close`` before a handler saw it counts too.
- Order (``ORDERED_BY_KEY``): a group subscribed with ``ordered=True`` gets
  ``max_ack_pending=1``: the server hands out one message of the group at a time, to whichever
  subscription, and the next only once it is acked, so events reach the group in publish order,
  across competing subscriptions and redeliveries, whatever ``concurrency``. That orders all keys
  together: an ordered group has one delivery in flight (the price of ordering on JetStream
  without a consumer per key). Unordered groups use ``max_ack_pending`` (default 1000).
- ``delete_group`` closes the group's subscriptions of this bus (naking what they hold), then
  deletes the durable consumer: its position and its unacked messages go with it (on an
  ``interest`` stream, messages only it still needed are removed). A consumer or stream that
  does not exist is fine.
- ``delete_topic`` closes every subscription of the topic in this bus, then deletes its stream:
  the stream captures only the topic's subject, so its messages and every consumer (group) of
  it go together and nothing of another topic is touched. A stream that does not exist is fine.
- Errors: a publish that timed out is a retryable PublishError although the server may have
  stored it (the request went out): the producer's retry is then de-duplicated by its
  ``Nats-Msg-Id``. An event larger than the server's ``max_payload`` (1 MiB by default) is a
  terminal PublishError. The client reconnects forever; meanwhile pulls pause and publishes fail
  (retryably) after ``request_timeout``.

Options: :class:`~adapters.nats.options.NatsOptions` (each also the setting
``nats_<option>``), where their defaults, limits and meanings are declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext

from adapters.nats.consumer import CLOSE_TIMEOUT, KEY_HEADER, MSG_ID_HEADER, NatsSubscription
from adapters.nats.failures import describe, retryable
from adapters.nats.names import Target, consumer_name, dedup_id, stream_name, subject_of
from adapters.nats.options import NatsOptions
from adapters.nats.publisher import Publisher
from broker.core.errors import BusError, PublishError, SubscribeError
from broker.core.events import CloudEvent, encode_envelope
from broker.dataplane.bus import BusFactory, Capability, Handler
from broker.dataplane.bus.arguments import check_subscribe
from broker.dataplane.bus.options import parse_options

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

_STREAM_EXISTS_DIFFERENTLY = 10058  # JetStream: stream name already in use, other config


class NatsBus:
    """The NATS JetStream bus (``bus: nats``); see the module docstring."""

    name = "nats"
    capabilities = frozenset(
        {
            Capability.DURABLE,
            Capability.NACK_DELAY,
            Capability.REDELIVERY_COUNT,
            Capability.ORDERED_BY_KEY,
        }
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(NatsOptions, self.name, options)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._open_lock = asyncio.Lock()
        self._stream_lock = asyncio.Lock()
        self._targets: dict[str, Target] = {}  # topics whose stream exists
        self._subscriptions: set[NatsSubscription] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (bounded by ``connect_timeout``). Idempotent; a closed bus stays closed."""
        if self._closed:
            raise BusError("nats bus is closed", retryable=False)
        async with self._open_lock:
            if self._nc is not None:
                return
            nc = Client()
            try:
                # The client reconnects forever once connected, so the first connect would too:
                # bound it here.
                await asyncio.wait_for(
                    nc.connect(**self._connect_options()), self.options.connect_timeout
                )
            except (Exception, asyncio.CancelledError) as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if isinstance(exc, BusError):
                    raise
                raise BusError(
                    f"nats bus: cannot connect to {self.options.url}: {describe(exc)}",
                    retryable=retryable(exc),
                ) from exc
            publisher = Publisher(nc, self.options.request_timeout)
            try:
                await publisher.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
                raise BusError(
                    f"nats bus: cannot subscribe to publish answers: {describe(exc)}",
                    retryable=retryable(exc),
                ) from exc
            self._nc, self._publisher = nc, publisher
            self._js = nc.jetstream(timeout=self.options.request_timeout)

    def _connect_options(self) -> dict[str, Any]:
        o = self.options
        connect: dict[str, Any] = {
            "servers": [url.strip() for url in o.url.split(",") if url.strip()],
            "name": "cemesh",
            "connect_timeout": o.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # a durable bus outlives server restarts
            "reconnect_time_wait": 1,
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            # Every subject this bus uses is made safe where it is made (subject_of: printable
            # ASCII, no whitespace or CR/LF; inboxes and ack subjects are the client's and the
            # server's), so the client need not check each publish and ack again.
            "skip_subject_validation": True,
        }
        if o.user is not None:
            connect["user"] = o.user
        if o.password is not None:
            connect["password"] = o.password
        if o.token is not None:
            connect["token"] = o.token
        if o.creds_file is not None:
            connect["user_credentials"] = o.creds_file
        if o.tls_ca_file or o.tls_cert_file:
            connect["tls"] = self._tls_context()
        return connect

    def _tls_context(self) -> ssl.SSLContext:
        o = self.options
        try:
            context = ssl.create_default_context(cafile=o.tls_ca_file)
            if o.tls_cert_file and o.tls_key_file:
                context.load_cert_chain(o.tls_cert_file, o.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise BusError(f"nats bus: bad TLS files: {exc}", retryable=False) from exc
        return context

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats connection error: %s", describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("nats connection lost; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("nats connection re-established")
        # Open pull requests died with the old connection: renew them now, not at their expiry.
        for subscription in list(self._subscriptions):
            subscription.renew_pull()

    async def close(self) -> None:
        """Stop every subscription (naking what they hold) and disconnect. Idempotent."""
        self._closed = True
        subscriptions = list(self._subscriptions)
        # Stop every subscription before any of them naks: a message naked by one must not be
        # handed to another one of this bus that is closing too.
        for subscription in subscriptions:
            subscription.stop()
        if subscriptions:
            await asyncio.gather(*(s.close() for s in subscriptions), return_exceptions=True)
        nc, self._nc, self._js = self._nc, None, None
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=int(CLOSE_TIMEOUT))  # the naks above
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Store ``event`` in the stream of ``topic``; return once the server acknowledged it."""
        publisher = self._publishing()
        target = self._targets.get(topic) or await self._target(topic, PublishError)
        try:
            answer = await publisher.send(
                target.subject, encode_envelope(event), _headers(event, key)
            )
            check_pub_ack(await answer)
        except Exception as exc:
            raise self._publish_error(topic, exc) from exc

    async def publish_batch(self, topic: str, events: Sequence[CloudEvent]) -> None:
        """Send every event's publish (in order) before awaiting any PubAck (PublishesBatch)."""
        publisher = self._publishing()
        target = self._targets.get(topic) or await self._target(topic, PublishError)
        answers: list[asyncio.Future[bytes]] = []
        try:
            for event in events:
                answers.append(
                    await publisher.send(
                        target.subject, encode_envelope(event), _headers(event, event.key)
                    )
                )
            for answer in answers:
                check_pub_ack(await answer)
        except Exception as exc:
            for answer in answers:  # no publisher waits for them any more
                answer.cancel()
            raise self._publish_error(topic, exc) from exc

    def _publishing(self) -> Publisher:
        publisher = self._publisher
        if self._closed or publisher is None:
            state = "closed" if self._closed else "not open"
            raise PublishError(f"nats bus is {state}", retryable=False)
        return publisher

    def _publish_error(self, topic: str, exc: Exception) -> PublishError:
        if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
            # The stream went away (deleted by hand, server state lost): the next publish
            # creates it again.
            self._targets.pop(topic, None)
        return PublishError(
            f"nats bus: publish to {topic!r} failed: {describe(exc)}",
            retryable=not self._closed and retryable(exc),
        )

    async def _target(self, topic: str, error: type[BusError]) -> Target:
        """Create the stream of ``topic`` unless this bus already did."""
        async with self._stream_lock:
            target = self._targets.get(topic)
            if target is None:
                target = Target(stream_name(topic), subject_of(topic))
                await self._create_stream(topic, target, error)
                self._targets[topic] = target
            return target

    async def _create_stream(self, topic: str, target: Target, error: type[BusError]) -> None:
        js = self._jetstream(error)
        o = self.options
        config = api.StreamConfig(
            name=target.stream,
            description=f"cemesh topic {topic}",
            subjects=[target.subject],
            retention=api.RetentionPolicy(o.retention),
            storage=api.StorageType.FILE,
            num_replicas=o.replicas,
            duplicate_window=o.duplicate_window,
            max_age=o.max_age,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_EXISTS_DIFFERENTLY:
                raise error(
                    f"nats bus: cannot create stream {target.stream!r} for topic {topic!r}: "
                    f"{describe(exc)}",
                    retryable=retryable(exc),
                ) from exc
            # Someone configured the stream otherwise (limits, replicas): theirs to decide.
            log.info("nats stream %s exists with another configuration; using it", target.stream)
        except Exception as exc:
            raise error(
                f"nats bus: cannot create stream {target.stream!r}: {describe(exc)}",
                retryable=not self._closed and retryable(exc),
            ) from exc

    def _jetstream(self, error: type[BusError]) -> JetStreamContext:
        if self._closed or self._js is None:
            raise error(f"nats bus is {'closed' if self._closed else 'not open'}", retryable=False)
        return self._js

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> NatsSubscription:
        """Create (or resume) the durable consumer of ``group``, then pull from it."""
        check_subscribe(
            self.name,
            self.capabilities,
            closed=self._closed,
            concurrency=concurrency,
            ordered=ordered,
        )
        self._jetstream(SubscribeError)
        target, consumer = await self.declare(topic, group, ordered=ordered)
        assert self._nc is not None  # checked by _jetstream above, and close() is not awaited
        subscription = NatsSubscription(
            self,
            self._nc,
            topic,
            group,
            target,
            consumer,
            handler,
            concurrency,
            ordered,
            ack_wait=self.options.ack_wait,
        )
        try:
            await subscription.start()
        except Exception as exc:
            raise SubscribeError(
                f"nats bus: cannot subscribe to {topic!r} as {group!r}: {describe(exc)}",
                retryable=not self._closed and retryable(exc),
            ) from exc
        if self._closed:  # closed while we were starting
            subscription.stop()
            await subscription.close()
            raise SubscribeError("nats bus is closed", retryable=False)
        self._subscriptions.add(subscription)
        return subscription

    async def declare(self, topic: str, group: str, *, ordered: bool) -> tuple[Target, str]:
        """Make sure the stream of ``topic`` and the consumer of ``group`` exist, as configured."""
        target = self._targets.get(topic) or await self._target(topic, SubscribeError)
        consumer = consumer_name(group)
        o = self.options
        config = api.ConsumerConfig(
            name=consumer,
            durable_name=consumer,
            description=f"cemesh group {group}",
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=o.ack_wait,
            max_deliver=-1,  # redelivered until acked: dead letters are the dispatcher's
            max_ack_pending=1 if ordered else o.max_ack_pending,
            inactive_threshold=o.inactive_threshold,
        )
        js = self._jetstream(SubscribeError)
        try:
            # Creates the consumer, or updates an existing one (ack_wait, max_ack_pending...)
            # keeping its position: a group resumes where it was.
            await js.add_consumer(target.stream, config)
        except Exception as exc:
            stream_gone = isinstance(exc, nats.js.errors.NotFoundError)
            if stream_gone:
                self._targets.pop(topic, None)  # deleted by hand: the next attempt re-creates it
            raise SubscribeError(
                f"nats bus: cannot create consumer {consumer!r} on stream {target.stream!r}: "
                f"{describe(exc)}",
                retryable=not self._closed and (stream_gone or retryable(exc)),
            ) from exc
        return target, consumer

    async def delete_group(self, topic: str, group: str) -> None:
        """Close ``group``'s subscriptions here, then delete its durable consumer. Idempotent."""
        js = self._jetstream(BusError)
        mine = [s for s in self._subscriptions if (s.topic, s.group) == (topic, group)]
        for subscription in mine:  # all stopped before any naks (as in close)
            subscription.stop()
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        stream, consumer = stream_name(topic), consumer_name(group)
        try:
            await js.delete_consumer(stream, consumer)
        except nats.js.errors.NotFoundError:
            return  # no such consumer, or no such stream: nothing to delete
        except Exception as exc:
            raise BusError(
                f"nats bus: cannot delete consumer {consumer!r} of stream {stream!r}: "
                f"{describe(exc)}",
                retryable=not self._closed and retryable(exc),
            ) from exc

    async def delete_topic(self, topic: str) -> None:
        """Close ``topic``'s subscriptions here, then delete its stream. Idempotent."""
        js = self._jetstream(BusError)
        mine = [s for s in self._subscriptions if s.topic == topic]
        for subscription in mine:  # all stopped before any naks (as in close)
            subscription.stop()
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        self._targets.pop(topic, None)  # the next use creates it again
        stream = stream_name(topic)
        try:
            await js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            return  # no such stream: nothing to delete
        except Exception as exc:
            raise BusError(
                f"nats bus: cannot delete stream {stream!r} of topic {topic!r}: {describe(exc)}",
                retryable=not self._closed and retryable(exc),
            ) from exc

    def forget(self, subscription: NatsSubscription) -> None:
        self._subscriptions.discard(subscription)

    def forget_target(self, topic: str) -> None:
        self._targets.pop(topic, None)


def check_pub_ack(answer: bytes) -> None:
    """Raise nats-py's APIError when JetStream's answer to a publish is an error, not a PubAck
    (``{"stream": ..., "seq": ...}``; stream names cannot hold a quote, so a PubAck never
    contains ``"error"``)."""
    if b'"error"' not in answer:
        return
    document = json.loads(answer)
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        raise nats.js.errors.APIError.from_error(document["error"])


def _headers(event: CloudEvent, key: str | None) -> dict[str, str]:
    """The message headers of ``event``: its de-duplication id and its key (module doc)."""
    headers: dict[str, str] = {}
    msg_id = dedup_id(event)
    if msg_id is not None:
        headers[MSG_ID_HEADER] = msg_id
    if key is not None:
        headers[KEY_HEADER] = quote(key, safe="")
    return headers


# Checked by mypy: NatsBus is a BusFactory building a Bus.
_factory: BusFactory = NatsBus
