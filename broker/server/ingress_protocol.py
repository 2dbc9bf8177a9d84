"""Ingress POSTs answered inside the server's read callback, without an ASGI task.

uvicorn serves every request by starting a task that runs the ASGI app, which awaits the body
(``receive``) and answers with two ``send`` messages. For a CloudEvent POST that arrived whole in
one read, that machinery (the task and its loop iteration, the coroutines, the messages, the
header checks of ``send``) costs more CPU than the ingress's own work. So, for a POST to an
ingress path, :class:`IngressHttpProtocol` holds the task back until the end of the read: when
the body is complete by then, it asks :class:`InstantIngress` to accept the request on the spot
and, if that was done, writes the ``202`` itself, exactly as ``send`` would have (status line,
uvicorn's default headers, the ingress's headers, ``connection: close`` when the connection is
not kept alive). Anything else (a body spread over reads, a refusal, a bus without room, OIDC
on) starts the task as uvicorn would have, and the app serves it as before.

What stays as it was: ``Expect: 100-continue`` (such a request takes the task), the read
deadlines and header bound of :class:`DeadlineHttpToolsProtocol` (the request's cycle is made as
usual), pipelining (a request queued behind another is never held back), ``limit_concurrency``
(a request it refuses goes to uvicorn's 503 app), keep-alive and the request count. The answer is
written only while the transport takes writes; a request whose connection pauses writing takes
the task, whose ``send`` waits for the drain.

This reaches into uvicorn's httptools protocol as ``broker/server/http_server.py`` does (its
``cycle``, ``_start_asgi_task`` and ``STATUS_LINE``); ``tests/e2e/test_ingress_protocol.py``
checks the answers byte for byte against the ASGI path's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from broker.server.http_server import DeadlineHttpToolsProtocol, ReadDeadlines

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
RequestHeaders = Sequence[tuple[bytes, bytes]]


@runtime_checkable
class InstantIngress(Protocol):
    """What an app offers for requests answered in the read callback (CemeshApp does)."""

    def instant_route(self, scope: Any) -> Any | None:
        """The ingress route of a request (its scope, headers complete), if it may be accepted
        in the read callback; None serves it through the app."""
        ...

    def accept_now(self, route: Any, headers: RequestHeaders, body: bytes) -> Headers | None:
        """The headers of the ``202`` once the request is accepted; None when nothing was done
        (the app then serves the request)."""
        ...


class IngressHttpProtocol(DeadlineHttpToolsProtocol):
    """:class:`DeadlineHttpToolsProtocol` answering whole ingress POSTs in the read callback."""

    ingress: ClassVar[InstantIngress]  # set by the subclass protocol_class makes

    # The request whose task is held back until its body is complete or the read ends.
    _held: tuple[RequestResponseCycle, Any, Any] | None = None
    _in_headers = False  # within on_headers_complete (where a new request's task starts)

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        finally:
            held = self._held
            if held is not None:  # the body is not complete within this read: the usual way
                self._held = None
                super()._start_asgi_task(held[0], held[1])

    def on_headers_complete(self) -> None:
        self._in_headers = True
        try:
            super().on_headers_complete()
        finally:
            self._in_headers = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Only a request starting the usual way (not a pipelined one, not a 503) is held back,
        # and not one expecting "100 Continue" (the app's first receive answers that).
        if self._in_headers and app is self.app and not cycle.waiting_for_100_continue:
            route = self.ingress.instant_route(cycle.scope)
            if route is not None:
                self._held = (cycle, app, route)
                return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held = self._held
        if held is None:
            return
        self._held = None
        cycle, app, route = held
        if cycle is self.cycle and not cycle.disconnected and not self.flow.write_paused:
            try:
                request_headers = cast(RequestHeaders, cycle.scope["headers"])  # uvicorn's list
                headers = self.ingress.accept_now(route, request_headers, bytes(cycle.body))
            except Exception:  # a bug: let the app's path answer (and log) it
                log.exception("instant ingress failed; serving the request through the app")
                headers = None
            if headers is not None:
                self._answer(cycle, 202, headers)
                return
        super()._start_asgi_task(cycle, app)

    def _answer(self, cycle: RequestResponseCycle, status: int, headers: Headers) -> None:
        """Write a response without a body and complete the cycle, as uvicorn's ``send``."""
        content = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            content.extend((name, b": ", value, b"\r\n"))
        for name, value in headers:
            content.extend((name, b": ", value, b"\r\n"))
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.body.clear()
        self.transport.write(b"".join(content))
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()


def instant_protocol_class(
    deadlines: ReadDeadlines, ingress: InstantIngress
) -> type[IngressHttpProtocol]:
    """A protocol class bound to one server's ``deadlines`` and the app's ``ingress``."""
    return type(
        "CemeshIngressProtocol",
        (IngressHttpProtocol,),
        {"deadlines": deadlines, "ingress": ingress},
    )
