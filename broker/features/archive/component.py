"""The archive feature's runtime component: archive writers, replay runs, retention.

Fed ``snapshot.components["archive"]`` (built by :mod:`broker.features.archive.reconcile`):

- every :class:`~broker.dataplane.archive.ArchiveSpec` goes to the data plane's
  :class:`~broker.dataplane.archive.ArchiveWriter` (one consumer group per Archive on its
  Broker's topic, appending through the app's :class:`ArchiveStore`);
- every :class:`~broker.features.archive.reconcile.ReplaySpec` gets a
  :class:`~broker.features.archive.replayer.ReplayRun` task (its targets swapped in when they
  change; cancelled, its progress saved, when the Replay goes away or cemesh stops);
- only one replica runs a Replay at a time (:mod:`broker.features.archive.ownership`);
- the bus group of a deleted Archive is deleted (one merely not Ready keeps it);
- a sweeper enforces each Archive's retention (every Archive in the store, Ready or not), and
  forgets the events of deleted Archives and the progress of deleted Replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from broker.controlplane.resource_store import new_holder
from broker.core.durations import parse_duration
from broker.core.errors import CemeshError
from broker.dataplane.archive import ArchiveSpec, ArchiveWriter
from broker.features.archive.kinds import ARCHIVE, REPLAY
from broker.features.archive.ownership import lease_prefix, run_owned
from broker.features.archive.policy import retention_cutoff, sweep_interval
from broker.features.archive.reconcile import COMPONENT, ReplaySpec
from broker.features.archive.replayer import ReplayRun
from broker.features.components import HttpHandler, RuntimeContext

log = logging.getLogger(__name__)


class ArchiveComponent:
    """Runs the archives and replays of the current snapshot."""

    name = COMPONENT

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._writer = (
            ArchiveWriter(
                context.archive,
                bus_named=context.buses.get,
                concurrency=context.settings.dispatch_concurrency,
            )
            if context.archive is not None
            else None
        )
        self._runs: dict[str, tuple[ReplayRun, asyncio.Task[None]]] = {}
        self._retentions: dict[str, float] = {}
        self._retentions_changed = asyncio.Event()  # a sweep is due at once (a new retention)
        self._sweeper: asyncio.Task[None] | None = None
        self._holder = new_holder()  # this replica, as a claimant of Replay leases

    @property
    def routes(self) -> Mapping[str, HttpHandler]:
        return {}

    @property
    def writer(self) -> ArchiveWriter | None:
        return self._writer

    async def apply(self, specs: Mapping[str, Any]) -> None:
        archives = {s.uid: s for s in specs.values() if isinstance(s, ArchiveSpec)}
        replays = {s.uid: s for s in specs.values() if isinstance(s, ReplaySpec)}
        if self._writer is None or self._context.archive is None:
            return
        stopped = await self._writer.apply(archives)
        if stopped:
            await self._retire_groups(stopped)
        retentions = {uid: spec.retention for uid, spec in archives.items()}
        if retentions != self._retentions:
            self._retentions = retentions
            self._retentions_changed.set()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="archive-retention")
        for uid in [uid for uid in self._runs if uid not in replays]:
            await self._stop_run(uid)
        for uid, spec in replays.items():
            current = self._runs.get(uid)
            if current is not None and not current[1].done():
                current[0].spec = spec  # its targets may have changed
                continue
            # New, or finished while its status did not show it yet (a controller pass that
            # read the status before the run wrote it): a finished run only writes its status.
            self._start_run(spec)

    async def _retire_groups(self, stopped: list[ArchiveSpec]) -> None:
        """Delete the bus groups of deleted Archives (not of those merely not Ready), so that a
        durable bus does not keep events for them; a failure is logged (as for Triggers)."""
        try:
            present = {
                o["metadata"]["uid"]
                for o in await self._context.store.list(ARCHIVE.group, ARCHIVE.kind)
            }
        except CemeshError as exc:
            log.warning("archive groups not retired", extra={"error": str(exc)})
            return
        for spec in stopped:
            bus = self._context.buses.get(spec.bus)
            if spec.uid in present or bus is None:
                continue
            try:
                await bus.delete_group(spec.topic, spec.group)
            except CemeshError as exc:
                log.warning(
                    "archive group not deleted", extra={"archive": spec.name, "error": str(exc)}
                )
            else:
                log.info("archive group deleted", extra={"archive": spec.name, "group": spec.group})

    def _start_run(self, spec: ReplaySpec) -> None:
        context = self._context
        assert context.archive is not None and context.redeliver is not None
        run = ReplayRun(
            spec, archive=context.archive, redeliver=context.redeliver, store=context.store
        )
        task = asyncio.create_task(self._supervise(run), name=f"replay-{spec.name}")
        self._runs[spec.uid] = (run, task)

    async def _supervise(self, run: ReplayRun) -> None:
        """Run while this replica holds the Replay's slot leases (one replica at a time)."""
        uid = run.spec.uid

        async def claim(name: str, until: datetime) -> bool:
            return await self._context.store.claim_lease(
                name, self._holder, until, prune_prefix=lease_prefix(uid)
            )

        await run_owned(uid, run.run, claim)

    async def _stop_run(self, uid: str) -> None:
        _, task = self._runs.pop(uid)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _sweep_forever(self) -> None:
        while True:
            try:
                retentions = await self._sweep()
            except CemeshError as exc:
                log.warning("archive retention sweep failed", extra={"error": str(exc)})
                retentions = []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retentions_changed.wait(), sweep_interval(retentions))
            self._retentions_changed.clear()

    async def _sweep(self) -> list[float]:
        """Delete expired events, and those of deleted Archives; the retentions seen."""
        archive, store = self._context.archive, self._context.store
        assert archive is not None
        archives = await store.list(ARCHIVE.group, ARCHIVE.kind)
        now_us = time.time_ns() // 1000
        retentions: list[float] = []
        for obj in archives:
            try:
                retention = parse_duration((obj.get("spec") or {}).get("retention"), "retention")
            except CemeshError:
                continue
            retentions.append(retention)
            expired = await archive.expire(
                obj["metadata"]["uid"], retention_cutoff(now_us, retention)
            )
            if expired:
                log.info(
                    "archived events expired",
                    extra={"archive": obj["metadata"]["name"], "deleted": expired},
                )
        await archive.forget_archives({obj["metadata"]["uid"] for obj in archives})
        replays = await store.list(REPLAY.group, REPLAY.kind)
        await archive.forget_replays({obj["metadata"]["uid"] for obj in replays})
        return retentions

    async def stop(self) -> None:
        for uid in list(self._runs):
            await self._stop_run(uid)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._writer is not None:
            await self._writer.close()
