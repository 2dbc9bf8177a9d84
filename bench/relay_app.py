"""The end-to-end ceiling: the least a Python process does per event it accepts and delivers.

Served exactly as ``bench/bare_app.py`` (uvicorn with cemesh's flags, through
``broker/server/listeners.py``). Each POST's body is read, the event (its headers and body) is
put on an in-memory queue (bounded: a full queue holds the answer back, as cemesh's memory bus
does), and ``202`` is answered. ``--workers`` tasks (cemesh's default dispatch concurrency) take
events off the queue and POST each to ``--target`` with cemesh's own HTTP/1 client
(:class:`broker.dataplane.dispatch.httpclient.Http1Client`), one attempt each.

Nothing else: no CloudEvents parsing, no filter, no store, no metrics, no retry. What is left is
one HTTP exchange in and one out per event on one event loop, which any broker written in
Python pays; ``bench/e2e.py`` reports cemesh's end-to-end rate beside this one, measured in the
same run.

``GET /count`` answers ``{"accepted": n, "delivered": n, "failed": n}``.

Run: ``python bench/relay_app.py --port PORT --target URL``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from broker.core.config import Settings
from broker.core.errors import DeliveryError
from broker.dataplane.dispatch.httpclient import Http1Client
from broker.server.app import UVICORN_OPTIONS
from broker.server.listeners import http_listeners

Message = MutableMapping[str, Any]
Event = tuple[list[tuple[str, str]], bytes]

QUEUE_BOUND = 10_000  # events held before answering waits
_START = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
_BODY = {"type": "http.response.body", "body": b""}
_JSON = [(b"content-type", b"application/json")]


class Relay:
    """The ASGI app and its delivery workers."""

    def __init__(self, target: str, workers: int) -> None:
        self.target = target
        self.workers = workers
        self.counts = {"accepted": 0, "delivered": 0, "failed": 0}
        self.queue: asyncio.Queue[Event] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["method"] == "GET":
            body = orjson.dumps(self.counts)
            await send({"type": "http.response.start", "status": 200, "headers": _JSON})
            await send({"type": "http.response.body", "body": body})
            return
        message = await receive()
        chunks = [message.get("body", b"")]
        while message.get("more_body", False):
            message = await receive()
            chunks.append(message.get("body", b""))
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.startswith(b"ce-") or name == b"content-type"
        ]
        assert self.queue is not None
        await self.queue.put((headers, b"".join(chunks)))
        self.counts["accepted"] += 1
        await send(_START)
        await send(_BODY)

    async def _lifespan(
        self, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        client = Http1Client()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.queue = asyncio.Queue(QUEUE_BOUND)
                self._tasks = [
                    asyncio.create_task(self._deliver(client)) for _ in range(self.workers)
                ]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                await client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _deliver(self, client: Http1Client) -> None:
        assert self.queue is not None
        while True:
            headers, body = await self.queue.get()
            try:
                response = await client.post(self.target, headers, body, timeout=10.0)
            except DeliveryError:  # a ceiling counts failures; it does not retry
                self.counts["failed"] += 1
                continue
            self.counts["delivered" if response.status < 300 else "failed"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="the subscriber's URL")
    parser.add_argument(
        "--workers", type=int, default=Settings().dispatch_concurrency, help="delivery tasks"
    )
    args = parser.parse_args()
    settings = Settings(host=args.host, port=args.port)
    http_listeners(Relay(args.target, args.workers), settings, **UVICORN_OPTIONS).run()


if __name__ == "__main__":
    main()
