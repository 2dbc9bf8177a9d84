"""The CloudEvents JSON format over HTTP: structured and batched mode, both directions (no I/O).

Owns reading a structured event (one JSON object, C49) or a batch (a JSON array, C46, C47) into
:class:`~broker.core.events.CloudEvent` values, and writing them back (:func:`to_structured`,
:func:`to_batch`): core attributes are JSON strings, extensions string / 32-bit integer /
boolean (C13, C51), ``null`` is unset (C52), ``data`` vs ``data_base64`` (C53-C59). JSON
``data`` is carried as the same JSON value, re-serialized compactly; ``data`` nested deeper than
orjson writes (254 levels) is carried as the exact bytes it arrived as (found by
:func:`raw_members`, off the hot path); a body nested deeper than orjson reads
(:data:`MAX_JSON_DEPTH`) is refused naming that limit. Attribute rules shared with binary mode
are :mod:`broker.core.binding_attributes`'.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any

import orjson

from broker.core.binding_attributes import (
    CORE,
    INT32_MAX,
    INT32_MIN,
    NAME,
    SUPPORTED_TEXT,
    is_json_media_type,
    validate,
)
from broker.core.errors import BindingError
from broker.core.events import AttributeValue, CloudEvent
from broker.core.memo import MAX_NAME_LENGTH, remember

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"  # C42
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=UTF-8"  # C45

# Memo table (written only through memo.remember, which bounds it): extension names seen valid.
_EXTENSION_NAMES: dict[str, bool] = {}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _b64decode(text: Any, member: str) -> bytes:
    if type(text) is not str:
        raise BindingError(f"'{member}' must be a base64 JSON string, got {_json_type(text)}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BindingError(f"'{member}' is not valid base64: {exc} (C53)") from None
    # RFC 4648 section 3.5: refuse encodings with non-zero pad bits (not produced by any
    # conforming encoder, and they would make two texts mean the same bytes).
    if base64.b64encode(raw).decode("ascii") != text:
        raise BindingError(f"'{member}' is not canonical base64 (non-zero padding bits) (C53)")
    return raw


def _check_extension(name: str, value: Any) -> None:
    if name not in _EXTENSION_NAMES:
        if NAME.fullmatch(name) is None:
            raise BindingError(
                f"invalid attribute name {name!r} "
                "(only lower-case letters a-z and digits 0-9 are allowed: C16)"
            )
        remember(_EXTENSION_NAMES, name, True, max_key_length=MAX_NAME_LENGTH)
    kind = type(value)
    if kind is int:
        if not INT32_MIN <= value <= INT32_MAX:
            raise BindingError(
                f"extension '{name}': integer {value} is outside the signed 32-bit range (C13)"
            )
    elif kind is not str and kind is not bool:
        raise BindingError(
            f"extension '{name}' must be a string, integer or boolean, got {_json_type(value)} "
            "(C13, C51)"
        )


class _DataTooDeep(Exception):
    """JSON ``data`` nests deeper than orjson serializes: take its raw bytes from the body."""


def _event_from_json(document: dict[str, Any], raw_data: bytes | None = None) -> CloudEvent:
    specversion = document.get("specversion")
    if specversion is None:
        raise BindingError("missing required attribute 'specversion'")
    if type(specversion) is not str:
        raise BindingError(
            f"attribute 'specversion' must be a JSON string, got {_json_type(specversion)}"
        )
    core = CORE.get(specversion)
    if core is None:
        raise BindingError(f"unsupported specversion {specversion!r} (supported: {SUPPORTED_TEXT})")
    # null means unset (C52); data is handled below.
    attributes: dict[str, AttributeValue] = {
        name: value
        for name, value in document.items()
        if value is not None and name != "data" and name != "data_base64"
    }
    # The usual event (core attributes only, all strings) in two C-level passes; anything else
    # is checked attribute by attribute, which names the fault.
    if not (core.issuperset(attributes) and all(type(v) is str for v in attributes.values())):
        for name, value in attributes.items():
            if name in core:
                if type(value) is not str:
                    raise BindingError(
                        f"attribute '{name}' must be a JSON string, got {_json_type(value)} (C51)"
                    )
            else:
                _check_extension(name, value)
    validate(attributes, binary=False)
    return CloudEvent(attributes, _json_data(document, attributes, specversion, raw_data))


def _json_data(
    document: dict[str, Any],
    attributes: dict[str, AttributeValue],
    specversion: str,
    raw_data: bytes | None = None,
) -> bytes | None:
    """The data bytes of a JSON-format event (C53-C59; 0.3 ``datacontentencoding``)."""
    encoded = document.get("data_base64")
    if encoded is not None:
        if "data" in document:
            raise BindingError("'data' and 'data_base64' are mutually exclusive (C58)")
        return _b64decode(encoded, "data_base64")
    if "data" not in document:
        return None
    value = document["data"]
    if specversion == "0.3":
        encoding = attributes.get("datacontentencoding")
        if type(encoding) is str and encoding.lower() == "base64":
            return None if value is None else _b64decode(value, "data")
    content_type = attributes.get("datacontenttype")
    if is_json_media_type(None if content_type is None else str(content_type)):
        # A JSON value, re-serialized; a JSON string stays a JSON string (C55, C59, C61).
        if raw_data is not None:
            return raw_data
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
            raise _DataTooDeep from None
    if value is None:
        return None
    if type(value) is not str:
        raise BindingError(
            f"'data' must be a JSON string for the non-JSON datacontenttype {content_type!r}, "
            f"got {_json_type(value)} (C57, C59)"
        )
    return value.encode("utf-8")


def _load_json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise BindingError(
                f"{what}: the JSON nests deeper than {MAX_JSON_DEPTH} levels, the most read in "
                "structured and batched mode; send deeper data in binary mode"
            ) from None
        raise BindingError(f"{what}: body is not valid JSON: {exc}") from None


# orjson's own nesting limit when reading (it refuses deeper documents; it never recurses).
MAX_JSON_DEPTH = 1024
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)


def raw_members(body: bytes, name: str, level: int) -> list[bytes | None]:
    """The exact bytes of member ``name`` of each object ``level`` deep in the JSON ``body``.

    ``level`` 1 is the top-level object (structured mode), 2 the objects of a top-level array
    (batched mode); None for an object without the member; the last one wins when a name
    repeats (as orjson decides). ``body`` is valid JSON (orjson read it). Walks the tokens
    with a counter, so depth costs nothing; only used for data orjson cannot write back.
    """
    found: list[bytes | None] = []
    depth = 0
    current: bytes | None = None
    key: str | None = None
    expecting_key = False
    value_start = 0
    for match in _JSON_TOKENS.finditer(body):
        token = match.group()
        char = token[:1]
        if char == b'"':
            if depth == level and expecting_key:
                key, expecting_key = orjson.loads(token), False
            continue
        if depth == level and char in (b",", b"}"):
            if key == name:
                current = body[value_start : match.start()].strip()
            key, expecting_key = None, True
        if char in (b"{", b"["):
            depth += 1
            if depth == level and char == b"{":
                current, key, expecting_key = None, None, True
        elif char in (b"}", b"]"):
            if depth == level and char == b"}":
                found.append(current)
            depth -= 1
        elif char == b":" and depth == level:
            value_start = match.end()
    return found


def parse_structured(body: bytes) -> CloudEvent:
    document = _load_json(body, "structured event")
    if type(document) is not dict:
        raise BindingError(
            f"structured event: body must be a JSON object, got {_json_type(document)} (C49)"
        )
    try:
        return _event_from_json(document)
    except _DataTooDeep:
        return _event_from_json(document, raw_members(body, "data", 1)[0])


def parse_batch(body: bytes) -> list[CloudEvent]:
    documents = _load_json(body, "batch")
    if type(documents) is not list:
        raise BindingError(f"batch: body must be a JSON array, got {_json_type(documents)} (C46)")
    events: list[CloudEvent] = []
    raw: list[bytes | None] | None = None
    for index, document in enumerate(documents):
        try:
            if type(document) is not dict:
                raise BindingError(f"must be a JSON object, got {_json_type(document)} (C46)")
            try:
                events.append(_event_from_json(document))
            except _DataTooDeep:
                raw = raw_members(body, "data", 2) if raw is None else raw
                events.append(_event_from_json(document, raw[index]))
        except BindingError as exc:
            raise BindingError(f"event [{index}]: {exc.message}") from None
    if events:
        first = events[0].attributes["specversion"]
        for index, event in enumerate(events):
            if event.attributes["specversion"] != first:
                raise BindingError(
                    f"event [{index}]: specversion {event.attributes['specversion']!r} differs "
                    f"from {first!r} of event [0]; a batch has one specversion (C47)"
                )
    return events


def document(event: CloudEvent) -> dict[str, Any]:
    """The JSON-format object of one event (C50-C57)."""
    document: dict[str, Any] = dict(event.attributes)
    data = event.data
    if data is None:
        return document
    content_type = event.attributes.get("datacontenttype")
    if event.attributes.get("specversion") == "0.3":
        encoding = event.attributes.get("datacontentencoding")
        if type(encoding) is str and encoding.lower() == "base64":
            document["data"] = base64.b64encode(data).decode("ascii")
            return document
    if is_json_media_type(None if content_type is None else str(content_type)):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # JSON media type but not JSON bytes: keep them exact as data_base64
        else:
            # Embed the bytes verbatim (already validated); no decode/re-encode round trip.
            document["data"] = orjson.Fragment(data)
            return document
    else:
        try:
            document["data"] = data.decode("utf-8")  # C57: textual data as a JSON string
            return document
        except UnicodeDecodeError:
            pass
    document["data_base64"] = base64.b64encode(data).decode("ascii")  # C53
    return document


def to_structured(event: CloudEvent) -> tuple[list[tuple[str, str]], bytes]:
    """Structured mode: ``application/cloudevents+json`` and the whole event as JSON (C42, C43)."""
    return [("content-type", STRUCTURED_CONTENT_TYPE)], orjson.dumps(document(event))


def to_batch(events: Sequence[CloudEvent]) -> tuple[list[tuple[str, str]], bytes]:
    """Batched mode: a JSON array of JSON-format events, one specversion for all (C45-C47)."""
    if events:
        first = events[0].attributes.get("specversion")
        for index, event in enumerate(events):
            if event.attributes.get("specversion") != first:
                raise BindingError(
                    f"event [{index}]: specversion {event.attributes.get('specversion')!r} "
                    f"differs from {first!r}; a batch has one specversion (C47)"
                )
    body = orjson.dumps([document(event) for event in events])
    return [("content-type", BATCH_CONTENT_TYPE)], body
