"""One Replay running: archived events of its window re-delivered, in order, at a bounded rate.

:class:`ReplayRun` reads the window in pages from the :class:`ArchiveStore`, marks each event with
the :data:`~broker.dataplane.archive.REPLAY_EXTENSION` extension (the Replay's name), and hands it
to the dispatcher's normal delivery path (filter, retries, dead letter, reply) for each target
Trigger; an event goes on only once every target settled it. Progress (the cursor) is saved in
the store as :func:`~broker.features.archive.policy.persist_due` says, and once more when the run
is stopped, so a restarted cemesh continues after the last event saved as done (a crash re-sends
at most what was done since the last save). The counts go into the Replay's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from broker.controlplane.archive_store import ArchiveStore, ReplayProgress
from broker.controlplane.resource_store import ResourceStore
from broker.core.errors import CemeshError, NotFound
from broker.core.events import CloudEvent
from broker.dataplane.archive import REPLAY_EXTENSION
from broker.dataplane.bus import Nack
from broker.features.archive.kinds import REPLAY
from broker.features.archive.policy import advance, begin, finish, pace_delay, persist_due
from broker.features.archive.reconcile import ReplaySpec
from broker.features.components import Redeliver

log = logging.getLogger(__name__)

PAGE = 200  # archived events read per query
STATUS_EVERY_SECONDS = 1.0  # progress written into the Replay's status at most this often
RETRY_DELAY = 1.0  # before trying again a target that could not take an event now
SAVE_ON_STOP_TIMEOUT = 5.0


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ReplayRun:
    """Runs one Replay to its end (or until cancelled); ``spec`` may be swapped while it runs."""

    def __init__(
        self,
        spec: ReplaySpec,
        *,
        archive: ArchiveStore,
        redeliver: Redeliver,
        store: ResourceStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self._archive = archive
        self._redeliver = redeliver
        self._store = store
        self._clock = clock
        self.progress: ReplayProgress | None = None

    async def run(self) -> None:
        """Replay from the saved cursor (or the window's start) to the end; write the status."""
        spec = self.spec
        progress = await self._archive.progress(spec.uid)
        if progress is None:
            high_water = await self._archive.high_water(spec.archive_uid)
            total = await self._archive.count(
                spec.archive_uid, spec.start_us, spec.end_us, high_water
            )
            progress = begin(spec.start_us, high_water, total)
            await self._archive.save_progress(spec.uid, progress)
            log.info("replay started", extra={"replay": spec.name, "total": total})
        self.progress = progress
        await self._write_status()
        if not progress.finished:
            try:
                await self._replay()
            except asyncio.CancelledError:
                await self._save_on_stop()
                raise
        await self._write_status()

    async def _replay(self) -> None:
        assert self.progress is not None
        started = saved_at = status_at = self._clock()
        sent = unsaved = 0
        while True:
            progress = self.progress
            page = await self._archive.after(
                self.spec.archive_uid,
                (progress.cursor_us, progress.cursor_id),
                self.spec.end_us,
                progress.high_water,
                PAGE,
            )
            if not page:
                self.progress = finish(progress)
                await self._archive.save_progress(self.spec.uid, self.progress)
                log.info(
                    "replay finished",
                    extra={"replay": self.spec.name, "replayed": progress.replayed},
                )
                return
            for stored in page:
                delay = pace_delay(started, sent, self.spec.rate, self._clock())
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._deliver(stored.event.evolve(set={REPLAY_EXTENSION: self.spec.name}))
                sent += 1
                unsaved += 1
                self.progress = advance(self.progress, stored)
                now = self._clock()
                if persist_due(unsaved, now - saved_at):
                    await self._archive.save_progress(self.spec.uid, self.progress)
                    unsaved, saved_at = 0, now
                    if now - status_at >= STATUS_EVERY_SECONDS:
                        await self._write_status()
                        status_at = now

    async def _deliver(self, event: CloudEvent) -> None:
        """Deliver to every target Trigger; a target that cannot take it now is tried again."""
        pending = list(self.spec.triggers)
        while True:
            results = await asyncio.gather(
                *(self._redeliver(uid, event) for uid in pending), return_exceptions=True
            )
            failed = [
                uid for uid, result in zip(pending, results, strict=True) if result is not None
            ]
            if not failed:
                return
            for uid, result in zip(pending, results, strict=True):
                if result is not None and not isinstance(result, Nack | NotFound):
                    log.warning(
                        "replay delivery failed; trying again",
                        extra={"replay": self.spec.name, "trigger_uid": uid, "error": repr(result)},
                    )
            await asyncio.sleep(RETRY_DELAY)
            pending = [uid for uid in failed if uid in self.spec.triggers]  # still a target

    async def _save_on_stop(self) -> None:
        if self.progress is None:
            return
        with contextlib.suppress(CemeshError, TimeoutError):
            async with asyncio.timeout(SAVE_ON_STOP_TIMEOUT):
                await self._archive.save_progress(self.spec.uid, self.progress)

    async def _write_status(self) -> None:
        """Put the progress into the Replay's status (reconcile derives its conditions)."""
        progress, spec = self.progress, self.spec
        if progress is None:
            return
        try:
            obj = await self._store.get(REPLAY.group, REPLAY.kind, spec.namespace, spec.name)
        except NotFound:
            return
        if obj["metadata"].get("uid") != spec.uid:
            return  # deleted and created again meanwhile
        before: dict[str, Any] = obj.get("status") or {}
        status = {**before, "replayed": progress.replayed, "total": progress.total}
        status.setdefault("startedAt", _now_text())
        if progress.finished:
            status.setdefault("completedAt", _now_text())
        if status != before:
            await self._store.update_status(
                REPLAY.group, REPLAY.kind, spec.namespace, spec.name, status
            )
