"""HTTP to and from Services: request paths, the headers that pass, and the invoker's answers.

Owns the pure parts of the function invoker's request path: :func:`parse_service_path`
(``/services/{namespace}/{name}[/tags/{tag}][/path]``), which request and response headers are
forwarded (hop-by-hop and framing headers never are), :func:`json_response` (its own answers,
``Retry-After`` on 503), and :func:`send_response` (a Response as raw ASGI).
"""

from __future__ import annotations

import orjson

from broker.core.asgi import Scope, Send
from broker.dataplane.dispatch.http import Response

RETRY_AFTER = b"1"  # seconds, on 503: a replica is usually up by then
PREFIX = "/services/"  # where Services are reached over HTTP

# Hop-by-hop and framing headers: never forwarded either way (the client frames requests).
# Response headers the server in front (uvicorn) sets itself: the replica's would repeat them.
_SERVER_SET = frozenset({"server", "date"})
_HOP = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
    }
)


def parse_service_path(rest: str) -> tuple[str, str, str | None, str] | None:
    """``namespace/name[/tags/tag][/path][?query]`` -> (namespace, name, tag, "/path?query")."""
    path, sep, query = rest.partition("?")
    parts = path.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    namespace, name = parts[0], parts[1]
    suffix = "/" + parts[2] if len(parts) == 3 else "/"
    tag = None
    if suffix.startswith("/tags/"):
        tag_and_path = suffix[len("/tags/") :].split("/", 1)
        tag = tag_and_path[0]
        if not tag:
            return None
        suffix = "/" + tag_and_path[1] if len(tag_and_path) == 2 else "/"
    return namespace, name, tag, suffix + (sep + query if query else "")


def json_response(status: int, message: str, retry_after: bool = False) -> Response:
    headers = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", RETRY_AFTER))
    return Response(status, headers, orjson.dumps({"message": message}))


def request_headers(scope: Scope) -> list[tuple[str, str]]:
    """The request headers to forward to a replica (hop-by-hop and framing ones dropped)."""
    return [
        (key, value.decode("latin-1"))
        for raw, value in scope["headers"]
        if (key := raw.decode("latin-1").lower()) not in _HOP
    ]


async def send_response(send: Send, response: Response, *, head: bool) -> None:
    """Answer with a replica's (or the invoker's) ``response``; a HEAD answer has no body, so
    the replica's content-length stands."""
    out = [
        (k, v)
        for k, v in response.headers
        if (
            (name := k.decode("latin-1").lower()) not in _HOP or (head and name == "content-length")
        )
        and name not in _SERVER_SET
    ]
    if not head:
        out.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": out})
    await send({"type": "http.response.body", "body": response.body})
