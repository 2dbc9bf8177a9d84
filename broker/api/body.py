"""Reading a management-API request body: its size, its media type and its JSON, as one rule.

Every write of the REST API (``POST``, ``PUT``) reads its body through :func:`read_json_object`,
so every malformed body gets the same precise 4xx and none reaches a handler half-read:

- larger than ``max_bytes`` (``CEMESH_MAX_REQUEST_BYTES``): 413 (:class:`EventTooLarge`);
- a ``Content-Type`` other than JSON (``application/json``, ``application/*+json``; none at all
  is read as JSON): 415 (:class:`UnsupportedMediaType`);
- not JSON (bad syntax, bad UTF-8, NaN): 400 (:class:`BindingError`);
- JSON, but not an object, or nested deeper than :data:`~broker.resources.MAX_RESOURCE_DEPTH`
  levels: 422 (:class:`InvalidResource`).

orjson reads the text: it bounds nesting itself (1024 levels) and never recurses in Python, so no
text can exhaust the interpreter's stack here; the tighter resource limit is admission's
(:func:`broker.resources.check_depth`), reported the same way when orjson's own limit is hit.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from broker.errors import BindingError, EventTooLarge, InvalidResource, UnsupportedMediaType
from broker.resources import MAX_RESOURCE_DEPTH

JSON_MEDIA_TYPES = ("application/json", "application/*+json")


def is_json_media_type(content_type: str | None) -> bool:
    """True for a missing Content-Type, ``application/json`` and ``application/<x>+json``."""
    if not content_type:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type:
        return True
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to be over ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise EventTooLarge(f"request body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise EventTooLarge(f"request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; BindingError (400) or InvalidResource (422) naming why not."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc).lower():
            raise InvalidResource(
                "", f"the object nests deeper than {MAX_RESOURCE_DEPTH} levels, the limit"
            ) from exc
        raise BindingError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise InvalidResource("", f"request body must be a JSON object, got {kind}")
    return body


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """Size, media type, then JSON: the body of a resource write, or the 4xx saying why not."""
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; send the object as JSON "
            f"({', '.join(JSON_MEDIA_TYPES)})"
        )
    return parse_json_object(await read_body(request, max_bytes))
