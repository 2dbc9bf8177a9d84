"""How cemesh listens: one uvicorn server per port, plain HTTP and/or HTTPS, one app behind both.

Without a certificate: HTTP on ``port``. With ``tls_cert_file`` and ``tls_key_file``:

- no ``https_port``: HTTPS on ``port`` and nothing in plain text (Knative's ``strict``
  transport encryption; the safe default once a certificate is given);
- ``https_port`` set: HTTP on ``port`` and HTTPS on ``https_port`` (Knative's ``permissive``
  mode, for moving senders over to https one at a time).

The HTTPS listener's SSLContext is a :class:`~broker.server.tls.ReloadingCertificate`'s, so a
renewed certificate is picked up without a restart. The first server runs the app's lifespan and
owns the signals; the second starts once the first is up and stops when it is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.main import STARTUP_FAILURE

from broker.core.config import Settings
from broker.server.http_server import DeadlineServer, ReadDeadlines, server_options
from broker.server.tls import ReloadingCertificate

if TYPE_CHECKING:
    from broker.server.granian_server import GranianListener


class _Config(uvicorn.Config):
    """uvicorn's Config serving TLS with a given SSLContext.

    uvicorn builds a context of its own from file names; ours must be the one that reloads, so
    it replaces uvicorn's once uvicorn has loaded (``ssl_certfile`` stays set, which is what
    makes uvicorn report the ``https`` scheme to the app).
    """

    def __init__(self, app: Any, *, context: ssl.SSLContext | None, **options: Any) -> None:
        super().__init__(app, **options)
        self._context = context

    def load(self) -> None:
        super().load()
        if self._context is not None:
            self.ssl = self._context


class _Companion(DeadlineServer):
    """The second listener: the first one owns the lifespan and the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Main(DeadlineServer):
    """The first listener; a signal that stops it stops its companions too."""

    def __init__(
        self, config: uvicorn.Config, deadlines: ReadDeadlines, companions: list[uvicorn.Server]
    ) -> None:
        super().__init__(config, deadlines)
        self.companions = companions

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        for companion in self.companions:
            companion.should_exit = True


class Listeners:
    """The uvicorn servers ``settings`` ask for, serving ``app``."""

    def __init__(self, app: Any, settings: Settings, **options: Any) -> None:
        # Both listeners share the connection limits and read deadlines
        # (broker/server/http_server.py).
        limits, deadlines = server_options(settings)
        options = {**options, **limits}
        self.certificate: ReloadingCertificate | None = None
        context: ssl.SSLContext | None = None
        tls: dict[str, Any] = {}
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            self.certificate = ReloadingCertificate(
                settings.tls_cert_file,
                settings.tls_key_file,
                interval=settings.tls_reload_interval,
            )
            context = self.certificate.context
            tls = {
                "ssl_certfile": str(settings.tls_cert_file),
                "ssl_keyfile": str(settings.tls_key_file),
            }
        main_tls = tls if settings.https_port is None else {}
        main_context = context if settings.https_port is None else None
        self.companions: list[uvicorn.Server] = []
        if settings.https_port is not None:
            https = _Config(
                app,
                context=context,
                host=settings.host,
                port=settings.https_port,
                **{**options, "lifespan": "off"},
                **tls,
            )
            self.companions.append(_Companion(https, deadlines))
        main = _Config(
            app,
            context=main_context,
            host=settings.host,
            port=settings.port,
            **options,
            **main_tls,
        )
        self.main = _Main(main, deadlines, self.companions)

    @property
    def started(self) -> bool:
        return self.main.started and all(c.started for c in self.companions)

    def run(self) -> None:
        """Serve in a new event loop of the configured kind (uvloop), as ``uvicorn.run`` does."""
        with asyncio.Runner(loop_factory=self.main.config.get_loop_factory()) as runner:
            runner.run(self.serve())
        if not self.main.started:  # the app's startup failed: exit as uvicorn.run does
            raise SystemExit(STARTUP_FAILURE)

    async def serve(self) -> None:
        """Serve until stopped (a signal, or :meth:`stop`)."""
        main = asyncio.create_task(self.main.serve())
        companions: list[asyncio.Task[None]] = []
        try:
            while not self.main.started:  # the app's lifespan has started: open the others
                if main.done():
                    return await main
                await asyncio.sleep(0.02)
            companions = [asyncio.create_task(c.serve()) for c in self.companions]
            if self.certificate is not None:
                self.certificate.start()
            await main
        finally:
            self.stop()
            if self.certificate is not None:
                await self.certificate.stop()
            await asyncio.gather(*companions, return_exceptions=True)
            if not main.done():
                await asyncio.gather(main, return_exceptions=True)

    def stop(self) -> None:
        self.main.should_exit = True
        for companion in self.companions:
            companion.should_exit = True


def http_listeners(app: Any, settings: Settings, **options: Any) -> Listeners | GranianListener:
    """What serves ``app`` for ``settings.http_server``: uvicorn (``options`` are uvicorn's) or
    granian (broker/server/granian_server.py)."""
    if settings.http_server == "granian":
        # Imported here: granian is an optional extra (cemesh[granian]).
        from broker.server.granian_server import GranianListener

        return GranianListener(app, settings)
    return Listeners(app, settings, **options)
