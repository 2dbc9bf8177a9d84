"""The server certificate of cemesh's HTTPS listener, reloaded when its files change.

One :class:`ssl.SSLContext` serves every HTTPS connection. :class:`ReloadingCertificate` checks
the certificate and key files every few seconds (modification time and size) and, when they
changed, loads them into that same context again: handshakes from then on present the new
certificate, connections already open keep theirs, and nothing restarts. A pair that does not
load (a half-written file, a key that does not match the certificate) is logged and skipped;
the old certificate stays in use and the files are tried again at the next check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from broker.core.errors import CemeshError
from broker.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int], tuple[int, int]]


class TlsConfigError(CemeshError):
    """The configured certificate or key cannot be used."""


class ReloadingCertificate:
    """A server SSLContext whose certificate follows ``cert_file`` and ``key_file``."""

    def __init__(self, cert_file: Path, key_file: Path, *, interval: float = 5.0) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._interval = interval
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp: _Stamp | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            self._load()
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot use certificate {self.cert_file} with key {self.key_file}: {exc}"
            ) from exc

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last load; whether it did."""
        try:
            if self._read_stamp() == self._stamp:
                return False
            self._load()
        except (OSError, ssl.SSLError) as exc:
            log.error(
                "new certificate not loaded; the previous one stays in use",
                extra={"cert_file": str(self.cert_file), "error": str(exc)},
            )
            return False
        log.info("certificate reloaded", extra={"cert_file": str(self.cert_file)})
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="cemesh-certificate-reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def _load(self) -> None:
        stamp = self._read_stamp()
        self.context.load_cert_chain(self.cert_file, self.key_file)
        self._stamp = stamp

    def _read_stamp(self) -> _Stamp:
        cert, key = os.stat(self.cert_file), os.stat(self.key_file)
        return (cert.st_mtime_ns, cert.st_size), (key.st_mtime_ns, key.st_size)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.reload_if_changed()
