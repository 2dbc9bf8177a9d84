"""No half events, and no request that hangs forever (issue 11, item 2).

A real ``cemesh serve`` child with short read deadlines, a Broker, and an *ordered* Trigger to a
recording subscriber. Raw sockets send requests that never complete: cut off mid-body, a
``Content-Length`` longer than what arrives, a chunked body without its last chunk, headers or a
body trickled a byte at a time. Every half request carries a valid binary-mode event (any prefix
of a ``text/plain`` body is valid data) with the same ``partitionkey`` as a complete sentinel
event sent afterwards, so had any of them been published it would be delivered before the
sentinel: the subscriber seeing the sentinel alone proves nothing else was published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.process import CemeshProcess, cemesh_process
from tests.support.subscriber import RecordingSubscriber

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
# A deadline is enforced by a half-second sweep; the bound below is generous on a loaded machine.
CLOSE_BOUND = 10.0
KEY = "one-key"


@dataclass
class Mesh:
    process: CemeshProcess
    subscriber: RecordingSubscriber
    host: str
    port: int


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with (
        RecordingSubscriber() as subscriber,
        cemesh_process(
            tmp_path, header_timeout=str(HEADER_TIMEOUT), body_timeout=str(BODY_TIMEOUT)
        ) as process,
        process.client() as client,
    ):
        broker = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "default"},
        }
        trigger = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {
                "name": "all",
                "annotations": {"kafka.eventing.knative.dev/delivery.order": "ordered"},
            },
            "spec": {"broker": "default", "subscriber": {"uri": subscriber.url}},
        }
        for path, obj in (
            ("/apis/eventing.knative.dev/v1/namespaces/default/brokers", broker),
            ("/apis/eventing.knative.dev/v1/namespaces/default/triggers", trigger),
        ):
            response = await client.post(path, json=obj)
            assert response.status_code == 201, response.text
        yield Mesh(process, subscriber, "127.0.0.1", process.port)


def _head(event_id: str, framing: str, path: str = "/default/default") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: cemesh\r\n"
        "ce-specversion: 1.0\r\n"
        f"ce-id: {event_id}\r\nce-source: /half\r\nce-type: half\r\nce-partitionkey: {KEY}\r\n"
        f"content-type: text/plain\r\n{framing}\r\n\r\n"
    ).encode()


async def _connect(mesh: Mesh) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(mesh.host, mesh.port)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    async with asyncio.timeout(CLOSE_BOUND):
        return await reader.read()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _only_the_sentinel_arrives(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.process.url) as client:
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "sentinel",
            "ce-source": "/whole",
            "ce-type": "whole",
            "ce-partitionkey": KEY,
        }
        response = await client.post("/default/default", headers=headers, content=b"all here")
        assert response.status_code == 202, response.text
    received = await mesh.subscriber.wait_for(1)
    ids = [r.event.id if r.event else None for r in received]
    assert ids == ["sentinel"], ids  # ordered by key: a published half event came first
    metrics = (await httpx.AsyncClient().get(f"{mesh.process.url}/metrics")).text
    assert "Traceback" not in mesh.process.log()
    assert "cemesh_ingress_incomplete_requests_total" in metrics


async def test_a_client_that_disconnects_mid_body_publishes_nothing(mesh: Mesh) -> None:
    _reader, writer = await _connect(mesh)
    writer.write(_head("cut", "content-length: 1000") + b"x" * 500)
    await writer.drain()
    await asyncio.sleep(0.2)  # let the server read the first half before the connection goes
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)


async def test_a_content_length_longer_than_the_body_publishes_nothing(mesh: Mesh) -> None:
    # The client waits for an answer (half-closed): it gets none, and the connection closes.
    reader, writer = await _connect(mesh)
    writer.write(_head("short", "content-length: 1000") + b"x" * 500)
    writer.write_eof()
    answer = await _until_closed(reader)
    assert not answer.startswith(b"HTTP/1.1 202"), answer
    await _close(writer)
    # The same, but the client keeps the connection open: the body deadline ends it with 408.
    reader, writer = await _connect(mesh)
    started = time.monotonic()
    writer.write(_head("short-open", "content-length: 1000") + b"x" * 500)
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started >= BODY_TIMEOUT - 0.1
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)


async def test_a_chunked_body_cut_off_publishes_nothing(mesh: Mesh) -> None:
    reader, writer = await _connect(mesh)
    chunk = b"y" * 256
    writer.write(_head("chunked", "transfer-encoding: chunked"))
    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3)  # no terminating 0-size chunk
    await writer.drain()
    await asyncio.sleep(0.2)
    await _close(writer)
    # And one that stops sending but stays connected: 408 at the body deadline.
    reader, writer = await _connect(mesh)
    writer.write(_head("chunked-open", "transfer-encoding: chunked"))
    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)


async def _trickle(
    writer: asyncio.StreamWriter, data: bytes, reader: asyncio.StreamReader
) -> bytes:
    """Send ``data`` a byte every 0.2 s until the server answers or closes; what it said."""
    answer = b""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer += await asyncio.wait_for(reader.read(4096), 0.2)
            if answer or reader.at_eof():
                break  # sending on would only meet a reset
        answer += await _until_closed(reader)
    return answer


async def test_slowloris_headers_get_408_and_are_closed_at_the_header_deadline(
    mesh: Mesh,
) -> None:
    reader, writer = await _connect(mesh)
    started = time.monotonic()
    answer = await _trickle(writer, _head("slow-head", "content-length: 4") + b"data", reader)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"headers" in answer
    assert HEADER_TIMEOUT - 0.1 <= elapsed < CLOSE_BOUND
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)


async def test_slowloris_body_gets_408_and_is_closed_at_the_body_deadline(mesh: Mesh) -> None:
    reader, writer = await _connect(mesh)
    writer.write(_head("slow-body", "content-length: 200"))
    await writer.drain()
    started = time.monotonic()
    answer = await _trickle(writer, b"z" * 200, reader)
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"body" in answer
    assert BODY_TIMEOUT - 0.1 <= elapsed < CLOSE_BOUND
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)


async def test_a_connection_that_sends_nothing_is_closed(mesh: Mesh) -> None:
    reader, writer = await _connect(mesh)
    answer = await _until_closed(reader)
    assert answer == b""  # no request began: nothing to answer, just closed
    await _close(writer)


async def test_a_component_route_cut_off_mid_body_is_not_an_error(mesh: Mesh) -> None:
    # The function invoker's route reads its body with the same reader: a cut-off request ends
    # quietly (no traceback, no 500), and the server goes on answering.
    _reader, writer = await _connect(mesh)
    writer.write(_head("svc", "content-length: 1000", path="/services/default/fn") + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(0.2)
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)


async def test_a_resource_cut_off_mid_body_is_not_stored_and_not_an_error(mesh: Mesh) -> None:
    _reader, writer = await _connect(mesh)
    path = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
    body = b'{"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "h"}}'
    writer.write(
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {mesh.process.token}\r\n"
        f"content-length: {len(body) + 10}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    await _close(writer)
    async with mesh.process.client() as client:
        assert (await client.get(f"{path}/h")).status_code == 404
    await _only_the_sentinel_arrives(mesh)


async def test_requests_beyond_max_connections_get_503(tmp_path: Path) -> None:
    async with cemesh_process(tmp_path, max_connections="3") as process:
        idle = [await asyncio.open_connection("127.0.0.1", process.port) for _ in range(2)]
        async with httpx.AsyncClient(base_url=process.url) as client:
            # Two idle connections and this request's own: the limit is reached.
            assert (await client.get("/healthz")).status_code == 503
        for _reader, writer in idle:
            await _close(writer)
        async with asyncio.timeout(CLOSE_BOUND):
            while True:  # the server notices the closed connections shortly
                async with httpx.AsyncClient(base_url=process.url) as client:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)


async def test_headers_beyond_max_header_bytes_get_431_and_nothing_is_published(
    mesh: Mesh,
) -> None:
    reader, writer = await _connect(mesh)
    head = _head("huge-head", "content-length: 4")
    request = head[:-2] + b"ce-big: " + b"h" * (1024 * 1024) + b"\r\n\r\ndata"
    answer = b""
    # 32 KiB at a time, listening in between: the server answers and closes after the default
    # 64 KiB, and the client stops sending (so the close is not a reset that eats the answer).
    for start in range(0, len(request), 32 * 1024):
        writer.write(request[start : start + 32 * 1024])
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            answer += await asyncio.wait_for(reader.read(4096), 0.2)
        if answer:
            break
    answer += await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    await _close(writer)
    await _only_the_sentinel_arrives(mesh)
