"""The ingress under random and broken CloudEvents: never a 5xx, and what it accepts arrives whole.

Random events in every content mode (binary, structured, batched; random data, deep data,
random content types and extensions) and random garbage (headers, content types, bodies) are
posted to a Broker of a real cemesh whose Trigger delivers to a real HTTP subscriber. Every
answer is a 202 or a 4xx (503 only when the bus refuses: the in-memory bus never does); every
event answered 202 is delivered, with ``data`` byte-identical in binary mode and for
``data_base64``, the same JSON value for JSON ``data``, and the exact bytes for JSON ``data``
nested deeper than orjson writes.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests.support.cemesh_thread import cemesh_in_thread

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ALLOWED = {202, 400, 404, 405, 413}
WAIT = 15.0  # seconds for an accepted event to arrive (generous: the machine is shared)


class Inbox:
    """What the subscriber received, by event id."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[dict[str, str], bytes]] = {}
        self.arrived = threading.Condition()

    def put(self, headers: dict[str, str], body: bytes) -> None:
        with self.arrived:
            self.events[headers.get("ce-id", "")] = (headers, body)
            self.arrived.notify_all()

    def wait(self, event_id: str) -> tuple[dict[str, str], bytes]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: event_id in self.events, WAIT):
                raise AssertionError(f"accepted event {event_id!r} never arrived")
            return self.events.pop(event_id)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Inbox]]:
    inbox = Inbox()

    class Subscriber(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            inbox.put({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Subscriber)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with (
            cemesh_in_thread(tmp_path_factory.mktemp("ingress")) as cemesh,
            httpx.Client(base_url=cemesh.url, timeout=30) as client,
        ):
            base = "/apis/eventing.knative.dev/v1/namespaces/default"
            admin = {"Authorization": f"Bearer {cemesh.token}"}  # events go without it
            created = client.post(
                f"{base}/brokers", json={"metadata": {"name": "fuzz"}}, headers=admin
            )
            assert created.status_code == 201, created.text
            trigger = {
                "metadata": {"name": "all"},
                "spec": {
                    "broker": "fuzz",
                    "subscriber": {"uri": f"http://127.0.0.1:{server.server_port}/"},
                    "delivery": {"retry": 3, "backoffDelay": "PT0.05S"},
                },
            }
            created = client.post(f"{base}/triggers", json=trigger, headers=admin)
            assert created.status_code == 201, created.text
            yield client, inbox
    finally:
        server.shutdown()


def _answered(response: httpx.Response) -> int:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300])
    if response.status_code != 202:
        assert "Traceback" not in response.text
        assert response.json()["message"]
    return response.status_code


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
DEPTHS = st.integers(min_value=250, max_value=1000)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/octet-stream",
        "application/vnd.example+json; charset=utf-8",
        "text/xml",
        "",
        "application/json; charset=utf-8",
        "multipart/x-\u00e9",
    ]
)
EXTENSIONS = st.dictionaries(
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True).filter(
        lambda n: (
            n not in {"specversion", "id", "source", "type", "data", "time", "subject"}
            and not n.startswith("knative")
            and n not in {"datacontenttype", "dataschema", "partitionkey"}
        )
    ),
    # HTTP header values: printable ASCII without surrounding spaces (clients refuse those).
    st.from_regex(r"[!-~]([ -~]{0,18}[!-~])?", fullmatch=True),
    max_size=3,
)


def _attributes(extensions: dict[str, str]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/fuzz",
        "type": "dev.example.fuzz",
        **extensions,
    }


@BOUNDED
@given(data=st.binary(max_size=2048), content_type=CONTENT_TYPES, extensions=EXTENSIONS)
def test_binary_events_accepted_arrive_byte_identical(mesh, data, content_type, extensions):
    client, inbox = mesh
    attributes = _attributes(extensions)
    headers = [(f"ce-{name}".encode(), value.encode()) for name, value in attributes.items()]
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    if _answered(client.post("/default/fuzz", headers=headers, content=data)) == 202:
        _, body = inbox.wait(attributes["id"])
        assert body == data


@st.composite
def structured_events(draw: st.DrawFn) -> tuple[dict[str, Any], str, Any]:
    """(event document, how its data must arrive, the expected data)."""
    document = _attributes(draw(EXTENSIONS))
    how = draw(st.sampled_from(["json", "deep", "base64", "text", "none"]))
    if how == "json":
        document["datacontenttype"] = "application/json"
        document["data"] = draw(JSON_VALUES)
    elif how == "deep":
        depth = draw(DEPTHS)
        raw = ("[" * depth + '{"a": 1}' + "]" * depth).encode()
        document["datacontenttype"] = "application/json"
        document["data"] = orjson.Fragment(raw)
        return document, how, raw
    elif how == "base64":
        document["data_base64"] = draw(st.binary(max_size=512))
    elif how == "text":
        document["datacontenttype"] = "text/plain"
        document["data"] = draw(st.text(max_size=200))
    return document, how, document.get("data", document.get("data_base64"))


def _encode(documents: Any) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, bytes):
            import base64

            return base64.b64encode(value).decode()
        raise TypeError

    return orjson.dumps(documents, default=default)


def _check_delivered(inbox: Inbox, document: dict[str, Any], how: str, expected: Any) -> None:
    _, body = inbox.wait(document["id"])
    if how == "json":
        assert orjson.loads(body) == orjson.loads(orjson.dumps(expected))
    elif how == "deep":
        try:  # the same JSON value, written compactly, as for any JSON data
            compact = orjson.dumps(orjson.loads(expected))
        except orjson.JSONEncodeError:  # deeper than orjson writes: carried as the exact bytes
            compact = expected
        assert body == compact
    elif how == "base64":
        assert body == expected
    elif how == "text":
        assert body == expected.encode()
    else:
        assert body == b""


@BOUNDED
@given(event=structured_events())
def test_structured_events_accepted_arrive_with_their_data(mesh, event):
    client, inbox = mesh
    document, how, expected = event
    headers = {"content-type": "application/cloudevents+json"}
    if _answered(client.post("/default/fuzz", headers=headers, content=_encode(document))) == 202:
        _check_delivered(inbox, document, how, expected)


@BOUNDED
@given(events=st.lists(structured_events(), min_size=1, max_size=3))
def test_batched_events_accepted_all_arrive_with_their_data(mesh, events):
    client, inbox = mesh
    headers = {"content-type": "application/cloudevents-batch+json"}
    body = _encode([document for document, _, _ in events])
    if _answered(client.post("/default/fuzz", headers=headers, content=body)) == 202:
        for document, how, expected in events:
            _check_delivered(inbox, document, how, expected)


HEADER_NAMES = st.one_of(
    st.sampled_from(["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "content-type"]),
    st.from_regex(r"ce-[A-Za-z0-9_.-]{0,20}", fullmatch=True),
)
HEADER_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
BODIES = st.one_of(
    st.binary(max_size=1024),
    st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(min_value=200, max_value=3000)),
    st.builds(lambda d: b'{"data":' + b"[" * d + b"]" * d + b"}", st.integers(200, 3000)),
)


@BOUNDED
@given(
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6),
    content_type=st.one_of(
        CONTENT_TYPES,
        st.sampled_from(["application/cloudevents+json", "application/cloudevents-batch+json"]),
    ),
    body=BODIES,
    path=st.sampled_from(["/default/fuzz", "/default/nope", "/channels/default/x"]),
)
def test_random_requests_get_202_or_4xx_never_5xx(mesh, headers, content_type, body, path):
    client, _ = mesh
    headers = {**headers, "content-type": content_type}
    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    try:
        response = client.post(path, headers=encoded, content=body)
    except httpx.LocalProtocolError:  # the client refuses to send such headers: not a case
        reject()
    _answered(response)
