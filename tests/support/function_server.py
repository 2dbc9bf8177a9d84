"""A tiny function for invoker tests, run as a replica: an HTTP server on ``$PORT``.

It answers every request (any method) after sleeping ``x-sleep`` seconds (header, default 0) and
records its own concurrency, its method and the ``K_SERVICE`` / ``K_REVISION`` /
``K_CONFIGURATION`` it was started with: each answer (JSON) and, when ``RECORD_FILE`` is set,
one JSON line appended there per request carry ``inflight`` (requests in flight here when this
one arrived, itself included) and ``max_inflight`` (the most ever in flight here). A request
carrying a CloudEvent (``ce-id``) is answered 202 with no body, so a dispatcher sees no reply.
``FUNCTION_NAME`` (default ``fn``) names the function in its answers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"inflight": 0, "max_inflight": 0}
RECORD_FILE = os.environ.get("RECORD_FILE")
NAME = os.environ.get("FUNCTION_NAME", "fn")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self._answer()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST  # noqa: N815 (stdlib names)

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with LOCK:
            STATE["inflight"] += 1
            STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
            inflight = STATE["inflight"]
        try:
            delay = float(self.headers.get("x-sleep") or 0)
            if delay:
                time.sleep(delay)
            record = {
                "name": NAME,
                "pid": os.getpid(),
                "port": int(os.environ["PORT"]),
                "path": self.path,
                "method": self.command,
                "env": {
                    k: os.environ.get(k) for k in ("K_SERVICE", "K_REVISION", "K_CONFIGURATION")
                },
                "ce_id": self.headers.get("ce-id"),
                "body": body.decode("utf-8", "replace"),
                "inflight": inflight,
                "max_inflight": STATE["max_inflight"],
            }
            if RECORD_FILE:
                with LOCK, open(RECORD_FILE, "a") as out:
                    out.write(json.dumps(record) + "\n")
        finally:
            with LOCK:
                STATE["inflight"] -= 1
        payload = b"" if record["ce_id"] else json.dumps(record).encode()
        self.send_response(202 if record["ce_id"] else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep cemesh's log for what matters


if __name__ == "__main__":
    ThreadingHTTPServer.request_queue_size = 256  # listen backlog: bursts of connections
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    print(f"{NAME} listening on {os.environ['PORT']}", flush=True)
    server.serve_forever()
