"""How ``cemesh serve`` serves HTTP: uvicorn (httptools), plus read deadlines uvicorn lacks.

uvicorn bounds the idle time between two requests of a connection (``timeout_keep_alive``) and
the number of connections and requests (``limit_concurrency``: beyond it, 503), but with the
httptools parser nothing bounds how long a client may take to send a request: a connection that
sends nothing, or its headers or its body a byte at a time (slowloris), is kept forever. This
module adds two deadlines, per connection:

- headers: from the connection's opening (or a request's first byte) to the end of its headers,
  ``header_timeout`` seconds;
- body: from the end of the headers to the last byte of the body, ``body_timeout`` seconds.

A request past its deadline gets ``408`` (when any of it arrived) and its connection is closed;
headers larger than ``max_header_bytes`` get ``431`` (the parser would buffer any size);
a handler still reading its body sees ``http.disconnect``, so nothing of it is used (see
:func:`broker.core.asgi.read_body`). Time spent while uvicorn itself has paused reading (the app has
not taken the body yet, or a pipelined request waits for the one before it) does not count.

Deadlines are checked by the server's own 0.1 s tick (:meth:`uvicorn.Server.on_tick`), which
reads each connection's phase from uvicorn's state: nothing is done per request on the ingress
hot path (a timer armed and cancelled per request, or an override of each parser callback,
measurably would). So a deadline fires up to ``SWEEP_TICKS`` ticks late.

This reaches into uvicorn's httptools protocol (its parser callbacks, ``cycle`` and ``flow``);
``tests/e2e/test_http_deadlines.py`` fails if a uvicorn release changes them.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker.core.config import Settings

TICK = 0.1  # seconds between uvicorn's on_tick calls (uvicorn.Server.main_loop)
SWEEP_TICKS = 2  # connections are checked every 0.2 s

# What a connection is waiting for from its client, when it is waiting for anything.
_FIRST_BYTE = 1  # a new connection: the first request (limited as headers are)
_HEADERS = 2
_BODY = 3


class ReadDeadlines:
    """The server's tick count, the two deadlines in ticks and the bound on a request's headers;
    shared by all its connections."""

    def __init__(
        self, header_timeout: float, body_timeout: float, max_header_bytes: int = 64 * 1024
    ) -> None:
        self.tick = 0
        self.max_header_bytes = max_header_bytes
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._limits = {
            _FIRST_BYTE: math.ceil(header_timeout / TICK),
            _HEADERS: math.ceil(header_timeout / TICK),
            _BODY: math.ceil(body_timeout / TICK),
        }

    def sweep(self, connections: set[Any]) -> None:
        """Close every connection whose client is past the deadline of what it is sending.

        A phase is timed from the sweep that first saw it, so a deadline fires between its
        time and one sweep later.
        """
        tick = self.tick
        for connection in list(connections):
            if not isinstance(connection, DeadlineHttpToolsProtocol):
                continue  # a websocket, say: not ours to time
            phase = connection.phase()
            scope = connection.scope
            if phase is None:
                connection.seen_phase = None
            elif (
                phase != connection.seen_phase
                or scope is not connection.seen_scope
                or (connection.flow is not None and connection.flow.read_paused)
            ):
                # Newly seen, or uvicorn itself is not reading (the wait is ours): start timing.
                connection.seen_phase, connection.seen_scope = phase, scope
                connection.seen_since = tick
            elif tick - connection.seen_since > self._limits[phase]:
                connection.read_timed_out(phase)

    def message(self, phase: int) -> str:
        if phase == _BODY:
            return f"request body not complete within {self.body_timeout:g} s"
        return f"request headers not complete within {self.header_timeout:g} s"


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with read deadlines and a bound on header bytes.

    Which part of a request a connection waits for is read from uvicorn's own state (its
    ``scope`` is made when a request begins, its ``cycle`` when the headers are complete, and
    ``cycle.more_body`` turns false at the body's end) by the sweep, rather than recorded by
    overriding the parser callbacks: three more Python calls per request measurably slowed the
    ingress. Only ``data_received`` is overridden, for the header bound.
    """

    deadlines: ClassVar[ReadDeadlines]  # set by the subclass :func:`protocol_class` makes

    # What the sweep last saw this connection wait for (phase, request) and since which tick.
    seen_phase: int | None = None
    seen_scope: object = None
    seen_since = 0
    # Header bytes received for the request whose scope is header_scope.
    header_bytes = 0
    header_scope: object = None

    def phase(self) -> int | None:
        """What this connection waits for from its client now, if anything."""
        scope, cycle = self.scope, self.cycle
        if scope is None:
            return _FIRST_BYTE  # connected, no request yet
        if cycle is None or cycle.scope is not scope:
            return _HEADERS  # a request began; its headers are not complete
        if cycle.more_body and not cycle.disconnected:
            return _BODY
        return None  # the handler has the request; idle keep-alive is uvicorn's to time

    def data_received(self, data: bytes) -> None:
        # A read after which the same request's headers are still incomplete was all header
        # bytes: those count against max_header_bytes (the httptools parser buffers headers of
        # any size). The reads in which a request begins and its headers end are not counted,
        # so headers are bounded by max_header_bytes plus two reads.
        scope = self.scope
        super().data_received(data)
        if scope is None or scope is not self.scope:
            return
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope:
            return  # the headers are complete
        if self.header_scope is not scope:
            self.header_scope, self.header_bytes = scope, 0
        self.header_bytes += len(data)
        limit = self.deadlines.max_header_bytes
        if self.header_bytes > limit and not self.transport.is_closing():
            self.refuse(
                431,
                b"Request Header Fields Too Large",
                f"request headers larger than {limit} bytes",
            )

    def read_timed_out(self, phase: int) -> None:
        """Answer 408 (if a request began and nothing was answered) and close the connection."""
        cycle = self.cycle  # in the headers phase: the previous request's, if any
        # A handler may answer before the body is in (404, 413): no second answer then.
        answered = phase == _BODY and cycle is not None and cycle.response_started
        if phase == _FIRST_BYTE or answered:
            self.refuse(None, b"", "")
        else:
            self.refuse(408, b"Request Timeout", self.deadlines.message(phase))

    def refuse(self, status: int | None, reason: bytes, message: str) -> None:
        """Answer ``status`` (None: nothing) and close the connection, cutting off any request
        whose handler is still reading: it gets http.disconnect, never a part of the body."""
        self.seen_phase = None
        if status is not None:
            body = orjson.dumps({"code": status, "message": message})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, reason, len(body), body)
            )
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def protocol_class(deadlines: ReadDeadlines) -> type[DeadlineHttpToolsProtocol]:
    """A protocol class bound to one server's ``deadlines``."""
    return type("CemeshHttpProtocol", (DeadlineHttpToolsProtocol,), {"deadlines": deadlines})


class DeadlineServer(uvicorn.Server):
    """uvicorn's server, whose tick also enforces the connections' read deadlines."""

    def __init__(self, config: uvicorn.Config, deadlines: ReadDeadlines) -> None:
        super().__init__(config)
        self.deadlines = deadlines

    async def on_tick(self, counter: int) -> bool:
        deadlines = self.deadlines
        deadlines.tick += 1
        if deadlines.tick % SWEEP_TICKS == 0:
            deadlines.sweep(self.server_state.connections)
        return await super().on_tick(counter)


def server_options(settings: Settings) -> tuple[dict[str, Any], ReadDeadlines]:
    """uvicorn options for ``settings``' connection limits and timeouts, and their deadlines.

    The deadlines are enforced by the :class:`DeadlineServer` the options are served with.
    """
    deadlines = ReadDeadlines(
        settings.header_timeout, settings.body_timeout, settings.max_header_bytes
    )
    options = {
        "http": protocol_class(deadlines),  # httptools, with the deadlines
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
    }
    return options, deadlines
