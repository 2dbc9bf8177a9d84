"""The archive writer: what a Broker accepts, copied into an archive by a consumer group of its own.

An Archive (``eventing.cemesh.dev``, :mod:`broker.features.archive`) becomes an
:class:`ArchiveSpec` in the snapshot. For each one the :class:`ArchiveWriter` subscribes an
internal consumer group (``cemesh.archive.<uid>``) to the Broker's topic, like a Trigger's but
delivering to storage instead of a subscriber. So archiving never sits on the ingress' 202 path:
the ingress publishes once, and the archive consumes at its own pace like any other group.

Each event that passes the archive's filter (the Trigger filter dialects, compiled by
:mod:`broker.dataplane.dispatch.filters`) is appended through an :class:`ArchiveSink`, a small
Protocol the server wires to the control plane's SQL store (the data plane never imports it).
Handlers wait for their append: a write that fails raises, the bus redelivers, so an accepted
event is archived at least once (the store drops the copies of an event it already holds).
Appends are group-committed: whatever the handlers queued while one write ran goes in the next.

Events that carry :data:`REPLAY_EXTENSION` are not archived: they are copies of archived events
on their way to a subscriber, not new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from broker.core.events import ARRIVAL_TIME, CloudEvent, EventFilter, match_all
from broker.dataplane.bus import Bus, Message, Subscription

log = logging.getLogger(__name__)

# The extension a replayed event carries: the name of the Replay re-delivering it. CloudEvents
# extension names are lower-case letters and digits only.
REPLAY_EXTENSION = "cemeshreplay"

# Appends handed to the sink in one write at most (a bound on one transaction's size).
MAX_APPEND_BATCH = 500


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """A Ready Archive: consume ``topic`` as ``group`` and keep what passes ``filter``."""

    namespace: str
    name: str
    uid: str
    broker: str
    topic: str
    bus: str
    group: str
    retention: float  # seconds an archived event is kept
    filter: EventFilter = field(default=match_all, compare=False)
    filter_source: str = "{}"  # canonical text of the filter, so equality sees filter changes


@dataclass(frozen=True, slots=True)
class ArchivedEvent:
    """One event to keep: when the Broker accepted it (microseconds since the epoch) and it."""

    accepted_us: int
    event: CloudEvent


class ArchiveSink(Protocol):
    """Where archived events go (the server wires the control plane's SQL store)."""

    async def append(self, archive_uid: str, events: Sequence[ArchivedEvent]) -> None:
        """Keep ``events`` for the archive; an event already kept (same source and id) is
        skipped. Raises on failure (nothing of the call may be assumed kept then)."""
        ...


def archive_group(uid: str) -> str:
    """The consumer group of an Archive on its Broker's topic."""
    return f"cemesh.archive.{uid}"


def accepted_micros(event: CloudEvent, now_us: int) -> int:
    """When the Broker accepted ``event``: its ``knativearrivaltime`` (set by the ingress), in
    microseconds since the epoch; ``now_us`` when it has none or it is not a timestamp."""
    value = event.attributes.get(ARRIVAL_TIME)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(value).timestamp() * 1_000_000)
    return now_us


@dataclass(slots=True)
class _Pending:
    uid: str
    item: ArchivedEvent
    done: asyncio.Future[None]


class ArchiveWriter:
    """Keeps one archive consumer group per :class:`ArchiveSpec`, appending to the sink."""

    def __init__(
        self,
        sink: ArchiveSink,
        *,
        bus_named: Callable[[str], Bus | None],
        concurrency: int = 64,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._sink = sink
        self._bus_named = bus_named
        self._concurrency = concurrency
        self._clock_us = clock_us
        self._live: dict[str, tuple[ArchiveSpec, Subscription]] = {}
        self._specs: dict[str, ArchiveSpec] = {}  # the spec each live group runs, swapped in
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.archived = 0  # events appended since start (for tests and logs)

    async def apply(self, specs: Mapping[str, ArchiveSpec]) -> list[ArchiveSpec]:
        """Consume exactly the archives in ``specs`` from now on; the ones no longer consumed."""
        stopped = []
        for uid in [uid for uid in self._live if uid not in specs]:
            spec, subscription = self._live.pop(uid)
            self._specs.pop(uid, None)
            await subscription.close()
            stopped.append(spec)
        for uid, spec in specs.items():
            live = self._live.get(uid)
            if live is not None and (live[0].topic, live[0].bus) == (spec.topic, spec.bus):
                self._specs[uid] = spec  # a new filter or retention: no resubscribe
                continue
            if live is not None:
                await live[1].close()
                del self._live[uid]
            bus = self._bus_named(spec.bus)
            if bus is None:
                log.warning("archive's bus is not open", extra={"archive": spec.name})
                continue
            self._specs[uid] = spec
            subscription = await bus.subscribe(
                spec.topic,
                group=spec.group,
                handler=functools.partial(self._handle, uid),
                concurrency=self._concurrency,
            )
            self._live[uid] = (spec, subscription)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="archive-writer")
        return stopped

    async def _handle(self, uid: str, message: Message) -> None:
        spec = self._specs.get(uid)
        event = message.event
        if spec is None or REPLAY_EXTENSION in event.attributes or not spec.filter(event):
            return
        pending = _Pending(
            uid,
            ArchivedEvent(accepted_micros(event, self._clock_us()), event),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        self._wake.set()
        await pending.done  # raises when the write failed: the bus redelivers

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_APPEND_BATCH], self._queue[MAX_APPEND_BATCH:]
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        by_archive: dict[str, list[_Pending]] = {}
        for pending in batch:
            by_archive.setdefault(pending.uid, []).append(pending)
        for uid, group in by_archive.items():
            outcome: Exception | None = None
            try:
                await self._sink.append(uid, [pending.item for pending in group])
            except Exception as exc:  # the handlers raise it: their bus redelivers
                log.warning("archive write failed", extra={"archive": uid, "error": str(exc)})
                outcome = exc
            else:
                self.archived += len(group)
            for pending in group:
                if pending.done.done():
                    continue
                if outcome is None:
                    pending.done.set_result(None)
                else:
                    pending.done.set_exception(outcome)

    async def close(self) -> None:
        """Stop consuming; what is queued and unwritten is redelivered by durable buses."""
        live, self._live = list(self._live.values()), {}
        self._specs.clear()
        for _, subscription in live:
            await subscription.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        for pending in self._queue:
            if not pending.done.done():
                pending.done.cancel()
        self._queue = []
