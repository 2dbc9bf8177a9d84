"""The connection to a Kubernetes API server: client configuration and raw JSON requests.

What this module owns:

- :func:`load_client_configuration`: a kubernetes_asyncio ``Configuration`` from a kubeconfig
  file, else the in-cluster service account, else ``$KUBECONFIG`` / ``~/.kube/config`` (the
  order of client-go's ``BuildConfigFromFlags``);
- :class:`KubeConnection`: JSON requests (:meth:`~KubeConnection.request`) and streamed watch
  responses (:meth:`~KubeConnection.stream`) over kubernetes_asyncio's ``ApiClient``, which does
  the authentication (client certificates, bearer tokens and their refresh, exec plugins) and
  TLS. Its generated typed API classes are not used: cemesh reads custom resources of any
  group as plain dicts and needs the raw status code (409, 410) and streamed bodies, which
  ``call_api(..., _preload_content=False)`` gives.

Transport failures become :class:`ApiUnreachable`; callers decide what a status code means.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from broker.core.errors import CemeshError

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 60.0  # seconds for one non-watch request
USER_AGENT = "cemesh"
Query = Sequence[tuple[str, str]]


class ApiUnreachable(CemeshError):
    """The API server could not be reached (connection refused, reset, timed out)."""


async def load_client_configuration(kubeconfig: str | None, context: str | None = None) -> Any:
    """A kubernetes_asyncio ``Configuration``: from ``kubeconfig``, else in-cluster, else
    ``$KUBECONFIG`` or ``~/.kube/config`` (like client-go's ``BuildConfigFromFlags``).

    Raises :class:`~broker.core.errors.CemeshError` saying where it looked.
    """
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig and not os.path.exists(kubeconfig):  # noqa: ASYNC240 (one stat, rarely)
        raise CemeshError(f"the kubeconfig file {kubeconfig} does not exist")
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                # KUBECONFIG is read now: kubernetes_asyncio reads it once, at import.
                await config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
    except (ConfigException, OSError) as exc:
        where = kubeconfig or (
            "in-cluster service account, then "
            + (os.environ.get("KUBECONFIG") or "~/.kube/config (no $KUBECONFIG)")
        )
        raise CemeshError(
            f"cannot load the Kubernetes client configuration from {where}: {exc}"
        ) from exc
    return configuration


class KubeConnection:
    """Raw JSON requests to one API server (use ``async with``, or :meth:`close`)."""

    def __init__(self, configuration: Any) -> None:
        from kubernetes_asyncio import client

        self.configuration = configuration
        self.url = str(configuration.host).rstrip("/")
        self._api = client.ApiClient(configuration)
        self._api.user_agent = USER_AGENT  # so that audit logs tell cemesh's requests apart

    @property
    def api_client(self) -> Any:
        """The kubernetes_asyncio ``ApiClient`` underneath, for callers of its typed APIs
        (the serving backend's Deployment scale) that share this connection."""
        return self._api

    @classmethod
    async def connect(cls, kubeconfig: str | None, context: str | None = None) -> KubeConnection:
        return cls(await load_client_configuration(kubeconfig, context))

    async def __aenter__(self) -> KubeConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """``method path`` with a JSON ``body``; (status, the decoded JSON answer or None)."""
        import aiohttp

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            response = await self._api.call_api(
                path,
                method,
                query_params=list(query),
                header_params=headers,
                body=body,  # JSON-encoded by the client for any json content type
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=10),
            )
            async with response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnreachable(f"{method} {self.url}{path}: {exc or type(exc).__name__}") from exc
        try:
            return status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return status, {"message": raw[:200].decode("utf-8", "replace")}

    @asynccontextmanager
    async def stream(self, path: str, query: Query, *, read_timeout: float) -> AsyncIterator[Any]:
        """A GET whose aiohttp response is yielded unread (a watch: one JSON event a line).

        ``read_timeout`` bounds the wait for each chunk: only it can tell a dead connection.
        """
        import aiohttp

        try:
            response = await self._api.call_api(
                path,
                "GET",
                query_params=list(query),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(connect=10, sock_read=read_timeout),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnreachable(f"GET {self.url}{path}: {exc or type(exc).__name__}") from exc
        async with response:
            yield response
