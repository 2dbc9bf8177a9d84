"""Local stand-ins for the container images of the Knative docs' flow samples (stdlib only).

Each runs as a Knative Service's ``command`` on cemesh's process backend, listening on ``$PORT``
and configured by the same environment variables as the image it replaces:

- ``appender``: replies with the event, ``$MESSAGE`` appended to its JSON ``message`` and its
  type set to ``$TYPE`` when given (knative.dev/eventing/cmd/appender);
- ``event-display FILE``: appends each event (its ``ce-`` headers and data) to FILE as one JSON
  line and answers 202 (knative.dev/eventing/cmd/event_display logs it instead);
- ``filter``: replies with the event unchanged when ``$FILTER`` accepts it, else 202 (no reply).
  Only the docs' two expressions, ``Math.round(Date.parse(event.time) / 60000) % 2 === 0`` and
  ``!== 0`` (even / odd minute of the event time), are understood (villardl/filter-nodejs);
- ``transformer``: replies with the event, its data replaced by ``$TRANSFORMER``, a JavaScript
  object literal in parentheses that is also JSON (villardl/transformer-nodejs).

Usage: ``python sample_services.py ROLE [FILE]``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer


def _minute_is_even(time: str) -> bool:
    moment = datetime.fromisoformat(time.replace("Z", "+00:00"))
    return round(moment.timestamp() / 60) % 2 == 0


def _accepts(expression: str, headers: dict[str, str]) -> bool:
    even = _minute_is_even(headers.get("ce-time", ""))
    if "!== 0" in expression:
        return not even
    if "=== 0" in expression:
        return even
    raise SystemExit(f"filter expression not understood: {expression!r}")


class _Handler(BaseHTTPRequestHandler):
    role = ""
    display_file = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        ce = {k: v for k, v in headers.items() if k.startswith("ce-")}
        if self.role == "event-display":
            with open(self.display_file, "a", encoding="utf-8") as out:
                out.write(json.dumps({"headers": ce, "data": body.decode()}) + "\n")
            return self._answer(202, {}, b"")
        if self.role == "filter":
            if not _accepts(os.environ["FILTER"], headers):
                return self._answer(202, {}, b"")
            data = body
        elif self.role == "transformer":
            data = json.dumps(json.loads(os.environ["TRANSFORMER"].strip().strip("()"))).encode()
        else:  # appender
            message = json.loads(body or b"{}")
            message["message"] = message.get("message", "") + os.environ.get("MESSAGE", "")
            data = json.dumps(message).encode()
            if os.environ.get("TYPE"):
                ce["ce-type"] = os.environ["TYPE"]
        ce["content-type"] = "application/json"
        return self._answer(200, ce, data)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: cemesh logs the replica's output


def main() -> None:
    _Handler.role = sys.argv[1]
    _Handler.display_file = sys.argv[2] if len(sys.argv) > 2 else ""
    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), _Handler).serve_forever()


if __name__ == "__main__":
    main()
