"""The sources component: runs one :class:`~broker.features.sources.base.Source` per Ready source.

On each snapshot it starts sources that appeared, restarts those whose spec changed and stops
those that went away (deleted, or no longer runnable). A source's ``run`` that fails is logged
and started again after a pause, so one broken source never stops the others. Webhook sources
are reached at ``/sources/<webhook>/<namespace>/<name>``.

What a running source reports (:meth:`~broker.features.sources.base.Source.report`: why it cannot
work now, the ``source`` URI it learnt) is written into its status under :data:`RUNTIME_STATUS_KEYS`
(``runtimeError`` {reason, message}, ``sourceUri``), where reconcile keeps it and turns it into
the ``Deployed`` condition. A report is written when it changes and checked again every
:data:`REPORT_RECHECK` seconds until the store holds it (a controller write may race ours). A
source that starts runs with no error until it reports one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from broker.core.asgi import HttpHandler, Receive, Scope, Send, send_json
from broker.core.errors import CemeshError, NotFound
from broker.core.tasks import cancel_and_wait
from broker.features.components import RuntimeContext
from broker.features.sources.base import EventSender, Problem, Source, SourceKind, SourceSpec

log = logging.getLogger(__name__)

COMPONENT = "sources"
RESTART_PAUSE = 1.0  # seconds before a failed source's run starts again
REPORT_RECHECK = 2.0  # seconds between checks that the reported runtime status is stored
# Status fields a running source owns (reconcile keeps them as they are).
RUNTIME_STATUS_KEYS = ("runtimeError", "sourceUri")


class _Running:
    def __init__(self, spec: SourceSpec, source: Source, task: asyncio.Task[None]) -> None:
        self.spec = spec
        self.source = source
        self.task = task


class SourceRunner:
    """The :class:`~broker.features.components.Component` that runs sources."""

    name = COMPONENT

    def __init__(self, context: RuntimeContext, kinds: Mapping[str, SourceKind]) -> None:
        self._context = context
        self._kinds = dict(kinds)  # the source kinds served, by kind name
        self._running: dict[str, _Running] = {}  # by uid
        self._by_path: dict[tuple[str, str, str], _Running] = {}  # (webhook, ns, name)
        # uid -> (spec, runtime status fields wanted in the store) until the store holds them.
        self._reports: dict[str, tuple[SourceSpec, dict[str, Any]]] = {}
        self._wanted: dict[str, dict[str, Any]] = {}  # uid -> last reported runtime fields
        self._report_task: asyncio.Task[None] | None = None

    @property
    def routes(self) -> Mapping[str, HttpHandler]:
        return {"/sources/": self._handle_http}

    def source(self, uid: str) -> Source | None:
        """The running source of the resource ``uid`` (tests, status)."""
        running = self._running.get(uid)
        return None if running is None else running.source

    async def apply(self, specs: Mapping[str, Any]) -> None:
        for uid in [uid for uid, r in self._running.items() if specs.get(uid) != r.spec]:
            await self._stop(uid)
        for uid, spec in specs.items():
            if uid not in self._running and isinstance(spec, SourceSpec):
                self._start(spec)
        self._by_path = {}
        for running in self._running.values():
            webhook = self._kinds[running.spec.kind].webhook
            if webhook is not None:
                spec = running.spec
                self._by_path[(webhook, spec.namespace, spec.name)] = running

    def _start(self, spec: SourceSpec) -> None:
        kind = self._kinds.get(spec.kind)
        if kind is None or kind.runner is None:
            return
        sender = EventSender(
            self._context.client,
            spec.sink_uri,
            spec.ce_overrides,
            audience=spec.sink_audience,
            ca_certs=spec.sink_ca_certs,
            identity=spec.identity,
            tokens=self._context.tokens,
        )
        source = kind.runner(spec, sender, self._context)
        source.reporter = self._report
        self._report(spec, None, None)  # a new run has no error yet
        task = asyncio.get_running_loop().create_task(
            self._run(source), name=f"source-{spec.kind}-{spec.namespace}-{spec.name}"
        )
        self._running[spec.uid] = _Running(spec, source, task)
        log.info("source started", extra={"source": f"{spec.kind}/{spec.namespace}/{spec.name}"})

    async def _run(self, source: Source) -> None:
        while True:
            try:
                await source.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                source.log.exception("source failed; starting it again")
                await asyncio.sleep(RESTART_PAUSE)

    async def _stop(self, uid: str) -> None:
        running = self._running.pop(uid)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running.task
        try:
            await running.source.close()
        except Exception:
            running.source.log.exception("source did not close cleanly")
        spec = running.spec
        log.info("source stopped", extra={"source": f"{spec.kind}/{spec.namespace}/{spec.name}"})

    async def stop(self) -> None:
        await cancel_and_wait(self._report_task)
        self._report_task = None
        for uid in list(self._running):
            await self._stop(uid)

    # --- runtime status ---------------------------------------------------------------------

    def _report(self, spec: SourceSpec, problem: Problem, source_uri: str | None) -> None:
        wanted = dict(self._wanted.get(spec.uid) or {})
        wanted["runtimeError"] = (
            None if problem is None else {"reason": problem[0], "message": problem[1]}
        )
        if source_uri is not None:
            wanted["sourceUri"] = source_uri
        if wanted == self._wanted.get(spec.uid):
            return
        self._wanted[spec.uid] = wanted
        self._reports[spec.uid] = (spec, wanted)
        if problem is not None:
            log.warning(
                "source cannot work: %s",
                problem[1],
                extra={"source": f"{spec.kind}/{spec.namespace}/{spec.name}", "why": problem[0]},
            )
        elif spec.uid in self._running:
            log.info(
                "source works again",
                extra={"source": f"{spec.kind}/{spec.namespace}/{spec.name}"},
            )
        if self._report_task is None or self._report_task.done():
            self._report_task = asyncio.get_running_loop().create_task(
                self._write_reports(), name="source-status-reports"
            )

    async def _write_reports(self) -> None:
        """Write pending reports; check them again until the store holds each one."""
        while self._reports:
            for uid, (spec, wanted) in list(self._reports.items()):
                try:
                    stored = await self._write_report(spec, wanted)
                    if stored and self._reports.get(uid, (spec, None))[1] is wanted:
                        del self._reports[uid]
                except CemeshError as exc:
                    log.info("source status not written", extra={"why": exc.message})
            if self._reports:
                await asyncio.sleep(REPORT_RECHECK)

    async def _write_report(self, spec: SourceSpec, wanted: Mapping[str, Any]) -> bool:
        """True once the stored status holds ``wanted`` (written now if it did not)."""
        kind = self._kinds.get(spec.kind)
        if kind is None:
            return True
        group, name = kind.resource.group, spec.name
        try:
            obj = await self._context.store.get(group, spec.kind, spec.namespace, name)
        except NotFound:
            return True  # deleted meanwhile
        if obj["metadata"].get("uid") != spec.uid:
            return True
        stored = dict(obj.get("status") or {})
        status = {k: v for k, v in stored.items() if k not in RUNTIME_STATUS_KEYS}
        status.update({k: v for k, v in wanted.items() if v is not None})
        if status == stored:
            return True
        await self._context.store.update_status(group, spec.kind, spec.namespace, name, status)
        return False  # check once more: a controller write may land over ours

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].strip("/").split("/")
        running = None
        if len(parts) == 4:  # sources/<webhook>/<namespace>/<name>
            running = self._by_path.get((parts[1], parts[2], parts[3]))
        if running is None:
            await send_json(send, 404, b'{"message": "no Ready source has this webhook URL"}')
            return
        await running.source.handle_http(scope, receive, send)
