"""A real cemesh served over HTTP on a free loopback port, inside the test's event loop.

Its management API needs a token like any cemesh: ``RunningCemesh.client`` carries the local
(admin) token, ``RunningCemesh.token`` is that token, and ``client_with(token)`` makes a client
sending another one (or none). The token file is ``tmp_path/token``, never the user's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from broker import Settings, create_app
from broker.auth.local_token import read_token
from broker.controlplane.catalog import Catalog
from broker.features.feature import Feature
from broker.server.app import UVICORN_OPTIONS, CemeshApp
from broker.server.features import FEATURES
from broker.server.listeners import Listeners


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header for ``token`` (none for None)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class RunningCemesh:
    """A started cemesh: its URL, its app (for white-box checks) and an admin REST client."""

    def __init__(self, app: CemeshApp, url: str, client: httpx.AsyncClient, token: str) -> None:
        self.app = app
        self.url = url
        self.client = client  # sends the local (admin) token
        self.token = token

    def client_with(self, token: str | None, **kwargs: Any) -> httpx.AsyncClient:
        """A new client of this cemesh sending ``token`` (None: no credential); close it."""
        return httpx.AsyncClient(base_url=self.url, timeout=10, headers=bearer(token), **kwargs)

    @property
    def runtime(self) -> Any:
        return self.app.runtime

    async def apply(self, manifest: str | dict[str, Any], namespace: str = "default") -> list[dict]:
        """Create (or replace) every object of a YAML manifest; raise on any error status."""
        docs = [manifest] if isinstance(manifest, dict) else list(yaml.safe_load_all(manifest))
        applied = []
        for doc in docs:
            if not doc:
                continue
            ns = doc.get("metadata", {}).get("namespace", namespace)
            path = _collection_path(self.runtime.catalog, doc, ns)
            response = await self.client.post(path, json=doc)
            if response.status_code == 409:
                name = doc["metadata"]["name"]
                current = (await self.client.get(f"{path}/{name}")).json()
                doc.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                    "resourceVersion"
                ]
                response = await self.client.put(f"{path}/{name}", json=doc)
            assert response.status_code < 300, response.text
            applied.append(response.json())
        return applied

    async def post_event(
        self, path: str, headers: dict[str, str], body: bytes | str = b""
    ) -> httpx.Response:
        """POST to the data plane as a producer would: without the management API's token."""
        request = self.client.build_request("POST", path, headers=headers, content=body)
        if "authorization" not in {name.lower() for name in headers}:
            del request.headers["authorization"]
        return await self.client.send(request)


def _collection_path(catalog: Catalog, doc: dict[str, Any], namespace: str) -> str:
    rtype = catalog.type_for_kind(doc["apiVersion"], doc["kind"])
    return rtype.collection_path(namespace)


@contextlib.asynccontextmanager
async def running_cemesh(
    tmp_path: Path,
    *,
    features: Sequence[Feature] = FEATURES,
    as_served: bool = False,
    **overrides: Any,
) -> AsyncIterator[RunningCemesh]:
    """Serve cemesh on 127.0.0.1:<free port> with a SQLite store in ``tmp_path``, serving
    ``features`` (default: cemesh's own).

    ``as_served``: through uvicorn as ``cemesh serve`` runs it (``broker.server.listeners``
    with its options: httptools, the read deadlines, no proxy headers), as a benchmark wants it;
    the event loop stays the caller's. Otherwise uvicorn's defaults, as the tests have always
    run it.
    """
    port = free_port()
    settings = Settings(
        **{
            "port": port,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}",
            "delivery_backoff_delay": "PT0.01S",
            "token_file": tmp_path / "token",
            **overrides,
        }
    )
    app = create_app(settings, features)
    server: Any
    if as_served:
        server = Listeners(app, settings, **{**UVICORN_OPTIONS, "log_level": "warning"})
    else:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="none",
        )
        server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()  # re-raise a startup failure
                    raise RuntimeError("cemesh exited during startup")
                await asyncio.sleep(0.01)
        token = read_token(settings.token_file) if settings.token_file else None
        async with httpx.AsyncClient(base_url=url, timeout=10, headers=bearer(token)) as client:
            yield RunningCemesh(app, url, client, token or "")
    finally:
        if as_served:
            server.stop()
        else:
            server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
