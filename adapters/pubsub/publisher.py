"""The Publish RPCs of the Pub/Sub bus: concurrent publishes to a topic share the next free RPC.

A caller's publish returns once the RPC that carried it returned message IDs (Pub/Sub stored
it); publishes made one after the other go in RPCs made one after the other, which is what
Pub/Sub orders a key by. What a :class:`TopicPublisher` needs of its bus is :class:`Owner`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import AsyncRetry
from google.pubsub_v1 import types
from google.pubsub_v1.services.publisher.async_client import PublisherAsyncClient

from adapters.pubsub.failures import retryable
from broker.core.errors import PublishError

KEY_ATTRIBUTE = "cemesh-key"
# Pub/Sub reads an empty ordering key as "no key"; cemesh's key "" must still be ordered. Two
# keys sharing an ordering key are merely ordered together, so a stand-in is harmless.
EMPTY_KEY_ORDERING = "cemesh-empty-key"
MAX_KEY_BYTES = 1024  # Pub/Sub's limit for an ordering key and for an attribute value
MAX_MESSAGE_BYTES = 10_000_000  # Pub/Sub's limit for one message and for one Publish request
MAX_BATCH_MESSAGES = 1000  # Pub/Sub's limit of messages per Publish request
MAX_BATCH_BYTES = 9_000_000  # a batch stays under the request limit, with room for framing
MAX_PUBLISH_RPCS = 8  # Publish RPCs in flight per topic; more publishes wait and share the next

_PublishRequestPb = types.PublishRequest.pb()


class Owner(Protocol):
    """What a topic's publisher needs of the bus that made it."""

    rpc_timeout: float
    retry: AsyncRetry

    def publisher_client(self) -> PublisherAsyncClient:
        """The Publish client (PublishError once the bus is closed)."""
        ...

    def forget_topic(self, path: str) -> None:
        """Topic ``path`` is gone: the next use creates it again."""
        ...

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coroutine`` as a task the bus awaits on close."""
        ...


class TopicPublisher:
    """The Publish RPCs of one topic: publishes queue here and share the next free RPC."""

    def __init__(self, bus: Owner, path: str) -> None:
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
                self._bus.spawn(self._send(batch), f"pubsub publish {self._path}")

    async def _send(self, batch: list[tuple[Any, int, asyncio.Future[None]]]) -> None:
        try:
            request = types.PublishRequest.wrap(
                _PublishRequestPb(topic=self._path, messages=[item[0] for item in batch])
            )
            await self._bus.publisher_client().publish(
                request=request, retry=self._bus.retry, timeout=self._bus.rpc_timeout
            )
        except BaseException as exc:
            if isinstance(exc, api_exceptions.NotFound):
                self._bus.forget_topic(self._path)  # deleted behind our back: create it again
            for _, _, future in batch:
                if not future.done():
                    error = PublishError(
                        f"pubsub: publish to {self._path} failed: {exc!r}",
                        retryable=retryable(exc),
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
