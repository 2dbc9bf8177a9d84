"""The outbound HTTP clients cemesh runs: :class:`DeliveryClient` and :class:`ReqwestClient`.

They implement the seam of :mod:`broker.dataplane.dispatch.http` (:class:`HttpClient`: delivery code
only ever calls ``post`` and ``close``; tests and benchmarks can put another client behind the same
two methods). :class:`DeliveryClient`, the one cemesh runs, sends
``http://`` through :class:`~broker.dataplane.dispatch.httpclient.Http1Client` (on the event loop)
and everything else through :class:`ReqwestClient` (pyreqwest, for TLS).

``ca_certs`` (a destination's ``CACerts``, PEM) makes an ``https`` request trust those CAs on
top of the system bundle: reqwest takes extra roots per client, not per request, so
:class:`DeliveryClient` keeps one pooled reqwest client per distinct ``CACerts`` value (these
come from applied resources, so there are few). A certificate that does not chain to a trusted
CA fails like a refused connection, with reqwest's reason ("invalid peer certificate:
UnknownIssuer").

Failures are mapped by each client, once, into the exception tree: no response at all (refused,
reset, timeout) raises ``DeliveryError(status=None, retryable=True)``; a request that can never
be sent (bad URL, header value that is not valid HTTP) raises ``DeliveryError(retryable=False)``.
Any HTTP status, 4xx and 5xx included, is a :class:`Response`, never an exception: the retry
policy decides what it means.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError, RequestTimeoutError
from pyreqwest.http import HeaderMap

from broker.core.errors import DeliveryError
from broker.dataplane.dispatch.http import (
    USER_AGENT,
    HttpClient,
    LocalPost,
    LocalRoutingClient,
    Response,
)
from broker.dataplane.dispatch.httpclient import Http1Client

# The seam's names, for code that imports them from here.
__all__ = [
    "USER_AGENT",
    "DeliveryClient",
    "HttpClient",
    "LocalPost",
    "LocalRoutingClient",
    "ReqwestClient",
    "Response",
]

logger = logging.getLogger(__name__)


class ReqwestClient:
    """:class:`HttpClient` on pyreqwest (Rust reqwest): pooled keep-alive connections, HTTP/1.1.

    - Redirects are never followed (C66): a 3xx is just a failed attempt (K10).
    - No decompression, so no ``Accept-Encoding`` is sent and reply bodies arrive as sent.
    - No cap on connections here: pyreqwest has no per-host cap, so the deliverer limits
      in-flight requests per subscriber itself.
    """

    def __init__(
        self,
        *,
        pool_idle_timeout: float = 90.0,
        user_agent: str = USER_AGENT,
        ca_certs: str | None = None,
    ) -> None:
        builder = ClientBuilder()
        if ca_certs is not None:
            builder = builder.add_root_certificate_pem(ca_certs.encode())
        self._client: Client = (
            builder.follow_redirects(False)
            .referer(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .user_agent(user_agent)
            .http1_lower_case_headers()
            .pool_idle_timeout(timedelta(seconds=pool_idle_timeout))
            .build()
        )
        # Building a timedelta per request is measurable on the hot path; policies use a handful
        # of distinct timeouts, so keep them.
        self._timeouts: dict[float, timedelta] = {}
        self._closed = False

    async def post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109
        ca_certs: str | None = None,  # this client's roots are fixed when it is built
    ) -> Response:
        span = self._timeouts.get(timeout)
        if span is None:
            span = self._timeouts[timeout] = timedelta(seconds=timeout)
        try:
            request = self._client.post(url).headers(headers).body_bytes(body).timeout(span).build()
            response = await request.send()
            payload = await response.bytes()
            response_headers = _headers(response.headers)
        except RequestTimeoutError as exc:
            # reqwest reports a timeout that struck after the request was written as a *connect*
            # timeout, so no timeout tells us whether the subscriber got the event: every one is
            # "maybe delivered", and retrying it is what at-least-once asks for.
            raise DeliveryError(
                f"POST {url}: no response within {timeout:g}s", retryable=True
            ) from exc
        except ValueError as exc:
            # Raised while building the request (relative URL, header value with a newline; also
            # pyreqwest's BuilderError): the same request would fail the same way every time.
            raise DeliveryError(f"POST {url}: cannot send: {exc}", retryable=False) from exc
        except PyreqwestError as exc:
            # Refused, reset, closed mid-body, client closed: no usable response.
            raise DeliveryError(f"POST {url}: {_describe(exc)}", retryable=True) from exc
        return Response(response.status, response_headers, bytes(payload))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()


class DeliveryClient:
    """The default :class:`HttpClient`: ``http://`` on the event loop, everything else on reqwest.

    Plain HTTP, what subscribers inside a cluster speak, goes to
    :class:`~broker.dataplane.dispatch.httpclient.Http1Client`, which runs on the event loop itself
    and costs it a fraction of what pyreqwest does per request (see that module). ``https://`` (and
    anything else, which reqwest then rejects as it always did) goes to :class:`ReqwestClient`
    for TLS. Both share the behaviour this module's docstring describes.
    """

    def __init__(self, *, pool_idle_timeout: float = 60.0, user_agent: str = USER_AGENT) -> None:
        self._plain = Http1Client(pool_idle_timeout=pool_idle_timeout, user_agent=user_agent)
        self._reqwest = ReqwestClient(pool_idle_timeout=pool_idle_timeout, user_agent=user_agent)
        self._pool_idle_timeout = pool_idle_timeout
        self._user_agent = user_agent
        # CACerts PEM -> a reqwest client trusting them (module docstring).
        self._by_ca: dict[str, ReqwestClient] = {}
        # URL prefix -> in-process handler (the function invoker's Services): no HTTP hop.
        self._local: list[tuple[str, LocalPost]] = []

    def add_local_route(self, prefix: str, post: LocalPost) -> None:
        """Answer POSTs to URLs starting with ``prefix`` by calling ``post`` in-process."""
        self.remove_local_route(prefix)
        self._local.append((prefix, post))

    def remove_local_route(self, prefix: str) -> None:
        self._local = [(p, handler) for p, handler in self._local if p != prefix]

    def post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
        ca_certs: str | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """The chosen client's ``post`` coroutine, to be awaited like :meth:`HttpClient.post`.

        A plain function rather than ``async def``: routing needs no await, and this saves a
        coroutine frame per request on the event loop.
        """
        if self._local:  # only when a component registered a route: free otherwise
            for prefix, handler in self._local:
                if url.startswith(prefix):
                    return handler(url, headers, body, timeout=timeout)
        if url.startswith("http://") or url[:7].lower() == "http://":
            return self._plain.post(url, headers, body, timeout=timeout)
        if ca_certs is None:
            return self._reqwest.post(url, headers, body, timeout=timeout)
        return self._trusting(ca_certs).post(url, headers, body, timeout=timeout)

    def _trusting(self, ca_certs: str) -> ReqwestClient:
        client = self._by_ca.get(ca_certs)
        if client is None:
            client = self._by_ca[ca_certs] = ReqwestClient(
                pool_idle_timeout=self._pool_idle_timeout,
                user_agent=self._user_agent,
                ca_certs=ca_certs,
            )
        return client

    async def close(self) -> None:
        try:
            await self._plain.close()
        finally:
            clients, self._by_ca = [self._reqwest, *self._by_ca.values()], {}
            for client in clients:
                await client.close()


def _headers(header_map: HeaderMap) -> list[tuple[bytes, bytes]]:
    """The response headers as lower-case byte pairs, in arrival order."""
    try:
        return [(name.encode("ascii"), value.encode()) for name, value in header_map.items()]
    except ValueError:
        pass
    # pyreqwest cannot turn a non-ASCII header value into str and fails for the whole map; keep
    # every header it can read. CloudEvents percent-encodes every non-ASCII character of a ce-
    # header value (C36), so such a value was never a valid attribute anyway.
    pairs: list[tuple[bytes, bytes]] = []
    for name in dict.fromkeys(header_map.keys()):
        try:
            values = header_map.getall(name)
        except ValueError:
            logger.debug("dropping undecodable response header", extra={"header": name})
            continue
        pairs.extend((name.encode("ascii"), value.encode()) for value in values)
    return pairs


def _describe(exc: PyreqwestError) -> str:
    """pyreqwest's message plus its innermost cause ("Connection refused (os error 111)")."""
    details = getattr(exc, "details", None)
    causes = details.get("causes") if isinstance(details, dict) else None
    if causes:
        return f"{exc.message}: {causes[-1]['message']}"
    return exc.message
