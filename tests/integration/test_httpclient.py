"""The event-loop HTTP/1.1 client (``broker.dataplane.dispatch.httpclient``) and its router, on real
servers.

Ordinary exchanges run against :class:`RecordingSubscriber` (uvicorn); the odd cases (chunked
framing, ``Connection: close``, HTTP/1.0, a server that closes, never answers or answers
garbage) against :class:`RawServer`, an asyncio server on 127.0.0.1 whose connection handler
each test writes. HTTP/1.1 is the wire contract (K2); redirects are not followed (K10, C66);
timeouts are "maybe delivered" and retryable (K120).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

import pytest
from httptools import HttpParserError
from pyreqwest.exceptions import PyreqwestError

from broker.core.errors import DeliveryError
from broker.dataplane.dispatch.client import DeliveryClient
from broker.dataplane.dispatch.httpclient import Http1Client, ResponseTooLarge
from tests.support.subscriber import Received, RecordingSubscriber, Reply

EVENT_HEADERS = [("ce-specversion", "1.0"), ("ce-id", "1"), ("content-type", "text/plain")]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

Writer = asyncio.StreamWriter
Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1; ``handle`` runs once per accepted connection.

    Counts connections, requests (as read by :func:`read_request`) and connections that the
    client closed (``eofs``); :meth:`until` waits for a condition on those counts.
    """

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.url = ""
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []  # request heads, in arrival order
        self.bodies: list[bytes] = []
        self.eofs = 0
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def changed(self) -> None:
        self._changed.set()

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One whole request (its head, kept in ``requests``), or None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?im)^content-length: *(\d+)", head)
            body = await reader.readexactly(int(match.group(1)) if match else 0)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
            self.changed()
            return None
        self.requests.append(head)
        self.bodies.append(body)
        self.changed()
        return head

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        """Read (and drop) until the client closes the connection."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.eofs += 1
        self.changed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.changed()
        with contextlib.suppress(ConnectionError):
            await self.handle(self, reader, writer)


async def keep_alive(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
    """Answers every request on the connection with ``200 ok``, keeping it open."""
    while await server.read_request(reader) is not None:
        writer.write(OK)


def answer_once(response: bytes) -> Handler:
    """Answers the first request with ``response``, then waits for the client to close."""

    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        if await server.read_request(reader) is None:
            return
        writer.write(response)
        await server.wait_eof(reader)

    return handle


def answer_all(response: bytes) -> Handler:
    """Answers every request on the connection with ``response``, keeping it open."""

    async def handle(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        while await server.read_request(reader) is not None:
            writer.write(response)

    return handle


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client()
    yield http
    await http.close()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody"


# --- the exchange and connection reuse (K2) ---------------------------------------------------


async def test_sequential_requests_reuse_one_keep_alive_connection_k2(client: Http1Client) -> None:
    async with RawServer(keep_alive) as server:
        for _ in range(5):
            response = await client.post(server.url + "/", EVENT_HEADERS, b"{}", timeout=5)
            assert (response.status, response.body) == (200, b"ok")
            assert response.headers == [(b"content-length", b"2")]
    assert server.connections == 1
    assert len(server.requests) == 5


async def test_request_carries_host_content_length_and_the_given_headers_k2(
    client: Http1Client,
) -> None:
    async with RecordingSubscriber() as sub:
        response = await client.post(sub.url + "/hook", EVENT_HEADERS, b"hello", timeout=5)
    assert response.status == 202
    [request] = sub.received
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.body == b"hello"
    assert request.headers["host"] == sub.url.removeprefix("http://")
    assert request.headers["content-length"] == "5"
    assert request.headers["user-agent"] == "cemesh"
    assert request.headers["ce-id"] == "1"
    assert request.headers["content-type"] == "text/plain"


async def test_path_and_query_are_sent_as_written(client: Http1Client) -> None:
    async with RawServer(keep_alive) as server:
        await client.post(server.url + "/a b/c?x=1&y=%2F#frag", [], b"", timeout=5)
    [head] = server.requests
    # Only what cannot appear in a request line (the space) is percent-encoded.
    assert head.startswith(b"POST /a%20b/c?x=1&y=%2F HTTP/1.1\r\n")


async def test_url_without_path_posts_to_root(client: Http1Client) -> None:
    async with RawServer(keep_alive) as server:
        await client.post(server.url, [], b"", timeout=5)
    assert server.requests[0].startswith(b"POST / HTTP/1.1\r\n")


async def test_ipv6_literal_url_connects_and_sends_a_bracketed_host(client: Http1Client) -> None:
    async with RawServer(keep_alive) as server:
        # The IPv4-mapped IPv6 literal of 127.0.0.1: an IPv6 socket, still the loopback.
        url = f"http://[::ffff:127.0.0.1]:{server.port}/v6"
        response = await client.post(url, [], b"", timeout=5)
    assert response.status == 200
    assert f"\r\nhost: [::ffff:127.0.0.1]:{server.port}\r\n".encode() in server.requests[0]


async def test_userinfo_in_the_url_is_sent_as_basic_auth(client: Http1Client) -> None:
    async with RecordingSubscriber() as sub:
        url = sub.url.replace("http://", "http://us%40er:p%3Ass@") + "/"
        await client.post(url, [], b"", timeout=5)
    [request] = sub.received
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert "@" not in request.headers["host"]


async def test_framing_headers_of_the_caller_are_ignored(client: Http1Client) -> None:
    framing = [
        ("Host", "elsewhere"),
        ("content-length", "999"),
        ("transfer-encoding", "chunked"),
        ("connection", "close"),
    ]
    async with RawServer(keep_alive) as server:
        for _ in range(2):
            response = await client.post(server.url + "/", framing, b"body", timeout=5)
            assert response.status == 200
    head = server.requests[0].lower()
    assert head.count(b"\r\nhost: ") == 1
    assert f"\r\nhost: 127.0.0.1:{server.port}\r\n".encode() in head
    assert b"\r\ncontent-length: 4\r\n" in head
    assert b"transfer-encoding" not in head
    assert b"connection" not in head
    assert server.bodies == [b"body", b"body"]
    assert server.connections == 1


async def test_64_concurrent_requests_each_get_their_own_response(client: Http1Client) -> None:
    all_in = asyncio.Event()

    async def hold_until_all_arrived(request: Received) -> Reply:
        if len(sub.received) >= 64:
            all_in.set()
        await all_in.wait()  # 64 requests in flight at once, on 64 connections
        return (200, [], request.body)

    async with RecordingSubscriber(hold_until_all_arrived) as sub:
        responses = await asyncio.gather(
            *(client.post(sub.url + "/", [], b"%d" % i, timeout=10) for i in range(64))
        )
    assert [r.body for r in responses] == [b"%d" % i for i in range(64)]
    assert {r.status for r in responses} == {200}


async def test_one_mib_bodies_both_ways(client: Http1Client) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async with RecordingSubscriber(lambda request: (200, [], request.body)) as sub:
        response = await client.post(sub.url + "/", [], payload, timeout=10)
        again = await client.post(sub.url + "/", [], b"small", timeout=10)
    assert response.status == 200
    assert response.body == payload
    assert sub.received[0].body == payload
    assert again.body == b"small"


# --- response framing (K2) --------------------------------------------------------------------


async def test_chunked_response_is_read_whole_and_the_connection_reused(
    client: Http1Client,
) -> None:
    async def chunked(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()  # the rest comes in another segment
            writer.write(b"6\r\n world\r\n0\r\n\r\n")

    async with RawServer(chunked) as server:
        first = await client.post(server.url + "/", [], b"", timeout=5)
        second = await client.post(server.url + "/", [], b"", timeout=5)
    assert first.body == second.body == b"hello world"
    assert server.connections == 1


async def test_connection_close_response_is_read_and_the_connection_not_reused(
    client: Http1Client,
) -> None:
    close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    async with RawServer(answer_once(close)) as server:
        first = await client.post(server.url + "/", [], b"", timeout=5)
        second = await client.post(server.url + "/", [], b"", timeout=5)
        await server.until(lambda: server.eofs == 2)  # the client closed both
    assert first.body == second.body == b"ok"
    assert server.connections == 2


async def test_http_1_0_response_is_read_and_the_connection_not_reused(
    client: Http1Client,
) -> None:
    async with RawServer(answer_once(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")) as server:
        for _ in range(2):
            assert (await client.post(server.url + "/", [], b"", timeout=5)).body == b"ok"
        await server.until(lambda: server.eofs == 2)
    assert server.connections == 2


async def test_response_without_length_ends_with_the_connection(client: Http1Client) -> None:
    async def until_close(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")
        writer.close()

    async with RawServer(until_close) as server:
        response = await client.post(server.url + "/", [], b"", timeout=5)
        again = await client.post(server.url + "/", [], b"", timeout=5)
    assert response.body == again.body == b"until the end"
    assert server.connections == 2


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_bodiless_statuses_do_not_hang_and_keep_the_connection(
    client: Http1Client, status: bytes
) -> None:
    async with RawServer(answer_all(b"HTTP/1.1 " + status + b"\r\n\r\n")) as server:
        for _ in range(2):
            response = await client.post(server.url + "/", [], b"", timeout=5)
            assert (response.status, response.body) == (int(status[:3]), b"")
    assert server.connections == 1


async def test_interim_1xx_responses_are_skipped_k10(client: Http1Client) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone"
    )
    async with RawServer(answer_all(interim)) as server:
        response = await client.post(server.url + "/", [], b"", timeout=5)
        again = await client.post(server.url + "/", [], b"", timeout=5)
    assert (response.status, response.headers, response.body) == (
        201,
        [(b"content-length", b"4")],
        b"done",
    )
    assert again.status == 201
    assert server.connections == 1


async def test_switching_protocols_is_a_response_and_the_connection_is_closed_k3(
    client: Http1Client,
) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    )
    async with RawServer(answer_once(switch)) as server:
        response = await client.post(server.url + "/", [], b"", timeout=5)
        await server.until(lambda: server.eofs == 1)
    assert response.status == 101


async def test_redirect_is_returned_not_followed_k10_c66(client: Http1Client) -> None:
    async with RecordingSubscriber() as elsewhere:
        redirect = (302, [("location", elsewhere.url + "/")], b"moved")
        async with RecordingSubscriber(lambda _: redirect) as sub:
            response = await client.post(sub.url + "/", [], b"", timeout=5)
    assert response.status == 302
    assert (b"location", (elsewhere.url + "/").encode()) in response.headers
    assert response.body == b"moved"
    assert len(sub.received) == 1
    assert elsewhere.received == []


# --- connections closed by the server ---------------------------------------------------------


async def test_server_closing_an_idle_pooled_connection_does_not_fail_the_next_request(
    client: Http1Client,
) -> None:
    async def answer_then_close(
        server: RawServer, reader: asyncio.StreamReader, writer: Writer
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)  # keep-alive as far as the headers go
        writer.close()

    async with RawServer(answer_then_close) as server:
        for _ in range(3):
            assert (await client.post(server.url + "/", [], b"", timeout=5)).body == b"ok"
    assert server.connections == 3
    assert len(server.requests) == 3


async def test_reused_connection_closed_before_answering_is_retried_once_on_a_fresh_one(
    client: Http1Client,
) -> None:
    async def second_request_unanswered(
        server: RawServer, reader: asyncio.StreamReader, writer: Writer
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)  # the keep-alive race: closed without an answer
        writer.close()

    async with RawServer(second_request_unanswered) as server:
        first = await client.post(server.url + "/", [], b"1", timeout=5)
        second = await client.post(server.url + "/", [], b"2", timeout=5)
    assert first.body == second.body == b"ok"
    # At-least-once: the second request reached the server twice.
    assert server.bodies == [b"1", b"2", b"2"]
    assert server.connections == 2


async def test_fresh_connection_closed_before_answering_is_a_retryable_error(
    client: Http1Client,
) -> None:
    async def close_unanswered(
        server: RawServer, reader: asyncio.StreamReader, writer: Writer
    ) -> None:
        await server.read_request(reader)
        writer.close()

    async with RawServer(close_unanswered) as server:
        with pytest.raises(DeliveryError) as caught:
            await client.post(server.url + "/", [], b"", timeout=5)
    assert caught.value.retryable is True
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert len(server.requests) == 1  # not retried: a fresh connection has no race to lose


async def test_connection_closed_mid_response_is_a_retryable_error_not_retried(
    client: Http1Client,
) -> None:
    async def truncate_second(
        server: RawServer, reader: asyncio.StreamReader, writer: Writer
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        writer.close()

    async with RawServer(truncate_second) as server:
        await client.post(server.url + "/", [], b"", timeout=5)
        with pytest.raises(DeliveryError) as caught:
            await client.post(server.url + "/", [], b"", timeout=5)
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert len(server.requests) == 2


async def test_bytes_on_an_idle_connection_retire_it(client: Http1Client) -> None:
    async def then_408(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await server.wait_eof(reader)

    async with RawServer(then_408) as server:
        await client.post(server.url + "/", [], b"", timeout=5)
        await server.until(lambda: server.eofs == 1)  # the client dropped the connection
        response = await client.post(server.url + "/", [], b"", timeout=5)
    assert response.status == 200
    assert server.connections == 2


async def test_a_response_behind_the_response_retires_the_connection(
    client: Http1Client,
) -> None:
    # Even the start of one: left in the parser, it would be taken for the next answer.
    more = OK + b"HTTP/1.1 200 OK\r\ncontent-len"
    async with RawServer(answer_once(more)) as server:
        first = await client.post(server.url + "/", [], b"", timeout=5)
        await server.until(lambda: server.eofs == 1)
        second = await client.post(server.url + "/", [], b"", timeout=5)
    assert first.body == second.body == b"ok"
    assert server.connections == 2


# --- failures ---------------------------------------------------------------------------------


async def test_timeout_is_retryable_and_the_connection_is_not_reused_k120(
    client: Http1Client,
) -> None:
    async def first_unanswered(
        server: RawServer, reader: asyncio.StreamReader, writer: Writer
    ) -> None:
        if server.connections == 1:
            await server.read_request(reader)
            await server.wait_eof(reader)  # never answers
        else:
            await keep_alive(server, reader, writer)

    async with RawServer(first_unanswered) as server:
        with pytest.raises(DeliveryError) as caught:
            await client.post(server.url + "/", [], b"", timeout=0.2)
        await server.until(lambda: server.eofs == 1)  # the client closed it
        response = await client.post(server.url + "/", [], b"", timeout=5)
    assert caught.value.retryable is True
    assert caught.value.status is None
    assert "no response within 0.2s" in caught.value.message
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert response.status == 200
    assert server.connections == 2


async def test_connection_refused_is_retryable_without_status(client: Http1Client) -> None:
    with pytest.raises(DeliveryError) as caught:
        await client.post(refused_url(), [], b"", timeout=5)
    assert caught.value.status is None
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_invalid_response_is_a_retryable_error(client: Http1Client) -> None:
    async with RawServer(answer_once(b"NOT HTTP AT ALL\r\n\r\n")) as server:
        with pytest.raises(DeliveryError) as caught:
            await client.post(server.url + "/", [], b"", timeout=5)
        await server.until(lambda: server.eofs == 1)
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, HttpParserError)


async def test_response_over_the_limit_is_a_retryable_error() -> None:
    client = Http1Client(max_response_bytes=64 * 1024)
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n" + b"x" * 1048576
    try:
        async with RawServer(answer_all(big)) as server:
            with pytest.raises(DeliveryError) as caught:
                await client.post(server.url + "/", [], b"", timeout=5)
        async with RecordingSubscriber(lambda _: (200, [], b"y" * 60_000)) as sub:
            under = await client.post(sub.url + "/", [], b"", timeout=5)
    finally:
        await client.close()
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, ResponseTooLarge)
    assert len(under.body) == 60_000


@pytest.mark.parametrize(
    "header",
    [
        ("x-evil", "a\r\nx-injected: 1"),
        ("x-evil", "a\nb"),
        ("x-evil", "a\rb"),
        ("x-evil", "a\0b"),
        ("x-evil\r\nx-injected", "1"),
        ("x evil", "1"),
        ("x:evil", "1"),
        ("", "1"),
        ("x-euro", "\u20ac"),  # not latin-1
    ],
)
async def test_unsendable_header_is_a_terminal_error_and_nothing_is_sent(
    client: Http1Client, header: tuple[str, str]
) -> None:
    async with RawServer(keep_alive) as server:
        with pytest.raises(DeliveryError) as caught:
            await client.post(server.url + "/", [*EVENT_HEADERS, header], b"", timeout=5)
    assert caught.value.retryable is False
    assert server.connections == 0


async def test_latin_1_header_value_is_sent_as_latin_1(client: Http1Client) -> None:
    async with RawServer(keep_alive) as server:
        await client.post(server.url + "/", [("x-name", "caf\u00e9")], b"", timeout=5)
    assert b"\r\nx-name: caf\xe9\r\n" in server.requests[0]


@pytest.mark.parametrize(
    "url",
    ["http:///no-host", "http://127.0.0.1:99999/", "/relative", "ftp://127.0.0.1/"],
)
async def test_url_that_cannot_be_requested_is_a_terminal_error(
    client: Http1Client, url: str
) -> None:
    with pytest.raises(DeliveryError) as caught:
        await client.post(url, [], b"", timeout=5)
    assert caught.value.retryable is False


async def test_cancelled_request_closes_its_connection(client: Http1Client) -> None:
    async def unanswered(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        await server.read_request(reader)
        await server.wait_eof(reader)

    async with RawServer(unanswered) as server:
        request = asyncio.create_task(client.post(server.url + "/", [], b"", timeout=30))
        await server.until(lambda: len(server.requests) == 1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await server.until(lambda: server.eofs == 1)


async def test_closed_client_fails_retryable(client: Http1Client) -> None:
    async with RawServer(keep_alive) as server:
        await client.post(server.url + "/", [], b"", timeout=5)
        await client.close()
        await server.until(lambda: server.eofs == 1)  # the pooled connection was closed
        with pytest.raises(DeliveryError) as caught:
            await client.post(server.url + "/", [], b"", timeout=5)
    assert caught.value.retryable is True
    await client.close()  # idempotent


# --- the pool ---------------------------------------------------------------------------------


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    client = Http1Client(pool_idle_timeout=0.1)
    try:
        async with RawServer(keep_alive) as server:
            await client.post(server.url + "/", [], b"", timeout=5)
            await server.until(lambda: server.eofs == 1)
            await client.post(server.url + "/", [], b"", timeout=5)
    finally:
        await client.close()
    assert server.connections == 2


async def test_idle_connections_per_origin_are_capped() -> None:
    client = Http1Client(max_idle_per_origin=2)
    all_in = asyncio.Event()

    async def hold(server: RawServer, reader: asyncio.StreamReader, writer: Writer) -> None:
        while await server.read_request(reader) is not None:
            if len(server.requests) == 4:
                all_in.set()
            await all_in.wait()
            writer.write(OK)

    try:
        async with RawServer(hold) as server:
            await asyncio.gather(
                *(client.post(server.url + "/", [], b"", timeout=5) for _ in range(4))
            )
            await server.until(lambda: server.eofs == 2)  # two kept, two closed
            for _ in range(4):
                await client.post(server.url + "/", [], b"", timeout=5)
    finally:
        await client.close()
    assert server.connections == 4


# --- routing ----------------------------------------------------------------------------------


async def test_delivery_client_sends_http_on_the_loop_and_https_through_reqwest() -> None:
    client = DeliveryClient()
    try:
        async with RecordingSubscriber() as sub:
            response = await client.post(sub.url + "/", EVENT_HEADERS, b"x", timeout=5)
            upper = await client.post(
                sub.url.replace("http://", "HTTP://") + "/", EVENT_HEADERS, b"x", timeout=5
            )
        with pytest.raises(DeliveryError) as plain:
            await client.post(refused_url(), [], b"", timeout=5)
        with pytest.raises(DeliveryError) as tls:
            await client.post("https://127.0.0.1:1/", [], b"", timeout=5)
    finally:
        await client.close()
    assert response.status == upper.status == 202
    assert len(sub.received) == 2
    assert isinstance(plain.value.__cause__, ConnectionRefusedError)  # Http1Client's mapping
    assert isinstance(tls.value.__cause__, PyreqwestError)  # ReqwestClient's mapping
    assert tls.value.status is None
    assert tls.value.retryable is True
