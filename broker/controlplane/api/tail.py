"""``GET .../namespaces/{ns}/brokers/{name}/events`` (and a Channel's): the live event stream.

What ``cemesh tail`` reads. The answer is JSON lines (``application/x-ndjson``), streamed as
events arrive: first ``{"watching": "broker ns/name"}`` once the stream is live, then one
``{"event": <the CloudEvent in JSON format>}`` per event the Broker or Channel accepts (replies
re-entering a Broker included), ``{"dropped": N}`` when this reader fell behind and N events (in
all, so far) did not fit in its queue, and an empty line every ``HEARTBEAT`` seconds of silence
(which also notices a client that left). The optional ``filter`` query parameter is a CESQL
expression evaluated here, so filtered-out events never cross the wire; one that does not parse
is a 400 naming where.

The management guard has authenticated the caller already; reading a stream needs ``get`` on the
Broker or Channel (the RBAC of :mod:`broker.auth.rbac`). The events come from the data plane's
:class:`~broker.dataplane.live_feed.LiveFeed`; only a Broker or Channel the data plane serves
now can be watched (404 else).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from broker.auth.rbac import Resource, authorize
from broker.auth.setup import Access
from broker.cesql import compile_expression
from broker.cesql.errors import CesqlParseError
from broker.controlplane.api.guard import principal_of
from broker.controlplane.catalog import Catalog
from broker.core.binding_json import document
from broker.core.errors import Forbidden, InvalidQuery, NotFound
from broker.core.events import CloudEvent
from broker.dataplane.live_feed import LiveFeed, Watcher
from broker.dataplane.routes import Route

HEARTBEAT = 15.0  # seconds of silence before an empty line
PATH = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/events"


def install_tail_routes(
    app: FastAPI,
    *,
    feed: LiveFeed,
    catalog: Catalog,
    access: Access,
    serves: Callable[[Route], bool],
    heartbeat: float = HEARTBEAT,
) -> None:
    """Serve the live event stream of every Broker and Channel kind at :data:`PATH`."""

    @app.get(PATH, include_in_schema=False)
    async def events(
        request: Request,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        filter: str | None = None,
    ) -> StreamingResponse:
        rtype = catalog.type_for_path(group, version, plural)
        if rtype.kind == "Broker":
            route: Route = ("broker", namespace, name)
        elif rtype.kind.endswith("Channel"):
            route = ("channel", namespace, name)
        else:
            raise NotFound(f"{rtype.kind} has no event stream; Brokers and Channels have")
        principal = principal_of(request)
        decision = authorize(
            principal, "get", Resource(rtype.group, rtype.plural), namespace, access.bindings
        )
        if not decision.allowed:
            raise Forbidden(decision.reason)
        if not serves(route):
            raise NotFound(f"{rtype.kind} {namespace}/{name} is not served (missing or not Ready)")
        matches = _filter(filter)
        lines = _lines(feed, route, matches, heartbeat)
        return StreamingResponse(lines, media_type="application/x-ndjson")


def _filter(source: str | None) -> Callable[[CloudEvent], bool]:
    """The predicate of the ``filter`` parameter; every event without one."""
    if not source:
        return lambda _: True
    try:
        return compile_expression(source).predicate
    except CesqlParseError as exc:
        raise InvalidQuery(f"filter: not a CESQL expression: {exc.message}") from exc


async def _lines(
    feed: LiveFeed, route: Route, matches: Callable[[CloudEvent], bool], heartbeat: float
) -> AsyncIterator[bytes]:
    with feed.watch(route) as watcher:
        yield orjson.dumps({"watching": f"{route[0]} {route[1]}/{route[2]}"}) + b"\n"
        reported = 0
        while True:
            event = await _next(watcher, heartbeat)
            if event is None:
                yield b"\n"
                continue
            if watcher.dropped != reported:
                reported = watcher.dropped
                yield orjson.dumps({"dropped": reported}) + b"\n"
            if matches(event):
                yield orjson.dumps({"event": document(event)}) + b"\n"


async def _next(watcher: Watcher, heartbeat: float) -> CloudEvent | None:
    """The next event, or None after ``heartbeat`` seconds without one."""
    try:
        return await asyncio.wait_for(watcher.queue.get(), heartbeat)
    except TimeoutError:
        return None
