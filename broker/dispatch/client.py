"""The one seam for outbound HTTP: :class:`HttpClient`, and its pyreqwest implementation.

Delivery code only ever calls ``post`` and ``close``; tests and benchmarks can put another
client behind the same two methods. Failures are mapped here, once, into the exception tree:
no response at all (refused, reset, timeout) raises ``DeliveryError(status=None,
retryable=True)``; a request that can never be sent (bad URL, header value that is not valid
HTTP) raises ``DeliveryError(retryable=False)``. Any HTTP status, 4xx and 5xx included, is a
:class:`Response`, never an exception: the retry policy decides what it means.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError, RequestTimeoutError
from pyreqwest.http import HeaderMap

from broker.errors import DeliveryError

logger = logging.getLogger(__name__)

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
    ) -> Response:
        """POST ``body``; ``timeout`` (seconds) bounds the whole exchange, body included."""
        ...

    async def close(self) -> None:
        """Release pooled connections. Idempotent."""
        ...


class ReqwestClient:
    """:class:`HttpClient` on pyreqwest (Rust reqwest): pooled keep-alive connections, HTTP/1.1.

    - Redirects are never followed (C66): a 3xx is just a failed attempt (K10).
    - No decompression, so no ``Accept-Encoding`` is sent and reply bodies arrive as sent.
    - No cap on connections here: pyreqwest has no per-host cap, so the deliverer limits
      in-flight requests per subscriber itself.
    """

    def __init__(self, *, pool_idle_timeout: float = 90.0, user_agent: str = USER_AGENT) -> None:
        self._client: Client = (
            ClientBuilder()
            .follow_redirects(False)
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
