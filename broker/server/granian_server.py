"""How cemesh serves HTTP under granian (``CEMESH_HTTP_SERVER=granian``), instead of uvicorn.

granian parses HTTP and writes responses in Rust, on a thread of its own, and runs the ASGI app
in cemesh's event loop (its embedded server, which granian labels experimental). On the bench
machine that made the ingress serve ~1.3 x as many requests per second as under uvicorn for about
the same CPU per request (README, Benchmarks), because the HTTP work moves off the event-loop
thread, which is what saturates first.

What it does not do that the uvicorn listeners (broker/server/listeners.py) do, and why uvicorn
stays the default:

- TLS: granian loads a certificate once and has no hook to replace its context, so a renewed
  certificate would need a restart; a certificate, a key or ``https_port`` with granian is refused
  when the settings load (broker/core/config.py);
- a deadline for the request body (``body_timeout``): granian bounds only the headers
  (``header_timeout``, at most 60 s there), so a slow body is not cut off;
- ``max_connections``: granian queues requests beyond it (backpressure) instead of answering 503;
- ``keep_alive_timeout``: granian keeps idle connections open as long as the client does;
- ``max_header_bytes``: granian refuses headers larger than its HTTP/1 buffer (~400 KiB) with
  431, whatever the setting says.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import uvloop
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server.embed import Server
from uvicorn.main import STARTUP_FAILURE

from broker.core.config import Settings

GRANIAN_MAX_HEADER_TIMEOUT_MS = 60_000  # granian's upper bound for its header read timeout


def granian_options(settings: Settings) -> dict[str, Any]:
    """The embedded granian server's arguments for ``settings``."""
    header_ms = round(settings.header_timeout * 1000)
    options: dict[str, Any] = {
        "address": settings.host,
        "port": settings.port,
        "interface": Interfaces.ASGI,  # with the lifespan, which starts and stops cemesh's runtime
        "http": HTTPModes.http1,  # what uvicorn serves too
        "websockets": False,
        "backlog": 2048,  # uvicorn's
        "backpressure": settings.max_connections,
        "http1_settings": HTTP1Settings(
            header_read_timeout=max(1, min(header_ms, GRANIAN_MAX_HEADER_TIMEOUT_MS)),
            keep_alive=True,
        ),
        "log_access": False,
        "log_level": "warning",
    }
    return options


class GranianListener:
    """One granian server on ``settings.host:port`` serving ``app`` in the current event loop."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.server = Server(app, **granian_options(settings))

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT, when this owns the signals)."""
        await self.server.serve()

    def stop(self) -> None:
        self.server.stop()

    def run(self) -> None:
        """Serve in a new uvloop event loop until SIGTERM/SIGINT; exit 3 (as uvicorn does) when
        the app's startup failed."""

        async def serve_until_signalled() -> None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
            await self.serve()

        uvloop.run(serve_until_signalled())
        # The worker ended by itself (not stopped by a signal): the app's startup failed, or it
        # crashed; either way the process must not exit 0.
        if self.server.interrupt_children:
            raise SystemExit(STARTUP_FAILURE)
