"""``cemesh serve`` as a real child process, for tests of signals, restarts and crashes.

The child's local token file is ``tmp_path/token`` (``CEMESH_TOKEN_FILE``); once it is up,
``CemeshProcess.token`` holds the token and ``CemeshProcess.client()`` makes an admin client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from broker.auth.local_token import read_token
from tests.support.cemesh import bearer, free_port

CEMESH = Path(sys.executable).parent / "cemesh"


class CemeshProcess:
    """One ``cemesh serve`` child; only its own PID is ever signalled."""

    def __init__(self, env: Mapping[str, str], port: int, log_path: Path) -> None:
        self.env = dict(env)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.token = ""  # the local admin token, read once the child is ready

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new httpx client of this cemesh sending its admin token; close it."""
        kwargs.setdefault("timeout", 5)
        return httpx.AsyncClient(base_url=self.url, headers=bearer(self.token), **kwargs)

    async def start(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            str(CEMESH),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        async with httpx.AsyncClient(timeout=1) as client, asyncio.timeout(timeout):
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"cemesh exited at startup:\n{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        token_file = self.env.get("CEMESH_TOKEN_FILE")
                        if token_file:
                            self.token = read_token(Path(token_file)) or ""
                        return
                await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:  # noqa: ASYNC109
        """Send ``sig`` to the child and wait for it to exit; returns its exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"cemesh did not exit within {timeout}s:\n{self.log()}") from None


@contextlib.asynccontextmanager
async def cemesh_process(
    tmp_path: Path, *, port: int | None = None, **settings: str
) -> AsyncIterator[CemeshProcess]:
    """Start ``cemesh serve`` with a SQLite store in ``tmp_path`` (and ``CEMESH_*`` settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEMESH_")}
    env.update(
        {
            "CEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}",
            "CEMESH_LOG_LEVEL": "INFO",
            "CEMESH_TOKEN_FILE": str(tmp_path / "token"),
            **{f"CEMESH_{k.upper()}": v for k, v in settings.items()},
        }
    )
    child = CemeshProcess(env, port or free_port(), tmp_path / "cemesh.log")
    await child.start()
    try:
        yield child
    finally:
        if child.process is not None and child.process.returncode is None:
            child.process.kill()
            await child.process.wait()
