"""cemesh under granian (``CEMESH_HTTP_SERVER=granian``) answers as it does under uvicorn.

Two real ``cemesh serve`` children, one under granian and one under uvicorn (the default), each
with a Broker and a Trigger to a recording subscriber. Raw sockets send the same bytes to both
(single requests, pipelined requests with a refusal between them, a body split over two writes,
``Connection: close``, HTTP/1.0, a batch, ``Expect: 100-continue``); the answers must have the
same status, headers (``date`` and ``server`` aside) and body, and every accepted event must reach
the subscriber once. Then what granian must refuse or do by itself: TLS settings are refused at
startup, headers beyond granian's buffer get 431, SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import orjson
import pytest

from tests.durability.test_crash import apply, broker_and_trigger
from tests.support.process import CEMESH, CemeshProcess, cemesh_process
from tests.support.subscriber import RecordingSubscriber

# Headers each server sets its own way: when, and who answered.
_SERVER_OWN = {b"date", b"server"}


@dataclass
class Mesh:
    process: CemeshProcess
    subscriber: RecordingSubscriber


@contextlib.asynccontextmanager
async def _mesh(tmp_path: Path, http_server: str) -> AsyncIterator[Mesh]:
    async with (
        RecordingSubscriber() as subscriber,
        cemesh_process(tmp_path, http_server=http_server) as process,
        process.client() as client,
    ):
        await apply(client, broker_and_trigger(subscriber.url))
        mesh = Mesh(process, subscriber)
        # Live once a probe reaches the subscriber (the controller applies the Trigger async).
        for _ in range(200):
            answers = await _exchange(mesh, [_binary("probe")], 1)
            if answers and answers[0].status == 202 and subscriber.received:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the Trigger never delivered a probe")
        subscriber.received.clear()
        yield mesh


@pytest.fixture
async def granian(tmp_path: Path) -> AsyncIterator[Mesh]:
    (tmp_path / "granian").mkdir()
    async with _mesh(tmp_path / "granian", "granian") as mesh:
        yield mesh


@pytest.fixture
async def uvicorn(tmp_path: Path) -> AsyncIterator[Mesh]:
    (tmp_path / "uvicorn").mkdir()
    async with _mesh(tmp_path / "uvicorn", "uvicorn") as mesh:
        yield mesh


def _binary(event_id: str, *, extra: str = "", version: str = "1.1", data: bytes = b"{}") -> bytes:
    return (
        f"POST /default/default HTTP/{version}\r\nhost: cemesh\r\nce-specversion: 1.0\r\n"
        f"ce-id: {event_id}\r\nce-source: /granian\r\nce-type: granian\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def _batch(ids: list[str], types: tuple[str, ...] = ("granian",)) -> bytes:
    body = orjson.dumps(
        [
            {"specversion": "1.0", "id": i, "source": "/granian", "type": types[n % len(types)]}
            for n, i in enumerate(ids)
        ]
    )
    return (
        "POST /default/default HTTP/1.1\r\nhost: cemesh\r\n"
        "content-type: application/cloudevents-batch+json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Answer:
    """One HTTP response: status, headers (the servers' own aside, names lowercased), body."""

    status: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""


class _Responses:
    """Splits a byte stream into parsed HTTP responses (httptools)."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.complete = 0
        self._parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.answers.append(Answer(0))

    def on_status(self, _status: bytes) -> None:
        self.answers[-1].status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in _SERVER_OWN:
            self.answers[-1].headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.complete += 1

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


async def _exchange(
    mesh: Mesh, writes: list[bytes], answers: int, *, pause: float = 0.0
) -> list[Answer]:
    """Send ``writes`` on one connection (``pause`` seconds apart) and read ``answers``
    responses (or until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.process.port)
    responses = _Responses()
    try:
        for i, chunk in enumerate(writes):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()
        async with asyncio.timeout(20):
            while responses.complete < answers:
                data = await reader.read(65536)
                if not data:
                    break
                responses.feed(data)
    finally:
        writer.close()
    return responses.answers


async def _same(
    granian: Mesh, uvicorn: Mesh, writes: list[bytes], answers: int, **kw: float
) -> list[Answer]:
    got = await _exchange(granian, writes, answers, **kw)
    expected = await _exchange(uvicorn, writes, answers, **kw)
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


async def test_an_event_is_answered_as_uvicorn_answers_it_and_delivered_once(
    granian: Mesh, uvicorn: Mesh
) -> None:
    answers = await _same(granian, uvicorn, [_binary("a1")], 1)
    assert answers[0].status == 202
    assert answers[0].headers[b"allow"] == b"POST, OPTIONS"
    for mesh in (granian, uvicorn):
        assert await _delivered_ids(mesh, 1) == ["a1"]


async def test_pipelined_requests_are_answered_in_order_with_refusals_in_between(
    granian: Mesh, uvicorn: Mesh
) -> None:
    bad = _binary("b2").replace(b"ce-specversion: 1.0", b"ce-specversion: 9.9")
    answers = await _same(granian, uvicorn, [_binary("b1") + bad + _binary("b3")], 3)
    assert [a.status for a in answers] == [202, 400, 202]
    assert b"specversion" in answers[1].body
    for mesh in (granian, uvicorn):
        assert await _delivered_ids(mesh, 2) == ["b1", "b3"]


async def test_a_body_split_over_two_writes_is_still_accepted_once(
    granian: Mesh, uvicorn: Mesh
) -> None:
    request = _binary("c1", data=b'{"half": "one", "other": "half"}')
    await _same(granian, uvicorn, [request[:-10], request[-10:]], 1, pause=0.2)
    for mesh in (granian, uvicorn):
        assert await _delivered_ids(mesh, 1) == ["c1"]


async def test_connection_close_and_http_1_0_are_answered_and_closed(
    granian: Mesh, uvicorn: Mesh
) -> None:
    closing = await _same(granian, uvicorn, [_binary("d1", extra="connection: close\r\n")], 1)
    assert closing[0].headers.get(b"connection") == b"close"
    # HTTP/1.0 closes after the answer unless asked otherwise: uvicorn says so in a header,
    # granian (hyper) just closes. Both must answer 202 and close.
    for mesh in (granian, uvicorn):
        old = await _exchange(mesh, [_binary("d2", version="1.0")], 2)
        assert [a.status for a in old] == [202]
    for mesh in (granian, uvicorn):
        assert await _delivered_ids(mesh, 2) == ["d1", "d2"]


async def test_a_batch_is_accepted_whole_each_event_delivered_and_counted_once(
    granian: Mesh, uvicorn: Mesh
) -> None:
    ids = [f"e{i}" for i in range(5)]
    answers = await _same(granian, uvicorn, [_batch(ids, ("odd.one", "even.one"))], 1)
    assert answers[0].status == 202
    for mesh in (granian, uvicorn):
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


async def test_expect_100_continue_is_answered_as_uvicorn_answers_it(
    granian: Mesh, uvicorn: Mesh
) -> None:
    answers = await _same(granian, uvicorn, [_binary("f1", extra="expect: 100-continue\r\n")], 2)
    assert [a.status for a in answers] == [100, 202]
    for mesh in (granian, uvicorn):
        assert await _delivered_ids(mesh, 1) == ["f1"]


def test_tls_settings_with_granian_are_refused_at_startup_naming_the_setting(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "CEMESH_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}",
        "CEMESH_HTTP_SERVER": "granian",
        "CEMESH_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
        "CEMESH_TLS_KEY_FILE": str(tmp_path / "key.pem"),
    }
    done = subprocess.run(
        [str(CEMESH), "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "granian serves plain HTTP only" in done.stdout + done.stderr


async def test_headers_larger_than_granians_buffer_get_431(granian: Mesh) -> None:
    huge = "x" * 600_000  # granian's HTTP/1 buffer is ~400 KiB
    answers = await _exchange(granian, [_binary("g1", extra=f"x-padding: {huge}\r\n")], 1)
    assert answers and answers[0].status == 431


async def test_sigterm_stops_cemesh_under_granian_with_exit_status_0(tmp_path: Path) -> None:
    async with cemesh_process(tmp_path, http_server="granian") as process:
        assert await process.stop(signal.SIGTERM) == 0
        assert "Traceback" not in process.log()


async def test_the_live_event_stream_is_streamed_line_by_line_under_granian(granian: Mesh) -> None:
    path = "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default/events"
    async with (
        granian.process.client(timeout=20) as client,
        client.stream("GET", path) as stream,
        asyncio.timeout(20),
    ):
        assert stream.status_code == 200
        lines = stream.aiter_lines()
        assert "watching" in orjson.loads(await anext(lines))
        answers = await _exchange(granian, [_binary("s1")], 1)
        assert answers[0].status == 202
        async for line in lines:
            if line.strip():
                assert orjson.loads(line)["event"]["id"] == "s1"
                break
