"""One subscription of the Pub/Sub bus: StreamingPull streams, handlers, leases and acks.

A :class:`PubSubSubscription` reads its StreamingPull streams (reopened when they end), hands
messages to ``concurrency`` handler tasks through :class:`~broker.dataplane.bus.handoff.HandOff`
(lanes by key for ordered subscriptions), extends the lease of what it holds, batches acks and
nacks, and nacks everything it holds when closed (see the package's ``bus.py`` for the model).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from google.api_core.gapic_v1 import routing_header
from google.pubsub_v1 import types
from google.pubsub_v1.services.subscriber.async_client import SubscriberAsyncClient

from adapters.pubsub.failures import DRIVER_ERRORS
from adapters.pubsub.publisher import KEY_ATTRIBUTE
from broker.core.events import CloudEvent, decode_envelope
from broker.dataplane.bus import Handler, Message, run_handler
from broker.dataplane.bus.handoff import HandOff

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

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


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


class PubSubSubscription:
    """StreamingPull streams, ``concurrency`` handler tasks, the lease and settle loops."""

    def __init__(
        self,
        client: SubscriberAsyncClient,
        *,
        ack_deadline: int,
        on_close: Callable[[PubSubSubscription], None],
        topic: str,
        group: str,
        path: str,
        handler: Handler,
        concurrency: int,
        ordered: bool,
        streams: int,
    ) -> None:
        self._client = client
        self._on_close = on_close
        self._topic = topic
        self._group = group
        self._path = path
        self._handler = handler
        self._ordered = ordered
        self._ack_deadline = ack_deadline
        self._loop = asyncio.get_running_loop()
        # What unary calls send by themselves: the service routes a stream by its subscription.
        self._routing = (routing_header.to_grpc_metadata((("subscription", path),)),)
        # message_id -> held message; insertion order is the order received.
        self._held: dict[str, _Held] = {}
        # To the handler tasks; ordered subscriptions run a key's messages one at a time.
        self._handoff: HandOff[_Held] = HandOff()
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

    @property
    def topic(self) -> str:
        """The cemesh topic this consumes."""
        return self._topic

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
                    exc_info=not isinstance(exc, DRIVER_ERRORS),  # a bug of ours: say where
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
            self._handoff.put(held, self._lane(held))

    def _lane(self, held: _Held) -> str | None:
        return held.key if self._ordered else None

    # -- handling and settling ----------------------------------------------------------------

    async def _work(self) -> None:
        handler = self._handler
        while not self._closing:
            held = await self._handoff.take()
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
        self._handoff.finish(self._lane(held))

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
                self._handoff.release(held)  # its key stays taken: nothing of it overtakes
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
                exc_info=not isinstance(exc, DRIVER_ERRORS),
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
            for chunk in chunks([h.ack_id for h in due], MAX_ACK_IDS):
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
        self._on_close(self)
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
        self._handoff.clear()
        try:
            async with asyncio.timeout(CLOSE_RPC_TIMEOUT):
                self._settle()  # the acks (and nacks) still queued; _settled chains the rest
                while self._settling:
                    await asyncio.wait(list(self._settling))
                # One request after the other: the emulator redelivers a key's messages in the
                # order they were nacked (the service keeps publish order by itself).
                for chunk in chunks(unsettled, MAX_ACK_IDS):
                    await self._modify(chunk, 0)
        except TimeoutError:
            log.warning("pubsub: final acks/nacks timed out", extra={"subscription": self._path})
        for task in self._settling:
            task.cancel()
        await asyncio.gather(self._leaser, *self._settling, return_exceptions=True)
