"""The Google Cloud Pub/Sub bus (``bus: pubsub``), on google-cloud-pubsub's asyncio gRPC clients.

It talks to Pub/Sub through the generated asyncio clients (``PublisherAsyncClient``,
``SubscriberAsyncClient``), not the threaded ``PublisherClient``/``SubscriberClient``: everything
runs on the event loop, with no thread to bridge. It works against the real service with
ordinary credentials and against the emulator (option ``emulator_host``, else the client's own
``PUBSUB_EMULATOR_HOST``).

Model:

- Names. A cemesh topic is a Pub/Sub topic; a consumer group of a topic is a Pub/Sub
  subscription of it. IDs may hold letters, digits and ``-_.~+%``, must start with a letter,
  not with ``goog``, and be 3-255 long. :func:`topic_id` percent-encodes (UTF-8, ``%XX``) every
  character but letters, digits and ``-_.+``, so cemesh's names
  (``cemesh.broker.default.my-broker``) stay as they are. :func:`subscription_id` is the
  encoded group, ``~``, the encoded topic (``cemesh.trigger.<uid>~cemesh.broker.default.b``: a
  group is a group *of a topic*, as on the other buses). ``~`` never comes out of the encoding,
  so it marks structure and both maps are injective: an encoding that is still not a valid ID
  becomes ``xx~`` + it, one longer than 255 ``h~`` + its first 150 characters + ``~`` + its
  SHA-256.
- Publishing. The event is the message data (``broker.core.events.encode_envelope``: every attribute
  keeps its type, every data byte is kept); attributes are limited to 1024 bytes each, so they
  cannot carry events. The key goes in the attribute ``cemesh-key`` (so ``""`` and no key
  differ; a key over 1024 bytes is refused) and in the message's ordering key (``""``, which
  Pub/Sub reads as "no key", is sent as :data:`EMPTY_KEY_ORDERING`). Concurrent publishes to a
  topic share Publish RPCs (up to :data:`MAX_PUBLISH_RPCS` in flight per topic, each carrying
  what queued meanwhile), so a caller's publish returns once the RPC that carried it returned
  message IDs, i.e. Pub/Sub stored it. Publishes made one after the other go in RPCs made one
  after the other, which is what Pub/Sub orders a key by. A topic is created on its first use.
- Subscribing. ``subscribe`` creates the topic and the subscription (the ack deadline of the
  option; ``enable_message_ordering`` only for ``ordered=True``: on an ordered subscription the
  emulator, after a consumer's stream died, delivers thousands of already-acked messages again,
  ``bench/pubsub_raw_redelivery.py --ordering``) before it returns: Pub/Sub keeps every message
  published after that, so nothing is missed. It then reads StreamingPull streams
  (``pull_streams``; by default one per 8 handler tasks, at most 8: the emulator sends one
  stream at most ~2k messages/s) with server-side flow control of ``4 * concurrency``
  outstanding messages, and reopens a stream that ends or fails (backoff up to
  :data:`RECONNECT_MAX`). The subscription
  outlives cemesh (it is the durable group); Pub/Sub's defaults apply: unacked messages are kept
  7 days, a subscription nobody reads for 31 days is deleted.
- Deleting a group. ``delete_group`` closes the group's subscriptions of this bus (nacking what
  they hold), then deletes the Pub/Sub subscription, which otherwise keeps every message
  published to its topic for days. A subscription that does not exist is fine.
- Deleting a topic. ``delete_topic`` closes the topic's subscriptions of this bus, deletes every
  subscription of the topic in the bus's project (Pub/Sub would keep them, detached, with what
  they hold), then the topic. What does not exist (any more) is fine.
- Settling. The handler returning acks (acks are batched into Acknowledge RPCs). While a message
  is held (queued locally, in a handler, or waiting out a Nack delay) its lease is extended
  (ModifyAckDeadline) so that Pub/Sub does not hand it to someone else. A handler raising
  :class:`~broker.dataplane.bus.Nack` ``(delay)`` keeps the message held for ``delay``, then nacks
  it (ModifyAckDeadline 0: Pub/Sub redelivers at once, to any consumer of the group); any other
  exception does the same after :data:`ERROR_REDELIVERY_DELAY`. In an ordered subscription a
  keyed message is redelivered locally instead (below). Closing a subscription cancels its
  handlers and nacks everything it holds, in the order received, so the group's next consumer
  gets it at once; nothing held is ever acked by a close.
- Order per key (``ORDERED_BY_KEY``, ``ordered=True``). Pub/Sub delivers one ordering key to one
  stream at a time, in publish order. Within a subscription the adapter hands a key's messages
  to its handlers one at a time, and releases the next only once the previous one is acked. A
  failed keyed message is redelivered to the handler by the adapter itself, still leased, after
  its delay, so later messages of its key wait behind it. (Pub/Sub's own nack redelivery of an
  ordered key differs between the service, which resends the key's later messages too, and the
  emulator, which resends only the nacked message; the local redelivery works with both.)
- Not declared: ``REDELIVERY_COUNT``. Pub/Sub fills ``delivery_attempt`` only on subscriptions
  with a dead-letter policy, whose ``max_delivery_attempts`` (at most 100) would dead-letter in
  the bus. ``Message.attempt`` is the server's count when it gives one, else 1, plus the local
  redeliveries of an ordered subscription: a lower bound.
- A message that is not a cemesh envelope (published by something else) is logged and left
  unacked: Pub/Sub redelivers it after the ack deadline until its retention ends. It is never
  given to a handler, never acked.
- A redelivery of a message still held (its lease lapsed) takes over the held copy's lease
  rather than making a second copy.
- The emulator (not the service) keeps routing a subscription's messages to a stream that ended
  abruptly (a crashed client, or a client-side cancel) for tens of seconds, and what it routes
  there comes back only when its ack deadline expires, sometimes more than once. So the adapter
  ends its streams by half-closing them and gives them no deadline; after a crash of a process
  using the emulator, deliveries of its groups stall for up to about a minute and some come twice,
  but nothing is lost.

Options: :class:`~adapters.pubsub.options.PubSubOptions` (each also the setting
``pubsub_<option>``), where their defaults, limits and meanings are declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Coroutine, Mapping
from typing import Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.api_core.retry import AsyncRetry, if_exception_type
from google.auth.credentials import AnonymousCredentials, Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from google.pubsub_v1 import types
from google.pubsub_v1.services.publisher.async_client import PublisherAsyncClient
from google.pubsub_v1.services.publisher.transports.grpc_asyncio import (
    PublisherGrpcAsyncIOTransport,
)
from google.pubsub_v1.services.subscriber.async_client import SubscriberAsyncClient
from google.pubsub_v1.services.subscriber.transports.grpc_asyncio import (
    SubscriberGrpcAsyncIOTransport,
)

from adapters.pubsub.consumer import HANDLERS_PER_STREAM, MAX_AUTO_STREAMS, PubSubSubscription
from adapters.pubsub.failures import DRIVER_ERRORS, TRANSIENT, retryable
from adapters.pubsub.names import subscription_id, topic_id
from adapters.pubsub.options import PubSubOptions
from adapters.pubsub.publisher import (
    EMPTY_KEY_ORDERING,
    KEY_ATTRIBUTE,
    MAX_KEY_BYTES,
    MAX_MESSAGE_BYTES,
    TopicPublisher,
)
from broker.core.errors import BusError, PublishError, SubscribeError
from broker.core.events import CloudEvent, encode_envelope
from broker.dataplane.bus import BusFactory, Capability, Handler
from broker.dataplane.bus.arguments import check_subscribe
from broker.dataplane.bus.options import parse_options

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

_PubsubMessagePb = types.PubsubMessage.pb()


class PubSubBus:
    """The Google Cloud Pub/Sub bus (``bus: pubsub``); options in the module docstring."""

    name = "pubsub"
    capabilities = frozenset({Capability.DURABLE, Capability.ORDERED_BY_KEY, Capability.NACK_DELAY})

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = parse_options(PubSubOptions, self.name, options)
        self.project = self.options.project
        self.ack_deadline = self.options.ack_deadline
        self.emulator_host = self.options.emulator_host
        self.credentials_file = self.options.credentials_file
        self.rpc_timeout = self.options.rpc_timeout
        self.pull_streams = self.options.pull_streams
        self.endpoint = self.options.endpoint
        self.retry = AsyncRetry(
            predicate=if_exception_type(*TRANSIENT),
            initial=0.1,
            maximum=5.0,
            multiplier=2.0,
            timeout=self.rpc_timeout,
        )
        self._publisher: PublisherAsyncClient | None = None
        self._subscriber: SubscriberAsyncClient | None = None
        self._topics: dict[str, asyncio.Future[None]] = {}  # path -> its creation
        self._topic_publishers: dict[str, TopicPublisher] = {}
        self._subscriptions: set[PubSubSubscription] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Make the clients (gRPC connects lazily). Idempotent; a closed bus stays closed."""
        if self._closed:
            raise BusError("pubsub bus is closed", retryable=False)
        if self._publisher is not None:
            return
        try:
            if self.emulator_host:
                # The emulator speaks plaintext gRPC and checks no credentials.
                self._publisher = PublisherAsyncClient(
                    transport=PublisherGrpcAsyncIOTransport(
                        channel=grpc.aio.insecure_channel(
                            self.emulator_host, options=CHANNEL_OPTIONS
                        ),
                        credentials=AnonymousCredentials(),
                    )
                )
                self._subscriber = SubscriberAsyncClient(
                    transport=SubscriberGrpcAsyncIOTransport(
                        channel=grpc.aio.insecure_channel(
                            self.emulator_host, options=CHANNEL_OPTIONS
                        ),
                        credentials=AnonymousCredentials(),
                    )
                )
            else:
                credentials = self._credentials()
                client_options = (
                    ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
                )
                self._publisher = PublisherAsyncClient(
                    credentials=credentials, client_options=client_options
                )
                self._subscriber = SubscriberAsyncClient(
                    credentials=credentials, client_options=client_options
                )
        except (*DRIVER_ERRORS, OSError, ValueError) as exc:
            raise BusError(f"pubsub: cannot make the clients: {exc}", retryable=False) from exc

    def _credentials(self) -> Credentials | None:
        """Credentials from ``credentials_file``; None: Application Default Credentials."""
        if not self.credentials_file:
            return None
        # The two kinds of key files people hand to a service. google.auth's generic loader
        # is deprecated (it would also run external-account configurations); those belong to
        # Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS), which takes all.
        with open(self.credentials_file, encoding="utf-8") as file:
            info = json.load(file)
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(
                info, scopes=[PUBSUB_SCOPE]
            )
        if kind == "authorized_user":
            return user_credentials.Credentials.from_authorized_user_info(
                info, scopes=[PUBSUB_SCOPE]
            )
        raise ValueError(
            f"credentials_file {self.credentials_file}: type {kind!r} is not one of "
            "service_account, authorized_user; use Application Default Credentials "
            "(GOOGLE_APPLICATION_CREDENTIALS) for other kinds"
        )

    async def close(self) -> None:
        """Close every subscription (nacking what it holds), then the clients. Idempotent."""
        self._closed = True
        subscriptions = list(self._subscriptions)
        if subscriptions:
            await asyncio.gather(*(s.close() for s in subscriptions), return_exceptions=True)
        for topic_publisher in self._topic_publishers.values():
            topic_publisher.fail_pending()
        if self._tasks:  # Publish RPCs in flight: let them report, within their timeout
            await asyncio.wait(list(self._tasks), timeout=self.rpc_timeout)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for creation in self._topics.values():
            creation.cancel()
        await asyncio.gather(*self._topics.values(), return_exceptions=True)
        publisher, subscriber = self._publisher, self._subscriber
        self._publisher = self._subscriber = None
        for client in (publisher, subscriber):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.transport.close()

    # -- publish ------------------------------------------------------------------------------

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Return once Pub/Sub stored ``event``; PublishError otherwise."""
        if self._closed or self._publisher is None:
            raise PublishError("pubsub bus is closed (or not open)", retryable=False)
        data = encode_envelope(event)
        size = len(data)
        if key is None:
            message = _PubsubMessagePb(data=data)
        else:
            key_size = len(key.encode())
            if key_size > MAX_KEY_BYTES:
                raise PublishError(
                    f"pubsub: key of {key_size} bytes; Pub/Sub allows {MAX_KEY_BYTES}",
                    retryable=False,
                )
            message = _PubsubMessagePb(
                data=data,
                attributes={KEY_ATTRIBUTE: key},
                ordering_key=key or EMPTY_KEY_ORDERING,
            )
            size += 2 * key_size + len(KEY_ATTRIBUTE) + len(EMPTY_KEY_ORDERING)
        if size > MAX_MESSAGE_BYTES:
            raise PublishError(
                f"pubsub: event of {size} bytes; Pub/Sub allows {MAX_MESSAGE_BYTES}",
                retryable=False,
            )
        path = self._topic_path(topic)
        await self._ensure_topic(path, PublishError)
        if self._closed:
            raise PublishError("pubsub bus closed while publishing", retryable=False)
        publisher = self._topic_publishers.get(path)
        if publisher is None:
            publisher = self._topic_publishers[path] = TopicPublisher(self, path)
        await publisher.submit(message, size)

    # -- subscribe ----------------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> PubSubSubscription:
        """Consume ``topic`` as ``group``; the subscription exists (so is live) on return."""
        check_subscribe(
            self.name,
            self.capabilities,
            closed=self._closed,
            concurrency=concurrency,
            ordered=ordered,
        )
        if self._subscriber is None:
            raise SubscribeError("pubsub bus is not open", retryable=False)
        topic_path = self._topic_path(topic)
        path = self._subscription_path(topic, group)
        await self._ensure_topic(topic_path, SubscribeError)
        await self._ensure_subscription(path, topic_path, ordered)
        if self._closed:
            raise SubscribeError("pubsub bus closed while subscribing", retryable=False)
        streams = self.pull_streams or min(
            MAX_AUTO_STREAMS, math.ceil(concurrency / HANDLERS_PER_STREAM)
        )
        subscription = PubSubSubscription(
            self._subscriber_client(),
            ack_deadline=self.ack_deadline,
            on_close=self._subscriptions.discard,
            topic=topic,
            group=group,
            path=path,
            handler=handler,
            concurrency=concurrency,
            ordered=ordered,
            streams=streams,
        )
        self._subscriptions.add(subscription)
        return subscription

    async def delete_group(self, topic: str, group: str) -> None:
        """Close ``group``'s subscriptions here, then delete its Pub/Sub subscription."""
        if self._closed or self._subscriber is None:
            raise BusError("pubsub bus is closed (or not open)", retryable=False)
        path = self._subscription_path(topic, group)
        mine = [s for s in self._subscriptions if s.path == path]
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        try:
            await self._subscriber_client().delete_subscription(
                subscription=path, retry=self.retry, timeout=self.rpc_timeout
            )
        except api_exceptions.NotFound:
            return  # deleted already, or never made
        except (*DRIVER_ERRORS, BusError) as exc:
            raise BusError(
                f"pubsub: cannot delete subscription {path}: {exc!r}",
                retryable=not self._closed and retryable(exc),
            ) from exc

    async def delete_topic(self, topic: str) -> None:
        """Close ``topic``'s subscriptions here, then delete its subscriptions and the topic."""
        if self._closed or self._publisher is None or self._subscriber is None:
            raise BusError("pubsub bus is closed (or not open)", retryable=False)
        mine = [s for s in self._subscriptions if s.topic == topic]
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        path = self._topic_path(topic)
        self.forget_topic(path)  # the next use creates it again
        ours = f"projects/{self.project}/subscriptions/"
        try:
            try:
                pager = await self.publisher_client().list_topic_subscriptions(
                    topic=path, retry=self.retry, timeout=self.rpc_timeout
                )
                subscriptions = [name async for name in pager if name.startswith(ours)]
            except api_exceptions.NotFound:
                return  # no such topic: nothing to delete
            for subscription in subscriptions:
                with contextlib.suppress(api_exceptions.NotFound):
                    await self._subscriber_client().delete_subscription(
                        subscription=subscription, retry=self.retry, timeout=self.rpc_timeout
                    )
            with contextlib.suppress(api_exceptions.NotFound):
                await self.publisher_client().delete_topic(
                    topic=path, retry=self.retry, timeout=self.rpc_timeout
                )
        except (*DRIVER_ERRORS, BusError) as exc:
            raise BusError(
                f"pubsub: cannot delete topic {path}: {exc!r}",
                retryable=not self._closed and retryable(exc),
            ) from exc

    def _subscription_path(self, topic: str, group: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription_id(topic, group)}"

    async def _ensure_subscription(self, path: str, topic_path: str, ordered: bool) -> None:
        client = self._subscriber_client()
        request = types.Subscription(
            name=path,
            topic=topic_path,
            ack_deadline_seconds=self.ack_deadline,
            # Only where asked: see the module docstring (the emulator re-delivers acked
            # messages of an ordered subscription after a crash; the order is not needed).
            enable_message_ordering=ordered,
        )
        try:
            try:
                await client.create_subscription(
                    request=request, retry=self.retry, timeout=self.rpc_timeout
                )
                return
            except api_exceptions.AlreadyExists:
                existing = await client.get_subscription(
                    subscription=path, retry=self.retry, timeout=self.rpc_timeout
                )
        except DRIVER_ERRORS as exc:
            if isinstance(exc, api_exceptions.NotFound):
                self.forget_topic(topic_path)
            raise SubscribeError(
                f"pubsub: cannot create subscription {path}: {exc!r}", retryable=retryable(exc)
            ) from exc
        if existing.topic != topic_path:
            raise SubscribeError(
                f"pubsub: subscription {path} exists for topic {existing.topic!r}, "
                f"not {topic_path!r}",
                retryable=False,
            )
        if ordered and not existing.enable_message_ordering:
            log.warning(
                "pubsub subscription was made without message ordering; Pub/Sub will not keep "
                "its keys in order across consumers and redeliveries",
                extra={"subscription": path},
            )

    # -- helpers ------------------------------------------------------------------------------

    def _topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic_id(topic)}"

    def publisher_client(self) -> PublisherAsyncClient:
        if self._publisher is None:
            raise PublishError("pubsub bus is closed", retryable=False)
        return self._publisher

    def _subscriber_client(self) -> SubscriberAsyncClient:
        if self._subscriber is None:
            raise SubscribeError("pubsub bus is closed", retryable=False)
        return self._subscriber

    async def _ensure_topic(self, path: str, error: type[BusError]) -> None:
        """Create topic ``path`` once (concurrent callers share the one attempt)."""
        creation = self._topics.get(path)
        if creation is None:
            creation = self._topics[path] = asyncio.ensure_future(self._create_topic(path))
        if creation.done() and not creation.cancelled() and creation.exception() is None:
            return
        try:
            await asyncio.shield(creation)
        except DRIVER_ERRORS as exc:
            self.forget_topic(path, creation)
            raise error(
                f"pubsub: cannot create topic {path}: {exc!r}", retryable=retryable(exc)
            ) from exc
        except asyncio.CancelledError:
            if creation.cancelled():  # the bus closed under us
                raise error("pubsub bus closed", retryable=False) from None
            raise

    async def _create_topic(self, path: str) -> None:
        try:
            await self.publisher_client().create_topic(
                name=path, retry=self.retry, timeout=self.rpc_timeout
            )
        except api_exceptions.AlreadyExists:
            pass
        except api_exceptions.PermissionDenied:
            # Allowed to publish but not to create topics: whoever may has made it, else
            # publishing reports NotFound.
            log.info("pubsub: no permission to create topic %s; assuming it exists", path)

    def forget_topic(self, path: str, creation: asyncio.Future[None] | None = None) -> None:
        if creation is None or self._topics.get(path) is creation:
            self._topics.pop(path, None)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# Checked by mypy: PubSubBus is a BusFactory building a Bus.
_factory: BusFactory = PubSubBus
