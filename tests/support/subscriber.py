"""A real HTTP subscriber for tests: records every request and answers as the test says.

:class:`RecordingSubscriber` serves a raw ASGI app with uvicorn inside the test's own event loop,
on a free loopback port, and accepts any method on any path. Each request is recorded as a
:class:`Received` (the CloudEvent parsed from it with ``broker.core.binding.parse_request``, or
None), then answered with whatever ``respond`` returns (default ``202``, no body)::

    async with RecordingSubscriber(lambda r: (500, [], b"nope")) as sub:
        ...  # point a Trigger at sub.url
        [first] = await sub.wait_for(1)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn

from broker.core import binding
from broker.core.errors import BindingError
from broker.core.events import CloudEvent

Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
Respond = Callable[["Received"], Reply | Awaitable[Reply]]


@dataclass
class Received:
    """One request as the subscriber saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    # Parsed with binding.parse_request; None if not a valid CloudEvent (or a batch of events).
    event: CloudEvent | None


def _accepted(_: Received) -> Reply:
    return (202, [], b"")


class _Server(uvicorn.Server):
    """uvicorn made quick to start and stop inside a test.

    It reports when it is listening, stops the moment it is told (uvicorn's own loops tick every
    100 ms, which adds up over hundreds of tests) and leaves the test's signal handlers alone.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        await self.stop.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close, busy ones finish first
        state = self.server_state
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                # uvicorn signals no event when its last connection closes; poll briefly.
                while state.connections or state.tasks:  # noqa: ASYNC110
                    await asyncio.sleep(0.002)
        except TimeoutError:
            for task in state.tasks:
                task.cancel()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # Ctrl-C belongs to pytest, not to a test's server


class LoopbackServer:
    """An ASGI app served by uvicorn inside the running (test's) event loop on 127.0.0.1.

    ``start()`` binds a free port the first time and the same port after a ``stop()`` (so a test
    can take a server down and bring it back where clients expect it); ``url`` is its address.
    """

    def __init__(
        self,
        app: Any,
        *,
        name: str,
        log_level: str = "warning",
        tls: tuple[str, str] | None = None,  # (certificate file, key file): serve https
    ) -> None:
        self._app = app
        self._name = name
        self._log_level = log_level
        self._tls = tls
        self.port = 0
        self.url = ""
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind after stop()
        sock.bind(("127.0.0.1", self.port))  # kept bound until stop(): no race for the port
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",  # a bound method would be mistaken for an ASGI2 app
            proxy_headers=False,
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            loop="none",  # serve in the running (test's) loop
            # A request still being answered when the test ends is cancelled, not awaited.
            timeout_graceful_shutdown=1,
            **(
                {}
                if self._tls is None
                else {"ssl_certfile": self._tls[0], "ssl_keyfile": self._tls[1]}
            ),
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        ready = asyncio.create_task(self._server.ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            sock.close()
            await self._task  # re-raises why the server did not start
            raise RuntimeError(f"{self._name} exited before it started")
        self.url = f"{'http' if self._tls is None else 'https'}://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and close the socket; idempotent."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.stop.set()
            await self._task
        self._server = None
        self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class RecordingSubscriber:
    """An HTTP subscriber on ``http://127.0.0.1:PORT`` (``https`` with ``tls``) that records
    what it receives."""

    def __init__(
        self, respond: Respond | None = None, *, tls: tuple[str, str] | None = None
    ) -> None:
        self.respond: Respond = respond or _accepted
        self.url = ""  # set once started
        self.received: list[Received] = []
        self._arrived = asyncio.Event()
        self._server = LoopbackServer(self._app, name="subscriber server", tls=tls)

    async def __aenter__(self) -> RecordingSubscriber:
        self.url = await self._server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._server.stop()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109
        """Wait until at least ``count`` requests arrived; return all received so far (a copy).

        Raises AssertionError naming how many arrived when ``timeout`` (seconds) runs out.
        """
        try:
            async with asyncio.timeout(timeout):
                while len(self.received) < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"expected {count} request(s) at {self.url} within {timeout:g}s, "
                f"{len(self.received)} arrived"
            ) from None
        return list(self.received)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        raw_headers: list[tuple[bytes, bytes]] = [
            (name.lower(), value) for name, value in scope["headers"]
        ]
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            events = binding.parse_request(raw_headers, body)
        except BindingError:
            events = []
        event = events[0] if len(events) == 1 else None
        received = Received(scope["method"], scope["path"], headers, body, event)
        self.received.append(received)
        self._arrived.set()

        reply = self.respond(received)
        if inspect.isawaitable(reply):
            reply = await reply
        status, reply_headers, reply_body = reply
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply_headers]
        if not any(name == b"content-length" for name, _ in encoded):
            encoded.append((b"content-length", str(len(reply_body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": encoded})
        await send({"type": "http.response.body", "body": reply_body})
