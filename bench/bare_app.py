"""The ceiling: the least an ASGI app can do per event, under the server cemesh runs on.

It reads the request body (any ingress must) and answers ``202`` with ``content-length: 0`` and no
body, served exactly as ``broker.server.app.serve`` serves cemesh: uvicorn with uvloop, httptools,
no access log, no log config, and the read deadlines of ``broker/server/http_server.py``, through
``broker/server/listeners.py``. Whatever cemesh's ingress reaches is compared with what this reaches
in the same run.

``content-length: 0`` matters: without it uvicorn answers with ``transfer-encoding: chunked`` and
writes the empty body's terminating chunk in a second ``send()``, which costs this app 10-14% of
its throughput on the bench machine (38-40k against 42-45k requests/s). A ceiling should be the
best a bare app can do, so it sets the header.

Run: ``python bench/bare_app.py --port PORT``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from broker.core.config import Settings
from broker.server.app import UVICORN_OPTIONS
from broker.server.listeners import http_listeners

Message = MutableMapping[str, Any]

_START = {"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]}
_BODY = {"type": "http.response.body", "body": b""}


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """202 to every HTTP request once its body is read; lifespan events are acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    message = await receive()
    while message.get("more_body", False):
        message = await receive()
    await send(_START)
    await send(_BODY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--http-server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="uvicorn (the ceiling, whatever CEMESH_HTTP_SERVER says) or granian, to compare",
    )
    args = parser.parse_args()
    # The same server and arguments as broker.server.app.serve, so the only difference is the app.
    settings = Settings(host=args.host, port=args.port, http_server=args.http_server)
    http_listeners(app, settings, **UVICORN_OPTIONS).run()


if __name__ == "__main__":
    main()
