"""Raw ASGI for cemesh's hand-written HTTP handlers: the message types, the one body reader, and
the one JSON answer.

The ingress (the hot path), the API guard and the components' routes (source webhooks, the
function invoker) are plain ASGI callables rather than FastAPI routes; they share these types,
:func:`send_json`, and :func:`read_body`, which owns one rule: a request body is used only when
it arrived whole. ASGI reports a client that went away (a cut connection, a ``Content-Length``
longer than what arrived, a chunked body without its last chunk, a read deadline of
``broker/server/http_server.py``) as an ``http.disconnect`` message where the rest of the body would
be; that is never the end of a body, and :class:`~broker.core.errors.RequestIncomplete` says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from broker.core.errors import RequestIncomplete

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
HttpHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_body(receive: Receive, limit: int, first: Message | None = None) -> bytes | None:
    """The whole request body, or None when it is longer than ``limit`` bytes.

    ``first`` is the request's first message when the caller already received it. Raises
    :class:`~broker.core.errors.RequestIncomplete` when the client disconnected before the body's
    last byte: no answer can reach it, and nothing of the request may be used.
    """
    message = first if first is not None else await receive()
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] != "http.request":
            raise RequestIncomplete(
                f"the client disconnected after {size} bytes, before the request body was complete"
            )
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = await receive()


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer a raw ASGI request with ``body`` (JSON) and ``status``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
