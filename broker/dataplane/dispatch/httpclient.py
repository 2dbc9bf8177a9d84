"""Plain ``http://`` delivery on the event loop itself: pooled keep-alive HTTP/1.1 on httptools.

Why it exists: end to end, the event loop thread is what saturates first, and pyreqwest costs
~10 us of it per request plus the uvloop wake-ups its Rust thread causes. Here an
:class:`asyncio.Protocol` writes the request and feeds the answer to httptools (llhttp, C), and
one Future per request is resolved from the protocol's callbacks: no task, no thread, no
wake-up beyond the awaiting coroutine's own. TLS is not done here: ``https://`` stays on
pyreqwest (see :class:`broker.dataplane.dispatch.client.DeliveryClient`).

What it does (and the choices made):

- **Connections**: one request at a time per connection (no pipelining), a keep-alive pool per
  (host, port). The most recently used idle connection is reused first (the likeliest to still
  be open); at most ``max_idle_per_origin`` idle ones are kept, and idle ones are closed after
  ``pool_idle_timeout`` seconds by a timer that runs only while some are idle. Nothing caps the
  number of open connections: the deliverer limits in-flight requests per subscriber.
- **Request**: ``POST <path?query> HTTP/1.1`` with ``host``, ``user-agent`` and
  ``content-length``; framing is this client's job, so callers' ``host``, ``content-length``,
  ``transfer-encoding`` and ``connection`` headers are ignored. A header name that is not an
  HTTP token, or a name or value with CR, LF or NUL, or a character outside latin-1, makes the
  request unsendable: ``DeliveryError(retryable=False)``. Userinfo in the URL
  (``http://user:pass@host/``) is sent as Basic auth, percent-decoded, as reqwest does, so
  moving a subscriber between the two clients changes nothing. Path and query are sent as
  written; only spaces, control and non-ASCII characters are percent-encoded.
- **Response**: framed by Content-Length, chunked encoding, or the end of the connection;
  1xx interim responses are skipped; 204 and 304 have no body. Redirects are never followed
  (C66): a 3xx is a :class:`~broker.dataplane.dispatch.http.Response` like any other. The connection
  goes back to the pool only when the response allows it (HTTP/1.1 without ``Connection:
  close``, HTTP/1.0 with keep-alive) and the request was completely written. Header names are
  lower-cased bytes; at most ``max_response_bytes`` (headers, body and framing) are read.
- **Failures**: refused, reset, closed mid-response, an invalid or too large response, and the
  timeout raise ``DeliveryError(status=None, retryable=True)`` chained from the cause; the
  connection is closed and never reused. ``timeout`` is one deadline for connect, send and the
  whole response.
- **One retry**: a *reused* connection that the server closes before any byte of the response
  arrived is the classic keep-alive race (the server's idle timeout struck while the request
  was on its way), so the request is sent again, once, on a fresh connection. The server may
  have received and even processed the first copy; delivery is at-least-once and subscribers
  must tolerate duplicates, while failing here would cost a retry with backoff every time a
  subscriber's idle timeout races a request.
"""

from __future__ import annotations

import asyncio
import base64
import string
from collections import deque
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from httptools import HttpParserCallbackError, HttpParserError, HttpResponseParser

from broker.core.errors import DeliveryError
from broker.dataplane.dispatch.http import USER_AGENT, Response

DEFAULT_PORT: Final = 80
MAX_IDLE_PER_ORIGIN: Final = 256
POOL_IDLE_TIMEOUT: Final = 60.0  # seconds
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024  # generous: a reply is at most one event
# Up to this size the body is copied behind the head so that one write (one segment, one read
# on the other side) carries the request; bigger bodies go out with writelines, uncopied.
_COALESCE_BYTES: Final = 64 * 1024
# Caches keyed by URL and header name only grow with configuration; this only bounds a leak.
_CACHE_LIMIT: Final = 10_000

# RFC 9110 5.6.2: the characters of a header name.
_TOKEN: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
# Framing headers: this client writes them itself.
_OWNED: Final = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Percent-encode only what cannot appear in a request line: space, controls, non-ASCII.
_TARGET_SAFE: Final = string.punctuation


class ResponseTooLarge(Exception):
    """The response is over ``max_response_bytes`` (the cause of a :class:`DeliveryError`)."""


class _ClosedEarly(ConnectionError):
    """The connection closed before any byte of the response: retried once on a reused one."""


class _ClosedMidResponse(ConnectionError):
    """The connection closed after part of the response arrived."""


class _Route:
    """What one URL resolves to: its origin's pool and the fixed start of its requests."""

    __slots__ = ("head", "pool")

    def __init__(self, pool: _Pool, head: str) -> None:
        self.pool = pool
        self.head = head


class _Pool:
    """Connections to one (host, port): the idle ones (oldest first) and every open one."""

    __slots__ = ("client", "host", "idle", "open", "port", "response_limit")

    def __init__(self, client: Http1Client, host: str, port: int) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.response_limit = client.max_response_bytes
        self.idle: deque[_Connection] = deque()
        self.open: set[_Connection] = set()

    def acquire(self) -> _Connection | None:
        """The most recently used idle connection still open, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: _Connection) -> None:
        """``conn`` finished an exchange cleanly: keep it for the next request, or close it."""
        client = self.client
        if conn.closed or client.closed or len(self.idle) >= client.max_idle_per_origin:
            conn.transport.close()
            return
        conn.idle = True
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)
        if client.sweeper is None:
            client.schedule_sweep()

    def forget(self, conn: _Connection) -> None:
        """``conn`` is closed: it is no longer open, nor idle."""
        self.open.discard(conn)
        if conn.idle:
            conn.idle = False
            self.idle.remove(conn)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, parses its response, resolves a Future."""

    __slots__ = (
        "body",
        "closed",
        "headers",
        "headers_done",
        "idle",
        "idle_since",
        "loop",
        "parser",
        "pool",
        "received",
        "timer",
        "transport",
        "waiter",
    )

    def __init__(self, pool: _Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.parser = HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None  # the exchange in flight, if any
        self.timer: asyncio.TimerHandle | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.received = 0  # bytes of the current response so far
        self.headers_done = False
        self.closed = False
        self.idle = False
        self.idle_since = 0.0

    # --- driven by the client -----------------------------------------------------------------

    def send(self, head: bytes, body: bytes, deadline: float) -> asyncio.Future[Response]:
        """Write one request; the Future gets its response or the cause of its failure."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        self.received = 0
        self.timer = self.loop.call_at(deadline, self._timed_out)
        if len(body) <= _COALESCE_BYTES:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        return waiter

    def abandon(self) -> None:
        """The caller gave up on the exchange in flight (cancelled): never reuse the connection."""
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
        self.transport.abort()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection is a Transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for (a server's 408 before closing an idle connection, a second
            # response): the connection's state is unknown, so it is not used again.
            self.transport.abort()
            return
        self.received += len(data)
        if self.received > self.pool.response_limit:
            limit = self.pool.response_limit
            self._fail(ResponseTooLarge(f"response over {limit} bytes"))
            return
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as exc:
            # An exception raised in one of our callbacks; httptools keeps it as the context.
            self._fail(exc.__context__ if isinstance(exc.__context__, Exception) else exc)
        except HttpParserError as exc:
            self._fail(exc)
        except Exception as exc:  # HttpParserUpgrade: a 101 nobody asked for
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        waiter = self.waiter
        if waiter is None:
            return
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
        if waiter.done():
            return
        if self.headers_done and not _framed(self.headers):
            # No Content-Length, not chunked: the body ends with the connection (RFC 9112 6.3).
            waiter.set_result(self._response())
            return
        error: ConnectionError
        if self.received:
            error = _ClosedMidResponse("connection closed in the middle of the response")
        else:
            error = _ClosedEarly("connection closed before any response")
        error.__cause__ = exc
        waiter.set_exception(error)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.waiter is None:
            # A response to no request, right behind the last one: never parse it as the answer
            # to the next request.
            raise HttpParserError("response without a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: interim, the final response follows.
            self.headers = []
            self.body = []
            self.headers_done = False
            return
        waiter = self.waiter
        if waiter is None:  # on_message_begin already refused it; to be sure
            raise HttpParserError("response without a request")
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
        response = self._response()
        transport = self.transport
        if (
            status != 101
            and parser.should_keep_alive()
            # A server may answer before reading the whole request; then what is left of it
            # would be taken for the next request.
            and not transport.get_write_buffer_size()
        ):
            self.pool.release(self)
        else:
            transport.close()
        if not waiter.done():  # done: the caller was cancelled meanwhile
            waiter.set_result(response)

    # --- internals ----------------------------------------------------------------------------

    def _response(self) -> Response:
        body = self.body
        response = Response(
            self.parser.get_status_code(),
            self.headers,
            body[0] if len(body) == 1 else b"".join(body),
        )
        self.headers = []
        self.body = []
        self.headers_done = False
        return response

    def _timed_out(self) -> None:
        self._fail(TimeoutError())

    def _fail(self, cause: BaseException) -> None:
        waiter = self.waiter
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
        self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(cause)


class Http1Client:
    """:class:`~broker.dataplane.dispatch.http.HttpClient` for ``http://`` URLs, on the running
    loop.

    Bound to the first event loop it is used on (a later loop starts from an empty pool).
    """

    def __init__(
        self,
        *,
        pool_idle_timeout: float = POOL_IDLE_TIMEOUT,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.pool_idle_timeout = pool_idle_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.max_response_bytes = max_response_bytes
        self.user_agent = user_agent
        self.closed = False
        self.sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # By (host, port), kept while the client lives: origins come from configuration.
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._routes: dict[str, _Route] = {}
        self._names: dict[str, bool] = {}  # header name -> sent (True) or ignored (False)

    async def post(
        self,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,  # noqa: ASYNC109
        ca_certs: str | None = None,  # plain http: no certificate to verify
    ) -> Response:
        """POST ``body``; ``timeout`` (seconds) bounds connect, send and the whole response."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        route = self._routes.get(url)
        if route is None:
            route = self._route(url)
        head = self._head(url, route.head, headers, len(body))
        deadline = loop.time() + timeout
        pool = route.pool
        conn = pool.acquire()
        while True:
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool, url, deadline, timeout)
            waiter = conn.send(head, body, deadline)
            try:
                return await waiter
            except _ClosedEarly as exc:
                if reused:
                    conn = None  # the keep-alive race: once more, on a fresh connection
                    continue
                raise DeliveryError(f"POST {url}: {exc}", retryable=True) from exc
            except TimeoutError as exc:
                # Sent, maybe processed, no answer: "maybe delivered", retryable (K120).
                raise DeliveryError(
                    f"POST {url}: no response within {timeout:g}s", retryable=True
                ) from exc
            except HttpParserError as exc:
                raise DeliveryError(f"POST {url}: invalid response: {exc}", retryable=True) from exc
            except (OSError, ResponseTooLarge) as exc:
                raise DeliveryError(f"POST {url}: {exc}", retryable=True) from exc
            except BaseException:
                if conn.waiter is waiter:  # cancelled mid-exchange
                    conn.abandon()
                raise

    async def close(self) -> None:
        """Close every connection; later requests fail (retryable). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        if self._loop is not None and not self._loop.is_closed():
            for pool in self._pools.values():
                for conn in list(pool.open):
                    if conn.idle:
                        conn.transport.close()
                    else:
                        conn.transport.abort()
        self._loop = None
        self._pools.clear()
        self._routes.clear()

    # --- pool upkeep (called by _Pool) --------------------------------------------------------

    def schedule_sweep(self) -> None:
        """Close idle connections past their idle timeout from time to time, while any exist."""
        if self._loop is not None:
            self.sweeper = self._loop.call_later(self.pool_idle_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        self.sweeper = None
        if self._loop is None:
            return
        cutoff = self._loop.time() - self.pool_idle_timeout
        remaining = 0
        for pool in self._pools.values():
            idle = pool.idle
            while idle and idle[0].idle_since <= cutoff:  # oldest first
                conn = idle.popleft()
                conn.idle = False
                conn.transport.close()
            remaining += len(idle)
        if remaining:
            self.schedule_sweep()

    # --- internals ----------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.closed:
            raise DeliveryError("HTTP client is closed", retryable=True)
        # Connections of another loop cannot be used from this one; they go with their loop.
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        self._pools = {}
        self._routes = {}
        self._loop = loop

    def _route(self, url: str) -> _Route:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise DeliveryError(f"POST {url}: cannot send: {exc}", retryable=False) from exc
        host = parts.hostname
        if parts.scheme.lower() != "http" or not host:
            raise DeliveryError(
                f"POST {url}: cannot send: not an absolute http:// URL", retryable=False
            )
        if port is None:
            port = DEFAULT_PORT
        authority = parts.netloc.rpartition("@")[2]  # as written, IPv6 brackets included
        if not authority.isascii():
            try:
                authority = authority.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise DeliveryError(f"POST {url}: cannot send: {exc}", retryable=False) from exc
        target = quote(parts.path or "/", safe=_TARGET_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_TARGET_SAFE)
        head = f"POST {target} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {self.user_agent}\r\n"
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode()).decode("ascii")
            head += f"authorization: Basic {token}\r\n"
        pool = self._pools.get((host, port))
        if pool is None:
            pool = self._pools[(host, port)] = _Pool(self, host, port)
        if len(self._routes) >= _CACHE_LIMIT:
            self._routes.clear()
        route = self._routes[url] = _Route(pool, head)
        return route

    def _head(self, url: str, start: str, headers: list[tuple[str, str]], length: int) -> bytes:
        """The request's bytes up to its body: request line, headers, blank line."""
        names = self._names
        lines = [
            f"{name}: {value}\r\n"
            for name, value in headers
            if names.get(name) or self._admit(url, name)
        ]
        text = "".join(lines)
        count = len(lines)
        # Each line has exactly one CR and one LF of its own: any other is in a name or value.
        if text.count("\n") != count or text.count("\r") != count or "\0" in text:
            raise DeliveryError(
                f"POST {url}: cannot send: {_bad_header(headers)} has CR, LF or NUL",
                retryable=False,
            )
        try:
            return f"{start}{text}content-length: {length}\r\n\r\n".encode("latin-1")
        except UnicodeEncodeError as exc:
            raise DeliveryError(
                f"POST {url}: cannot send: a header is not latin-1: {exc}", retryable=False
            ) from exc

    def _admit(self, url: str, name: str) -> bool:
        """Whether header ``name`` is sent (False: a framing header this client writes itself)."""
        if not name or not _TOKEN.issuperset(name):
            raise DeliveryError(
                f"POST {url}: cannot send: invalid header name {name!r}", retryable=False
            )
        sent = name.lower() not in _OWNED
        if len(self._names) >= _CACHE_LIMIT:
            self._names.clear()
        self._names[name] = sent
        return sent

    async def _connect(self, pool: _Pool, url: str, deadline: float, timeout: float) -> _Connection:  # noqa: ASYNC109
        loop = self._loop
        if loop is None or self.closed:
            raise DeliveryError(f"POST {url}: HTTP client is closed", retryable=True)
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(pool, loop), pool.host, pool.port
                )
        except TimeoutError as exc:
            raise DeliveryError(
                f"POST {url}: no response within {timeout:g}s (connecting)", retryable=True
            ) from exc
        except OSError as exc:
            raise DeliveryError(f"POST {url}: cannot connect: {exc}", retryable=True) from exc
        except UnicodeError as exc:  # a host name IDNA cannot encode
            raise DeliveryError(f"POST {url}: cannot send: {exc}", retryable=False) from exc
        if self.closed:  # the client was closed while connecting
            conn.transport.abort()
            raise DeliveryError(f"POST {url}: HTTP client is closed", retryable=True)
        if conn.closed:  # reset before this coroutine resumed
            raise DeliveryError(f"POST {url}: connection closed on connect", retryable=True)
        pool.open.add(conn)
        return conn


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the response said where its body ends (else the end of the connection does)."""
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)


def _bad_header(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if any(char in text for text in (name, value) for char in "\r\n\0"):
            return f"header {name!r}"
    return "a header"
