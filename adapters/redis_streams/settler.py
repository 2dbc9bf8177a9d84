"""The acks, releases and keep-alives of one Redis Streams subscription, applied in order.

Order matters: a keep-alive of an entry must not overtake its release (it would take the entry
back from the placeholder consumer and reset its idle time). What a :class:`Settler` needs of
its subscription is :class:`Owner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as redis

from adapters.redis_streams.options import RedisOptions
from adapters.redis_streams.policy import release_idle_ms

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

# Released entries are parked on this consumer: pending (never acked), owned by no subscription,
# so that a closing subscription can delete its own consumer without orphaning them.
RELEASED_CONSUMER = "cemesh:released"
RETRY_PAUSE = 0.5  # after a failed read, claim or settle (Redis unreachable, restarting)
CLOSE_TIMEOUT = 2.0  # bound on each network step of close (server possibly unreachable)


class Owner(Protocol):
    """What a settler needs of its subscription."""

    client: redis.Redis
    options: RedisOptions
    stream: str
    group: str
    consumer: str

    def log_extra(self, **fields: Any) -> dict[str, Any]: ...

    def wake_claimer_in(self, delay: float) -> None: ...


@dataclass(slots=True)
class _Op:
    kind: str  # "ack" | "release" | "touch"
    ids: list[bytes]
    delay: float = 0.0  # release: seconds until the entry may be claimed again


class Settler:
    """Acks, releases and keep-alives of one subscription: applied in order, in pipelines.

    Order matters: a keep-alive of an entry must not overtake its release (it would take the
    entry back from the placeholder consumer and reset its idle time).
    """

    def __init__(self, subscription: Owner) -> None:
        self._sub = subscription
        self._ops: deque[_Op] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"redis-bus settler {subscription}")

    def ack(self, entry_id: bytes) -> None:
        self._push(_Op("ack", [entry_id]))

    def release(self, entry_id: bytes, delay: float) -> None:
        self._push(_Op("release", [entry_id], delay))

    def touch(self, ids: list[bytes]) -> None:
        if ids:
            self._push(_Op("touch", ids))

    def _push(self, op: _Op) -> None:
        self._ops.append(op)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ops:
                ops = list(self._ops)
                self._ops.clear()
                try:
                    await self._apply(ops)
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._closing:
                        log.warning(
                            "redis bus: could not settle on close; entries stay pending and "
                            "are taken over after the visibility timeout",
                            extra=self._sub.log_extra(error=repr(exc)),
                        )
                        continue
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,  # once per outage
                        "redis bus: settling failed; trying again",
                        extra=self._sub.log_extra(error=repr(exc)),
                    )
                    failing = True
                    # Keep-alives are redone by the next heartbeat; acks and releases are not.
                    self._ops.extendleft(reversed([op for op in ops if op.kind != "touch"]))
                    await asyncio.sleep(RETRY_PAUSE)
            self._idle.set()

    async def _apply(self, ops: list[_Op]) -> None:
        sub = self._sub
        client, stream, group = sub.client, sub.stream, sub.group
        pipe = client.pipeline(transaction=False)
        released: list[float] = []
        acks: list[bytes] = []
        for op in ops:
            if op.kind == "ack":
                acks.extend(op.ids)
                continue
            if acks:  # consecutive acks go out as one XACK
                pipe.xack(stream, group, *acks)
                acks = []
            if op.kind == "release":
                idle = release_idle_ms(sub.options.visibility_ms, op.delay)
                pipe.xclaim(stream, group, RELEASED_CONSUMER, 0, op.ids, idle=idle, justid=True)  # type: ignore[arg-type]
                released.append(op.delay)
            else:
                pipe.xclaim(stream, group, sub.consumer, 0, op.ids, justid=True)  # type: ignore[arg-type]
        if acks:
            pipe.xack(stream, group, *acks)
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, BaseException):
                log.warning(
                    "redis bus: a settle command failed", extra=sub.log_extra(error=repr(result))
                )
        for delay in released:
            sub.wake_claimer_in(delay)

    async def drain(self) -> None:
        """Apply what is queued (bounded by :data:`CLOSE_TIMEOUT`), then stop."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
