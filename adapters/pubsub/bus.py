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
- Publishing. The event is the message data (``broker.events.encode_envelope``: every attribute
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
- Settling. The handler returning acks (acks are batched into Acknowledge RPCs). While a message
  is held (queued locally, in a handler, or waiting out a Nack delay) its lease is extended
  (ModifyAckDeadline) so that Pub/Sub does not hand it to someone else. A handler raising
  :class:`~broker.bus.Nack` ``(delay)`` keeps the message held for ``delay``, then nacks it
  (ModifyAckDeadline 0: Pub/Sub redelivers at once, to any consumer of the group); any other
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

Options (settings ``pubsub_<option>``): ``project`` (default ``cemesh``), ``ack_deadline``
(seconds, 10-600, default 60), ``emulator_host`` (``host:port``; insecure channel, anonymous
credentials), ``credentials_file`` (a service-account or authorized-user JSON key file;
default: Application Default Credentials), ``rpc_timeout`` (seconds a publish or an admin call
may take, retries included, default 60), ``pull_streams`` (StreamingPull streams per
``subscribe``), ``endpoint`` (the service's address, e.g. a regional endpoint
``europe-west1-pubsub.googleapis.com:443``: Pub/Sub orders a key within one region, so ordered
publishers should all use the same one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import string
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.api_core.gapic_v1 import routing_header
from google.api_core.retry import AsyncRetry, if_exception_type
from google.auth import exceptions as auth_exceptions
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

from broker.bus import BusFactory, Capability, Handler, Message, run_handler
from broker.errors import BusError, PublishError, SubscribeError
from broker.events import CloudEvent, decode_envelope, encode_envelope

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

KEY_ATTRIBUTE = "cemesh-key"
# Pub/Sub reads an empty ordering key as "no key"; cemesh's key "" must still be ordered. Two
# keys sharing an ordering key are merely ordered together, so a stand-in is harmless.
EMPTY_KEY_ORDERING = "cemesh-empty-key"
MAX_KEY_BYTES = 1024  # Pub/Sub's limit for an ordering key and for an attribute value
MAX_MESSAGE_BYTES = 10_000_000  # Pub/Sub's limit for one message and for one Publish request
MAX_BATCH_MESSAGES = 1000  # Pub/Sub's limit of messages per Publish request
MAX_BATCH_BYTES = 9_000_000  # a batch stays under the request limit, with room for framing
MAX_PUBLISH_RPCS = 8  # Publish RPCs in flight per topic; more publishes wait and share the next
MAX_ACK_IDS = 2500  # ack IDs per Acknowledge/ModifyAckDeadline request (the request limit)
MAX_SETTLE_RPCS = 4  # Acknowledge/ModifyAckDeadline RPCs in flight per subscription
PREFETCH = 4  # outstanding messages per handler task (server-side flow control)
HANDLERS_PER_STREAM = 8
MAX_AUTO_STREAMS = 8
HEARTBEAT = 30.0  # seconds between keep-alive requests on a stream (Pub/Sub closes idle ones)
RECONNECT_MIN, RECONNECT_MAX = 0.1, 10.0
STREAM_DRAIN_TIMEOUT = 5.0  # on close, how long the server may take to end a half-closed stream
CLOSE_RPC_TIMEOUT = 10.0  # on close, bound on the final acks and nacks
# After a handler raised something other than Nack: long enough that a handler failing on every
# message does not spin, short enough not to matter for a transient error.
ERROR_REDELIVERY_DELAY = 0.1
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

_KNOWN_OPTIONS = {
    "project",
    "ack_deadline",
    "emulator_host",
    "credentials_file",
    "rpc_timeout",
    "pull_streams",
    "endpoint",
}
# Retrying these may help (the same set the Pub/Sub clients retry publishes on).
_TRANSIENT = (
    api_exceptions.Aborted,
    api_exceptions.Cancelled,
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.ServiceUnavailable,
    api_exceptions.Unknown,
)
# Retrying these cannot help until someone changes something.
_TERMINAL = (
    api_exceptions.InvalidArgument,
    api_exceptions.PermissionDenied,
    api_exceptions.Unauthenticated,
    api_exceptions.FailedPrecondition,
    api_exceptions.MethodNotImplemented,
    api_exceptions.OutOfRange,
    auth_exceptions.RefreshError,
    auth_exceptions.DefaultCredentialsError,
)
_DRIVER_ERRORS = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, grpc.RpcError)

_PubsubMessagePb = types.PubsubMessage.pb()
_PublishRequestPb = types.PublishRequest.pb()


# -- names (pure) --------------------------------------------------------------------------------

# "~" and "%" are legal too, but encoded: "~" marks structure, "%" starts an escape.
_KEPT = frozenset(string.ascii_letters + string.digits + "-_.+")


def _encode(name: str) -> str:
    return "".join(
        char if char in _KEPT else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in name
    )


def _fit(encoded: str) -> str:
    """``encoded`` if it is a valid Pub/Sub ID, else its marked form (see the module docstring)."""
    if (
        3 <= len(encoded) <= 255
        and encoded[0] in string.ascii_letters
        and not encoded.lower().startswith("goog")
    ):
        return encoded
    if len(encoded) <= 252:
        return "xx~" + encoded  # three characters at least
    return "h~" + encoded[:150] + "~" + hashlib.sha256(encoded.encode()).hexdigest()


def topic_id(topic: str) -> str:
    """The Pub/Sub topic ID of a cemesh topic (injective; cemesh's own names are kept)."""
    return _fit(_encode(topic))


def subscription_id(topic: str, group: str) -> str:
    """The Pub/Sub subscription ID of consumer group ``group`` of ``topic`` (injective)."""
    return _fit(_encode(group) + "~" + _encode(topic))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _retryable(exc: BaseException) -> bool:
    """Whether trying again may succeed after the driver error ``exc``."""
    if isinstance(exc, api_exceptions.RetryError):  # transient errors until the deadline
        return True
    if isinstance(exc, BusError):  # ours, e.g. the bus closed under the RPC
        return exc.retryable
    return not isinstance(exc, _TERMINAL)


# -- publishing ----------------------------------------------------------------------------------


class _TopicPublisher:
    """The Publish RPCs of one topic: publishes queue here and share the next free RPC."""

    def __init__(self, bus: PubSubBus, path: str) -> None:
        self._bus = bus
        self._path = path
        self._pending: deque[tuple[Any, int, asyncio.Future[None]]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def submit(self, message: Any, size: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((message, size, future))
        if not self._scheduled and self._in_flight < MAX_PUBLISH_RPCS:
            # Next loop turn: the publishes made in this one go in the same RPC.
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending and self._in_flight < MAX_PUBLISH_RPCS:
            batch: list[tuple[Any, int, asyncio.Future[None]]] = []
            size = 0
            while pending and len(batch) < MAX_BATCH_MESSAGES:
                if batch and size + pending[0][1] > MAX_BATCH_BYTES:
                    break
                item = pending.popleft()
                if item[2].done():  # the publisher was cancelled before its RPC: not sent
                    continue
                batch.append(item)
                size += item[1]
            if batch:
                self._in_flight += 1
                self._bus._spawn(self._send(batch), f"pubsub publish {self._path}")

    async def _send(self, batch: list[tuple[Any, int, asyncio.Future[None]]]) -> None:
        try:
            request = types.PublishRequest.wrap(
                _PublishRequestPb(topic=self._path, messages=[item[0] for item in batch])
            )
            await self._bus._publisher_client().publish(
                request=request, retry=self._bus._retry, timeout=self._bus.rpc_timeout
            )
        except BaseException as exc:
            if isinstance(exc, api_exceptions.NotFound):
                self._bus._forget_topic(self._path)  # deleted behind our back: create it again
            for _, _, future in batch:
                if not future.done():
                    error = PublishError(
                        f"pubsub: publish to {self._path} failed: {exc!r}",
                        retryable=_retryable(exc),
                    )
                    error.__cause__ = exc  # as `raise ... from exc` would
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._flush()

    def fail_pending(self) -> None:
        """The bus is closing: what has not been sent yet never will be."""
        while self._pending:
            _, _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(PublishError("pubsub bus closed", retryable=False))


# -- consuming -----------------------------------------------------------------------------------


class _Held:
    """One message this subscription holds: queued, in a handler, or waiting out a delay."""

    __slots__ = ("ack_id", "attempt", "deadline", "event", "key", "message_id")

    def __init__(
        self,
        message_id: str,
        ack_id: str,
        event: CloudEvent,
        key: str | None,
        attempt: int,
        deadline: float,
    ) -> None:
        self.message_id = message_id
        self.ack_id = ack_id
        self.event = event
        self.key = key
        self.attempt = attempt
        self.deadline = deadline  # loop time the current lease ends


class _PubSubSubscription:
    """StreamingPull streams, ``concurrency`` handler tasks, the lease and settle loops."""

    def __init__(
        self,
        bus: PubSubBus,
        *,
        topic: str,
        group: str,
        path: str,
        handler: Handler,
        concurrency: int,
        ordered: bool,
        streams: int,
    ) -> None:
        self._bus = bus
        self._client = bus._subscriber_client()
        self._topic = topic
        self._group = group
        self._path = path
        self._handler = handler
        self._ordered = ordered
        self._ack_deadline = bus.ack_deadline
        self._loop = asyncio.get_running_loop()
        # What unary calls send by themselves: the service routes a stream by its subscription.
        self._routing = (routing_header.to_grpc_metadata((("subscription", path),)),)
        # message_id -> held message; insertion order is the order received.
        self._held: dict[str, _Held] = {}
        self._ready: deque[_Held] = deque()
        # key -> later messages of that key waiting for the one ahead (ordered only). A key is
        # present while one of its messages is in a handler or waiting to be redelivered.
        self._keys: dict[str, deque[_Held]] = {}
        self._getters: deque[asyncio.Future[_Held]] = deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self._acks: list[str] = []
        self._nacks: list[str] = []
        self._settle_scheduled = False
        self._settling: set[asyncio.Task[None]] = set()  # Acknowledge/ModifyAckDeadline RPCs
        self._stopping = asyncio.Event()  # ends the request streams (half-close)
        self._closing = False
        self._closer: asyncio.Future[None] | None = None
        name = f"pubsub {topic}/{group}"
        outstanding = max(PREFETCH * concurrency, 2)
        per_stream = max(1, math.ceil(outstanding / streams))
        self._streams = [
            asyncio.create_task(self._stream(str(uuid.uuid4()), per_stream), name=f"{name} pull")
            for _ in range(streams)
        ]
        self._workers = [
            asyncio.create_task(self._work(), name=f"{name} handler") for _ in range(concurrency)
        ]
        self._leaser = asyncio.create_task(self._lease_loop(), name=f"{name} lease")

    @property
    def path(self) -> str:
        """The Pub/Sub subscription this consumes."""
        return self._path

    # -- receiving ----------------------------------------------------------------------------

    async def _requests(
        self, client_id: str, max_messages: int
    ) -> AsyncIterator[types.StreamingPullRequest]:
        yield types.StreamingPullRequest(
            subscription=self._path,
            stream_ack_deadline_seconds=self._ack_deadline,
            max_outstanding_messages=max_messages,
            client_id=client_id,  # kept across reconnects: Pub/Sub keeps key affinity by it
        )
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT)
            except TimeoutError:
                yield types.StreamingPullRequest(stream_ack_deadline_seconds=self._ack_deadline)
        # Returning half-closes the stream: the server ends it after what it has sent.

    async def _stream(self, client_id: str, max_messages: int) -> None:
        """Keep one StreamingPull stream open until close; reopen it when it ends or fails."""
        backoff = RECONNECT_MIN
        while not self._stopping.is_set():
            try:
                call = await self._client.streaming_pull(
                    requests=self._requests(client_id, max_messages),
                    retry=None,  # this loop reopens the stream itself
                    # No deadline: a stream ends by a half-close (ours, on close) or the
                    # server's. A client-side cancel (what a deadline does) makes the emulator
                    # stall the subscription's deliveries for tens of seconds.
                    timeout=None,
                    metadata=self._routing,
                )
                async for response in call:
                    backoff = RECONNECT_MIN
                    self._receive(types.StreamingPullResponse.pb(response).received_messages)
            except Exception as exc:  # whatever it was, the subscription must go on
                if self._stopping.is_set():
                    return
                log.warning(
                    "pubsub pull stream failed; reopening it",
                    exc_info=not isinstance(exc, _DRIVER_ERRORS),  # a bug of ours: say where
                    extra={"subscription": self._path, "error": repr(exc), "backoff": backoff},
                )
            if self._stopping.is_set():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX)

    def _receive(self, received: Sequence[Any]) -> None:
        deadline = self._loop.time() + self._ack_deadline
        for item in received:
            message = item.message
            held = self._held.get(message.message_id)
            if held is not None:
                # Redelivered while still held (its lease lapsed): adopt the new lease.
                held.ack_id, held.deadline = item.ack_id, deadline
                continue
            try:
                event = decode_envelope(message.data)
            except Exception:
                log.error(
                    "pubsub message is not a cemesh event; leaving it unacked",
                    extra={"subscription": self._path, "message_id": message.message_id},
                )
                continue
            key = message.attributes.get(KEY_ATTRIBUTE)
            held = _Held(
                message.message_id,
                item.ack_id,
                event,
                key,
                max(1, item.delivery_attempt),
                deadline,
            )
            self._held[held.message_id] = held
            self._put(held)

    def _put(self, held: _Held) -> None:
        key = held.key if self._ordered else None
        if key is not None:
            waiting = self._keys.get(key)
            if waiting is not None:
                waiting.append(held)
                return
            self._keys[key] = deque()
        self._release(held)

    def _release(self, held: _Held) -> None:
        """Hand ``held`` to a waiting handler task, or queue it."""
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(held)
                return
        self._ready.append(held)

    async def _take(self) -> _Held:
        if self._ready:
            return self._ready.popleft()
        getter: asyncio.Future[_Held] = self._loop.create_future()
        self._getters.append(getter)
        try:
            return await getter
        except asyncio.CancelledError:
            if getter.done() and not getter.cancelled():
                self._ready.appendleft(getter.result())  # never reached the handler
            else:
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
            raise

    # -- handling and settling ----------------------------------------------------------------

    async def _work(self) -> None:
        handler = self._handler
        while not self._closing:
            held = await self._take()
            delay = await run_handler(
                handler,
                Message(held.event, held.key, held.attempt),
                error_delay=ERROR_REDELIVERY_DELAY,
                logger=log,
                log_extra={"topic": self._topic, "group": self._group},
            )
            if delay is not None:
                self._redeliver(held, delay)
                continue
            # Cancellation (close) propagates: the message stays held and close nacks it.
            if self._closing:
                return  # the handler swallowed the cancellation of close: still not an ack
            self._ack(held)

    def _ack(self, held: _Held) -> None:
        del self._held[held.message_id]
        self._acks.append(held.ack_id)
        self._settle_soon()
        key = held.key if self._ordered else None
        if key is not None:
            waiting = self._keys[key]
            if waiting:
                self._release(waiting.popleft())
            else:
                del self._keys[key]

    def _redeliver(self, held: _Held, delay: float) -> None:
        """Deliver ``held`` again after ``delay``: locally if ordered by key, else via Pub/Sub."""
        local = self._ordered and held.key is not None
        timer: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(timer)
            if self._closing or self._held.get(held.message_id) is not held:
                return
            if local:
                held.attempt += 1
                self._release(held)  # its key stays taken: nothing of it overtakes
            else:
                self._nack(held)

        # Always through the loop: a handler nacking without awaiting must not spin in place.
        timer = self._loop.call_later(max(delay, 0.0), due)
        self._timers.add(timer)

    def _nack(self, held: _Held) -> None:
        del self._held[held.message_id]
        self._nacks.append(held.ack_id)
        self._settle_soon()

    def _settle_soon(self) -> None:
        if not self._settle_scheduled:
            # Next loop turn: the acks of every handler that returned in this one share an RPC.
            self._settle_scheduled = True
            self._loop.call_soon(self._settle)

    def _settle(self) -> None:
        """Send queued acks, then nacks: up to MAX_SETTLE_RPCS requests at once, each carrying
        what queued while the others were out (the emulator takes ~10-30 ms per request)."""
        self._settle_scheduled = False
        while (self._acks or self._nacks) and len(self._settling) < MAX_SETTLE_RPCS:
            if self._acks:
                chunk, self._acks = self._acks[:MAX_ACK_IDS], self._acks[MAX_ACK_IDS:]
                rpc = self._modify(chunk, None)
            else:
                chunk, self._nacks = self._nacks[:MAX_ACK_IDS], self._nacks[MAX_ACK_IDS:]
                rpc = self._modify(chunk, 0)
            task = self._loop.create_task(rpc, name=f"pubsub settle {self._path}")
            self._settling.add(task)
            task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        self._settle()  # what queued meanwhile goes now (close waits on this chain)

    async def _modify(self, ack_ids: list[str], deadline: int | None) -> None:
        """Acknowledge (``deadline`` None) or set the deadline of ``ack_ids``; log failures."""
        try:
            if deadline is None:
                await self._client.acknowledge(subscription=self._path, ack_ids=ack_ids)
            else:
                await self._client.modify_ack_deadline(
                    subscription=self._path, ack_ids=ack_ids, ack_deadline_seconds=deadline
                )
        except Exception as exc:
            # An ack lost is a duplicate later, a nack or extension lost is a late redelivery:
            # at-least-once holds either way.
            log.warning(
                "pubsub %s failed",
                "acknowledge" if deadline is None else f"modify_ack_deadline({deadline})",
                exc_info=not isinstance(exc, _DRIVER_ERRORS),
                extra={"subscription": self._path, "messages": len(ack_ids), "error": repr(exc)},
            )

    async def _lease_loop(self) -> None:
        """Extend the lease of every held message before it ends."""
        period = self._ack_deadline / 4
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            due = [h for h in self._held.values() if h.deadline < now + 2 * period]
            for held in due:
                held.deadline = now + self._ack_deadline
            for chunk in _chunks([h.ack_id for h in due], MAX_ACK_IDS):
                await self._modify(chunk, self._ack_deadline)

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop receiving and handling; nack everything held (never an ack). Idempotent."""
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._shutdown())
        # Shielded: a handler closing its own subscription is cancelled by the shutdown, which
        # must go on.
        await asyncio.shield(self._closer)

    async def _shutdown(self) -> None:
        self._closing = True
        self._bus._subscriptions.discard(self)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        # Half-close the streams and read what the server still sends, so that no message is
        # left leased to a stream nobody reads; cancel a stream that does not end in time.
        self._stopping.set()
        _, late = await asyncio.wait(self._streams, timeout=STREAM_DRAIN_TIMEOUT)
        for stream in late:
            stream.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._leaser.cancel()
        unsettled = [held.ack_id for held in self._held.values()]  # in the order received
        self._held.clear()
        self._ready.clear()
        self._keys.clear()
        try:
            async with asyncio.timeout(CLOSE_RPC_TIMEOUT):
                self._settle()  # the acks (and nacks) still queued; _settled chains the rest
                while self._settling:
                    await asyncio.wait(list(self._settling))
                # One request after the other: the emulator redelivers a key's messages in the
                # order they were nacked (the service keeps publish order by itself).
                for chunk in _chunks(unsettled, MAX_ACK_IDS):
                    await self._modify(chunk, 0)
        except TimeoutError:
            log.warning("pubsub: final acks/nacks timed out", extra={"subscription": self._path})
        for task in self._settling:
            task.cancel()
        await asyncio.gather(self._leaser, *self._settling, return_exceptions=True)


# -- the bus -------------------------------------------------------------------------------------


class PubSubBus:
    """The Google Cloud Pub/Sub bus (``bus: pubsub``); options in the module docstring."""

    name = "pubsub"
    capabilities = frozenset({Capability.DURABLE, Capability.ORDERED_BY_KEY, Capability.NACK_DELAY})

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise BusError(f"pubsub bus: unknown options {unknown}", retryable=False)
        self.project = _option(options, "project", str, "cemesh", lambda v: bool(v))
        self.ack_deadline = _option(options, "ack_deadline", int, 60, lambda v: 10 <= v <= 600)
        self.emulator_host = _option(options, "emulator_host", str, None, lambda v: bool(v))
        self.credentials_file = _option(options, "credentials_file", str, None, lambda v: bool(v))
        self.rpc_timeout = float(
            _option(options, "rpc_timeout", (int, float), 60.0, lambda v: v > 0)
        )
        self.pull_streams = _option(options, "pull_streams", int, None, lambda v: v >= 1)
        self.endpoint = _option(options, "endpoint", str, None, lambda v: bool(v))
        self._retry = AsyncRetry(
            predicate=if_exception_type(*_TRANSIENT),
            initial=0.1,
            maximum=5.0,
            multiplier=2.0,
            timeout=self.rpc_timeout,
        )
        self._publisher: PublisherAsyncClient | None = None
        self._subscriber: SubscriberAsyncClient | None = None
        self._topics: dict[str, asyncio.Future[None]] = {}  # path -> its creation
        self._topic_publishers: dict[str, _TopicPublisher] = {}
        self._subscriptions: set[_PubSubSubscription] = set()
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
        except (*_DRIVER_ERRORS, OSError, ValueError) as exc:
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
            publisher = self._topic_publishers[path] = _TopicPublisher(self, path)
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
    ) -> _PubSubSubscription:
        """Consume ``topic`` as ``group``; the subscription exists (so is live) on return."""
        if self._closed or self._subscriber is None:
            raise SubscribeError("pubsub bus is closed (or not open)", retryable=False)
        if concurrency < 1:
            raise SubscribeError(f"concurrency must be >= 1, not {concurrency}", retryable=False)
        topic_path = self._topic_path(topic)
        path = self._subscription_path(topic, group)
        await self._ensure_topic(topic_path, SubscribeError)
        await self._ensure_subscription(path, topic_path, ordered)
        if self._closed:
            raise SubscribeError("pubsub bus closed while subscribing", retryable=False)
        streams = self.pull_streams or min(
            MAX_AUTO_STREAMS, math.ceil(concurrency / HANDLERS_PER_STREAM)
        )
        subscription = _PubSubSubscription(
            self,
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
                subscription=path, retry=self._retry, timeout=self.rpc_timeout
            )
        except api_exceptions.NotFound:
            return  # deleted already, or never made
        except (*_DRIVER_ERRORS, BusError) as exc:
            raise BusError(
                f"pubsub: cannot delete subscription {path}: {exc!r}",
                retryable=not self._closed and _retryable(exc),
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
                    request=request, retry=self._retry, timeout=self.rpc_timeout
                )
                return
            except api_exceptions.AlreadyExists:
                existing = await client.get_subscription(
                    subscription=path, retry=self._retry, timeout=self.rpc_timeout
                )
        except _DRIVER_ERRORS as exc:
            if isinstance(exc, api_exceptions.NotFound):
                self._forget_topic(topic_path)
            raise SubscribeError(
                f"pubsub: cannot create subscription {path}: {exc!r}", retryable=_retryable(exc)
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

    def _publisher_client(self) -> PublisherAsyncClient:
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
        except _DRIVER_ERRORS as exc:
            self._forget_topic(path, creation)
            raise error(
                f"pubsub: cannot create topic {path}: {exc!r}", retryable=_retryable(exc)
            ) from exc
        except asyncio.CancelledError:
            if creation.cancelled():  # the bus closed under us
                raise error("pubsub bus closed", retryable=False) from None
            raise

    async def _create_topic(self, path: str) -> None:
        try:
            await self._publisher_client().create_topic(
                name=path, retry=self._retry, timeout=self.rpc_timeout
            )
        except api_exceptions.AlreadyExists:
            pass
        except api_exceptions.PermissionDenied:
            # Allowed to publish but not to create topics: whoever may has made it, else
            # publishing reports NotFound.
            log.info("pubsub: no permission to create topic %s; assuming it exists", path)

    def _forget_topic(self, path: str, creation: asyncio.Future[None] | None = None) -> None:
        if creation is None or self._topics.get(path) is creation:
            self._topics.pop(path, None)

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _option(
    options: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any,
    valid: Callable[[Any], bool],
) -> Any:
    value = options.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, kind) or not valid(value):
        raise BusError(f"pubsub bus: invalid option {name}={value!r}", retryable=False)
    return value


# Checked by mypy: PubSubBus is a BusFactory building a Bus.
_factory: BusFactory = PubSubBus
