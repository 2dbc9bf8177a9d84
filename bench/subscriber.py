"""The benchmark's subscriber: a lean HTTP/1.1 server that answers 202 and times every event.

It is a bare asyncio protocol on uvloop with httptools doing the parsing (no ASGI framework in
between), because it shares the two cores of the machine with cemesh and the load generator: the
less CPU it takes per event, the less it steals from the broker it measures. It keeps, per
event, the time it received it, its ``ce-id`` and its ``ce-knativearrivaltime`` (set by the
ingress when it accepted the event); latency is computed from those only when asked, off the
hot path.

Control requests on the same port (``GET``):

- ``/count``: ``{"received": n, "distinct": d}`` (requests, distinct ids), cheap enough to poll
  while the queue drains;
- ``/stats``: counts, unique ids, duplicates, delivered rate and latency percentiles of what was
  received since the last ``/reset``;
- ``/account?tag=T&sent=N[&first=F]``: lost (missing), duplicated and foreign ids of the run
  whose ids are ``T-F`` .. ``T-N`` (:func:`account`), counted by id, never by count;
- ``/reset``: forget everything received so far.

Every other request (any path, usually ``POST``) is an event: ``202``, no body.

With ``--uvicorn`` the same recording is a plain ASGI app under uvicorn (uvloop, httptools): an
ordinary Python subscriber, for ``bench/e2e.py``'s second end-to-end figure.

Run: ``python bench/subscriber.py --port PORT`` (prints ``listening`` once it accepts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import time
from datetime import datetime
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
    uvloop = None  # type: ignore[assignment]

ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
ARRIVAL_HEADER = b"ce-knativearrivaltime"
ID_HEADER = b"ce-id"


class Recorder:
    """What arrived: receive times, ids and arrival times, in arrival order."""

    def __init__(self) -> None:
        self.received_at: list[float] = []
        self.ids: list[bytes] = []
        self.arrivals: list[bytes | None] = []

    def reset(self) -> None:
        self.received_at.clear()
        self.ids.clear()
        self.arrivals.clear()

    def stats(self) -> dict[str, Any]:
        """Counts and latency (receive time minus ``knativearrivaltime``) of what arrived."""
        count = len(self.ids)
        unique = len(set(self.ids))
        latencies: list[float] = []
        unparsable = 0
        for received, arrival in zip(self.received_at, self.arrivals, strict=True):
            if arrival is None:
                unparsable += 1
                continue
            try:
                accepted = datetime.fromisoformat(arrival.decode("ascii")).timestamp()
            except ValueError:
                unparsable += 1
                continue
            latencies.append((received - accepted) * 1000.0)
        latencies.sort()
        window = self.received_at[-1] - self.received_at[0] if count > 1 else 0.0
        return {
            "received": count,
            "unique": unique,
            "duplicates": count - unique,
            "without_arrival_time": unparsable,
            "first": self.received_at[0] if count else None,
            "last": self.received_at[-1] if count else None,
            "rate": (count - 1) / window if window > 0 else 0.0,
            "latency_ms": {
                "p50": percentile(latencies, 50),
                "p90": percentile(latencies, 90),
                "p99": percentile(latencies, 99),
                "p999": percentile(latencies, 99.9),
                "max": latencies[-1] if latencies else None,
                "min": latencies[0] if latencies else None,
            },
        }


def account(ids: list[bytes], tag: bytes, sent: int, first: int = 1) -> dict[str, Any]:
    """Lost and duplicated by id, for a load that sent ``<tag>-<first>`` .. ``<tag>-<sent>``.

    ``missing``: ids in that range that never arrived (lost, when every one of them was
    accepted); ``duplicated``: deliveries beyond the first of each of the run's ids; ``foreign``:
    deliveries of ids not of this run (a probe, or an event of an earlier phase), which a count
    of unique ids would mistake for the run's own. Ids past ``sent`` (requests wrk had in flight
    when it stopped, accepted but not counted by it) are ``beyond``.
    """
    prefix = tag + b"-"
    seen: set[int] = set()
    own = foreign = 0
    for event_id in ids:
        number = event_id[len(prefix) :] if event_id.startswith(prefix) else b""
        if not number.isdigit():
            foreign += 1
            continue
        own += 1
        seen.add(int(number))
    missing = [n for n in range(first, sent + 1) if n not in seen]
    return {
        "missing": len(missing),
        "missing_sample": [f"{tag.decode()}-{n}" for n in missing[:10]],
        "duplicated": own - len(seen),
        "foreign": foreign,
        "beyond": sum(1 for n in seen if n > sent),
    }


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class EventProtocol(asyncio.Protocol):
    """One connection: httptools callbacks fill the current request, completion answers it."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.event_id = b""
        self.arrival: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.event_id = b""
        self.arrival = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # cemesh's client sends lower-case names; anything else is not worth a .lower() per
        # header here (an event without the arrival time is counted as such in the stats).
        if name == ARRIVAL_HEADER:
            self.arrival = value
        elif name == ID_HEADER:
            self.event_id = value

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.parser.get_method() == b"GET":
            transport.write(self._control())
        else:
            recorder = self.recorder
            recorder.received_at.append(time.time())
            recorder.ids.append(self.event_id)
            recorder.arrivals.append(self.arrival)
            transport.write(ACCEPTED)
        if not self.parser.should_keep_alive():
            transport.close()

    def _control(self) -> bytes:
        status, body = control(self.recorder, self.url)
        reason = b"OK" if status == 200 else b"Not Found"
        return (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, reason, len(body), body)
        )


def control(recorder: Recorder, url: bytes) -> tuple[int, bytes]:
    """The answer (status, JSON body) to a control ``GET`` of ``url`` (see the module doc)."""
    path = url.split(b"?", 1)[0]
    if path == b"/count":
        ids = recorder.ids
        payload: dict[str, Any] = {"received": len(ids), "distinct": len(set(ids))}
    elif path == b"/stats":
        payload = recorder.stats()
    elif path == b"/account":  # ?tag=<tag>&sent=<n>: see account()
        query = dict(parse_qsl(url.split(b"?", 1)[-1].decode("ascii")))
        payload = account(
            recorder.ids, query["tag"].encode(), int(query["sent"]), int(query.get("first", "1"))
        )
    elif path == b"/reset":
        recorder.reset()
        payload = {"received": 0}
    else:
        return 404, b'{"error": "unknown control path"}'
    return 200, json.dumps(payload).encode()


class UvicornSubscriber:
    """The same recording as :class:`EventProtocol`, as a plain ASGI app for uvicorn
    (``--uvicorn``): what delivering to an ordinary Python HTTP subscriber costs."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        message = await receive()
        while message.get("more_body", False):
            message = await receive()
        if scope["method"] == "GET":
            url = scope["raw_path"] + (
                b"?" + scope["query_string"] if scope["query_string"] else b""
            )
            status, body = control(self.recorder, url)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        event_id, arrival = b"", None
        for name, value in scope["headers"]:
            if name == ARRIVAL_HEADER:
                arrival = value
            elif name == ID_HEADER:
                event_id = value
        recorder = self.recorder
        recorder.received_at.append(time.time())
        recorder.ids.append(event_id)
        recorder.arrivals.append(arrival)
        await send(_UVICORN_ACCEPTED)
        await send({"type": "http.response.body", "body": b""})


_UVICORN_ACCEPTED = {
    "type": "http.response.start",
    "status": 202,
    "headers": [(b"content-length", b"0")],
}


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    server = await loop.create_server(
        lambda: EventProtocol(recorder), host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("listening", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--uvicorn", action="store_true", help="serve as a plain ASGI app under uvicorn"
    )
    args = parser.parse_args()
    if args.uvicorn:
        import uvicorn

        print("listening", flush=True)
        uvicorn.run(
            UvicornSubscriber(Recorder()),
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_config=None,
            lifespan="on",
        )
        return
    if uvloop is not None:
        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
