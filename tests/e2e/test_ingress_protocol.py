"""Ingress POSTs answered in the server's read callback answer exactly as the ASGI path does.

Two real ``cemesh serve`` children, one with ``CEMESH_INSTANT_INGRESS`` on and one (the default)
with it off, each with a Broker and a Trigger to a recording subscriber. Raw sockets send the
same bytes to both (single requests, pipelined requests, a body split over two writes,
``Connection: close``, HTTP/1.0, a batch); the answers must be the same bytes (the ``date`` header
aside) and every accepted event must reach the subscriber once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httptools
import orjson
import pytest

from tests.support.process import CemeshProcess, cemesh_process
from tests.support.subscriber import RecordingSubscriber

_DATE = re.compile(rb"\r\ndate: [^\r]*")


@dataclass
class Mesh:
    process: CemeshProcess
    subscriber: RecordingSubscriber


@contextlib.asynccontextmanager
async def _mesh(tmp_path: Path, instant: str) -> AsyncIterator[Mesh]:
    async with (
        RecordingSubscriber() as subscriber,
        cemesh_process(tmp_path, instant_ingress=instant) as process,
        process.client() as client,
    ):
        for path, obj in (
            (
                "/apis/eventing.knative.dev/v1/namespaces/default/brokers",
                {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "metadata": {"name": "default"},
                },
            ),
            (
                "/apis/eventing.knative.dev/v1/namespaces/default/triggers",
                {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Trigger",
                    "metadata": {"name": "all"},
                    "spec": {"broker": "default", "subscriber": {"uri": subscriber.url}},
                },
            ),
        ):
            response = await client.post(path, json=obj)
            assert response.status_code == 201, response.text
        mesh = Mesh(process, subscriber)
        # Live once a probe reaches the subscriber (the controller applies the Trigger async).
        for _ in range(200):
            answers = await _exchange(mesh, [_binary("probe")], 1)
            if b" 202 " in answers[0] and subscriber.received:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the Trigger never delivered a probe")
        subscriber.received.clear()
        yield mesh


@pytest.fixture
async def instant(tmp_path: Path) -> AsyncIterator[Mesh]:
    (tmp_path / "on").mkdir()
    async with _mesh(tmp_path / "on", "true") as mesh:
        yield mesh


@pytest.fixture
async def asgi(tmp_path: Path) -> AsyncIterator[Mesh]:
    (tmp_path / "off").mkdir()
    async with _mesh(tmp_path / "off", "false") as mesh:
        yield mesh


def _binary(event_id: str, *, extra: str = "", version: str = "1.1", data: bytes = b"{}") -> bytes:
    return (
        f"POST /default/default HTTP/{version}\r\nhost: cemesh\r\nce-specversion: 1.0\r\n"
        f"ce-id: {event_id}\r\nce-source: /instant\r\nce-type: instant\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def _batch(ids: list[str], types: tuple[str, ...] = ("instant",)) -> bytes:
    body = orjson.dumps(
        [
            {"specversion": "1.0", "id": i, "source": "/instant", "type": types[n % len(types)]}
            for n, i in enumerate(ids)
        ]
    )
    return (
        "POST /default/default HTTP/1.1\r\nhost: cemesh\r\n"
        "content-type: application/cloudevents-batch+json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class _Responses:
    """Splits a byte stream into whole HTTP responses (httptools)."""

    def __init__(self) -> None:
        self.complete = 0
        self._parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.complete += 1

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


async def _exchange(
    mesh: Mesh, writes: list[bytes], answers: int, *, pause: float = 0.0
) -> list[bytes]:
    """Send ``writes`` on one connection (``pause`` seconds apart) and read ``answers``
    responses (or until the server closes); each response's bytes, the date header removed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.process.port)
    try:
        for i, chunk in enumerate(writes):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()
        responses, received = _Responses(), b""
        async with asyncio.timeout(20):
            while responses.complete < answers:
                data = await reader.read(65536)
                if not data:
                    break
                received += data
                responses.feed(data)
    finally:
        writer.close()
    parts = re.split(rb"(?=HTTP/1\.1 )", _DATE.sub(b"", received))
    return [part for part in parts if part]


async def _same(
    instant: Mesh, asgi: Mesh, writes: list[bytes], answers: int, **kw: float
) -> list[bytes]:
    got = await _exchange(instant, writes, answers, **kw)
    expected = await _exchange(asgi, writes, answers, **kw)
    assert got == expected
    assert len(got) == answers
    return got


def _late_probes(mesh: Mesh) -> int:
    return sum(r.headers.get("ce-id", "").startswith("probe") for r in mesh.subscriber.received)


async def _delivered_ids(mesh: Mesh, count: int) -> list[str]:
    await mesh.subscriber.wait_for(count + _late_probes(mesh))
    await asyncio.sleep(0.2)  # a duplicate would come now
    ids = (r.headers.get("ce-id", "") for r in mesh.subscriber.received)
    return sorted(i for i in ids if not i.startswith("probe"))  # a late probe of the fixture


async def test_whole_requests_answered_in_the_read_callback_match_the_asgi_answers(
    instant: Mesh, asgi: Mesh
) -> None:
    answers = await _same(instant, asgi, [_binary("a1")], 1)
    assert answers[0].startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert b"\r\nallow: POST, OPTIONS\r\ncontent-length: 0\r\n\r\n" in answers[0]
    for mesh in (instant, asgi):
        assert await _delivered_ids(mesh, 1) == ["a1"]


async def test_pipelined_requests_are_answered_in_order_with_refusals_in_between(
    instant: Mesh, asgi: Mesh
) -> None:
    bad = _binary("b2").replace(b"ce-specversion: 1.0", b"ce-specversion: 9.9")
    answers = await _same(instant, asgi, [_binary("b1") + bad + _binary("b3")], 3)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [
        b"HTTP/1.1 202 Accepted",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 202 Accepted",
    ]
    for mesh in (instant, asgi):
        assert await _delivered_ids(mesh, 2) == ["b1", "b3"]


async def test_a_body_split_over_two_writes_is_still_accepted_once(
    instant: Mesh, asgi: Mesh
) -> None:
    request = _binary("c1", data=b'{"half": "one", "other": "half"}')
    await _same(instant, asgi, [request[:-10], request[-10:]], 1, pause=0.2)
    for mesh in (instant, asgi):
        assert await _delivered_ids(mesh, 1) == ["c1"]


async def test_connection_close_and_http_1_0_are_answered_and_closed(
    instant: Mesh, asgi: Mesh
) -> None:
    closing = await _same(instant, asgi, [_binary("d1", extra="connection: close\r\n")], 1)
    assert b"\r\nconnection: close\r\n" in closing[0]
    old = await _same(instant, asgi, [_binary("d2", version="1.0")], 1)
    assert old[0].startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert b"\r\nconnection: close\r\n" in old[0]
    for mesh in (instant, asgi):
        assert await _delivered_ids(mesh, 2) == ["d1", "d2"]


async def test_a_batch_is_accepted_whole_each_event_delivered_and_counted_once(
    instant: Mesh, asgi: Mesh
) -> None:
    ids = [f"e{i}" for i in range(5)]
    answers = await _same(instant, asgi, [_batch(ids, ("odd.one", "even.one"))], 1)
    assert answers[0].startswith(b"HTTP/1.1 202 Accepted\r\n")
    for mesh in (instant, asgi):
        assert await _delivered_ids(mesh, 5) == ids
        async with mesh.process.client() as client:
            text = (await client.get("/metrics")).text
        counts = {
            event_type: _sample(text, "cemesh_broker_ingress_event_count_total", event_type)
            for event_type in ("odd.one", "even.one")
        }
        assert counts == {"odd.one": 3.0, "even.one": 2.0}


def _sample(text: str, family: str, event_type: str) -> float:
    """The value of ``family``'s sample with ``event_type`` (and code 202) in ``text``."""
    for line in text.splitlines():
        if (
            line.startswith(family + "{")
            and f'event_type="{event_type}"' in line
            and 'response_code="202"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {family} sample for {event_type!r} in:\n{text}")


async def test_expect_100_continue_is_answered_as_the_asgi_path_answers_it(
    instant: Mesh, asgi: Mesh
) -> None:
    answers = await _same(instant, asgi, [_binary("f1", extra="expect: 100-continue\r\n")], 2)
    assert answers[0].startswith(b"HTTP/1.1 100 Continue\r\n")
    assert answers[1].startswith(b"HTTP/1.1 202 Accepted\r\n")
    for mesh in (instant, asgi):
        assert await _delivered_ids(mesh, 1) == ["f1"]
