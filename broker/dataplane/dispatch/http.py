"""The seam for outbound HTTP: what delivery needs from a client, and what it gets back.

:class:`HttpClient` (``post`` and ``close``) is all delivery code relies on;
:class:`LocalRoutingClient` adds in-process routes for URL prefixes (the function invoker's
Services, reached without an HTTP hop). The implementations live in
:mod:`broker.dataplane.dispatch.client` (the router and the reqwest client) and
:mod:`broker.dataplane.dispatch.httpclient` (plain HTTP/1.1 on the event loop); both import this
module, which imports neither.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

USER_AGENT = "cemesh"


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response: status, headers (names lower-case), whole body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class HttpClient(Protocol):
    """What delivery needs from an HTTP client."""

    # The deadline is the client's own (reqwest's), cheaper than wrapping it in asyncio.timeout.
    async def post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109
        ca_certs: str | None = None,
    ) -> Response:
        """POST ``body``; ``timeout`` (seconds) bounds the whole exchange, body included.

        ``ca_certs``: PEM certificates an ``https`` server's certificate may chain to, besides
        the system bundle (ignored for plain ``http``).
        """
        ...

    async def close(self) -> None:
        """Release pooled connections. Idempotent."""
        ...


class LocalPost(Protocol):
    """An in-process stand-in for POSTing to a URL (same contract as :meth:`HttpClient.post`)."""

    def __call__(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
    ) -> Coroutine[Any, Any, Response]: ...


class LocalRoutingClient(HttpClient, Protocol):
    """An :class:`HttpClient` that answers some URL prefixes in-process (``DeliveryClient``)."""

    def add_local_route(self, prefix: str, post: LocalPost) -> None:
        """Answer POSTs to URLs starting with ``prefix`` by calling ``post`` in-process."""
        ...

    def remove_local_route(self, prefix: str) -> None:
        """Stop answering ``prefix`` in-process. Idempotent."""
        ...
