"""The sources component: runs one :class:`~broker.sources.base.Source` per Ready source.

On each snapshot it starts sources that appeared, restarts those whose spec changed and stops
those that went away (deleted, or no longer Ready). A source's ``run`` that fails is logged and
started again after a pause, so one broken source never stops the others. Webhook sources are
reached at ``/sources/<webhook>/<namespace>/<name>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from broker.components import HttpHandler, Receive, RuntimeContext, Scope, Send, send_json
from broker.sources.base import EventSender, Source, SourceSpec
from broker.sources.kinds import SOURCE_KINDS

log = logging.getLogger(__name__)

COMPONENT = "sources"
RESTART_PAUSE = 1.0  # seconds before a failed source's run starts again


class _Running:
    def __init__(self, spec: SourceSpec, source: Source, task: asyncio.Task[None]) -> None:
        self.spec = spec
        self.source = source
        self.task = task


class SourceRunner:
    """The :class:`~broker.components.Component` that runs sources."""

    name = COMPONENT

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._running: dict[str, _Running] = {}  # by uid
        self._by_path: dict[tuple[str, str, str], _Running] = {}  # (webhook, ns, name)

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
            webhook = SOURCE_KINDS[running.spec.kind].webhook
            if webhook is not None:
                spec = running.spec
                self._by_path[(webhook, spec.namespace, spec.name)] = running

    def _start(self, spec: SourceSpec) -> None:
        kind = SOURCE_KINDS.get(spec.kind)
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
        for uid in list(self._running):
            await self._stop(uid)

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].strip("/").split("/")
        running = None
        if len(parts) == 4:  # sources/<webhook>/<namespace>/<name>
            running = self._by_path.get((parts[1], parts[2], parts[3]))
        if running is None:
            await send_json(send, 404, b'{"message": "no Ready source has this webhook URL"}')
            return
        await running.source.handle_http(scope, receive, send)
