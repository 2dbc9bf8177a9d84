"""The CloudEvents HTTP protocol binding: HTTP message <-> :class:`CloudEvent`, strictly.

This module is the binding's entry (:func:`parse_request`, :func:`parse_response`,
:func:`to_binary`, :func:`to_structured`, :func:`to_batch`) and owns the content mode, header
values and binary mode; the JSON format (structured and batched mode) is
:mod:`broker.core.binding_json` and the attribute rules all modes share
:mod:`broker.core.binding_attributes`. Together they map events over HTTP in all three content
modes, for CloudEvents 1.0 and 0.3, in both directions, and decide whether a message is a CloudEvent
at all. It does no I/O: callers hand
in ASGI-style headers (a sequence of ``(name, value)`` byte pairs, names lower-case, as every
ASGI server and the ``http`` crate deliver them) and the body, and get events or a
:class:`~broker.core.errors.BindingError` whose message names the header or attribute at fault
(the ingress answers it with ``400``).

It sits on the ingress hot path, so the common case is kept cheap: one pass over the headers,
header values with no ``%`` and no ``"`` decoded with a single strict ``bytes.decode``, caches
(bounded, so hostile input cannot grow them) for validated header names and content-type
verdicts, and ``str.isprintable`` as the fast "no control characters" test with a regex only
when it says no. The cloudevents SDK's parser is deliberately not used: it invents a missing
``id``/``time``, picks the mode from ``ce-`` headers and decodes header values loosely
(C84-C86).

Rules (the K and C requirement ids are explained in docs/requirements.md):

- mode from ``Content-Type`` only (C25, C44); unsupported structured/batch formats are binary (C26)
- binary: ``ce-specversion`` required (K30, C86), 1.0 or 0.3 (K31); names ``[a-z0-9]+`` (C16,
  C20); no repeats (C11); ``Content-Type`` is ``datacontenttype`` and ``ce-datacontenttype`` is
  refused (C29, C33); body is ``data`` unchanged (C30); values quoted-string-unescaped, then
  one strict round of percent-decoding (C38-C40)
- structured: a JSON object (C49); core attributes are strings, extensions string / 32-bit
  integer / boolean (C13, C51); ``null`` is unset (C52); ``data`` vs ``data_base64`` (C53-C59);
  JSON ``data`` is carried as the same JSON value, re-serialized compactly; ``data`` nested deeper
  than orjson writes (254 levels) is carried as the exact bytes it arrived as (found by
  :func:`~broker.core.binding_json.raw_members`, off the hot path); a body nested deeper than
  orjson reads (``MAX_JSON_DEPTH``) is a 400 naming that limit (binary mode has no limit: data
  is opaque)
- both: ``id``/``source``/``type`` non-empty (K40, K48, C1-C5), ``time`` RFC 3339 (C10),
  ``dataschema`` absolute URI (C8), ``subject`` non-empty (C9), no control characters (C14);
  the version is never changed (K32)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from broker.core.binding_attributes import NAME, SUPPORTED_SPEC_VERSIONS, validate
from broker.core.binding_json import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    parse_batch,
    parse_structured,
    to_batch,
    to_structured,
)
from broker.core.errors import BindingError
from broker.core.events import AttributeValue, CloudEvent, attribute_text
from broker.core.memo import MAX_NAME_LENGTH, MAX_VALUE_LENGTH, remember

# The binding's public names; the JSON format's come from broker.core.binding_json.
__all__ = [
    "BATCH_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "SUPPORTED_SPEC_VERSIONS",
    "ContentMode",
    "Headers",
    "content_mode",
    "decode_header_value",
    "encode_header_value",
    "parse_request",
    "parse_response",
    "to_batch",
    "to_binary",
    "to_structured",
]

Headers = Sequence[tuple[bytes, bytes]]
ContentMode = Literal["binary", "structured", "batch"]

# Memo tables: the same few header names and content types arrive on every request. Written
# only through memo.remember, which bounds them in entries and key length.
_HEADER_ATTRIBUTE: dict[bytes, str] = {}
_MODE_BY_CONTENT_TYPE: dict[bytes, ContentMode] = {}

_QUOTED_STRING_BODY = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)  # RFC 7230 section 3.2.6
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# C36/C37: kept as they are when encoding: printable ASCII except `"` and `%`.
_SAFE_HEADER_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


# --- content mode -------------------------------------------------------------------------


def content_mode(content_type: str | None) -> ContentMode:
    """The content mode a ``Content-Type`` selects (C25, matched case-insensitively).

    ``application/cloudevents-batch...`` is batched and ``application/cloudevents...``
    structured, but only for the JSON format (the bare prefix counts as JSON); any other
    format, such as ``application/cloudevents+avro``, is treated as binary (C26), as is
    everything else, including no ``Content-Type`` at all. ``ce-`` headers never decide (C44).
    """
    if not content_type:
        return "binary"
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("application/cloudevents-batch"):
        if media_type in ("application/cloudevents-batch", "application/cloudevents-batch+json"):
            return "batch"
        return "binary"
    if media_type in ("application/cloudevents", "application/cloudevents+json"):
        return "structured"
    return "binary"


def _mode(content_type: bytes | None) -> ContentMode:
    if content_type is None:
        return "binary"
    mode = _MODE_BY_CONTENT_TYPE.get(content_type)
    if mode is None:
        mode = content_mode(content_type.decode("latin-1"))
        remember(_MODE_BY_CONTENT_TYPE, content_type, mode, max_key_length=MAX_VALUE_LENGTH)
    return mode


# --- header values (C35-C41) ---------------------------------------------------------------


def encode_header_value(value: str) -> str:
    """Percent-encode an attribute's canonical string for a ``ce-`` header (C36, C37).

    Printable ASCII other than ``"`` and ``%`` is kept; everything else (space, controls,
    non-ASCII) becomes the ``%XY`` upper-case hex of its UTF-8 bytes, so
    ``Euro € 😀`` -> ``Euro%20%E2%82%AC%20%F0%9F%98%80`` (C41).
    """
    if _kept_as_is(value):
        return value
    try:
        return quote(value, safe=_SAFE_HEADER_CHARS)
    except UnicodeEncodeError as exc:
        raise BindingError(
            f"cannot encode {value[exc.start : exc.end]!r} (an unpaired surrogate) in a header"
        ) from None


def _kept_as_is(text: str) -> bool:
    """Whether every character of ``text`` is one :func:`encode_header_value` keeps (C36):
    a property of each character, so it holds for a concatenation exactly when it holds for
    each part (what :func:`to_binary` checks all of an event's values with, at once)."""
    return (
        text.isascii()
        and text.isprintable()
        and " " not in text
        and '"' not in text
        and "%" not in text
    )


def decode_header_value(raw: bytes) -> str:
    """Decode a ``ce-`` header value strictly (C38-C40).

    A value wrapped in double quotes is first unescaped as an RFC 7230 quoted-string; then
    exactly one round of percent-decoding runs, accepting lower-case hex and needless escapes
    (C39); the bytes must then be valid UTF-8 (overlong forms such as ``%C0%A0`` are not: C40).
    A ``%`` not followed by two hex digits is an error.
    """
    if raw.find(b"%") < 0 and raw.find(b'"') < 0:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise BindingError("invalid UTF-8") from None
    if len(raw) >= 2 and raw[0] == 0x22 and raw[-1] == 0x22:
        inner = raw[1:-1]
        if not _QUOTED_STRING_BODY.fullmatch(inner):
            raise BindingError("malformed quoted-string (an unescaped '\"' or a dangling '\\')")
        raw = _QUOTED_PAIR.sub(rb"\1", inner) if b"\\" in inner else inner
    if b"%" in raw:
        bad = _BAD_PERCENT.search(raw)
        if bad is not None:
            found = raw[bad.start() : bad.start() + 3].decode("latin-1")
            raise BindingError(
                f"invalid percent-encoding {found!r} (% must be followed by two hex digits)"
            )
        # Every % now starts a valid escape, so the stdlib's single round is exactly C38.
        raw = unquote_to_bytes(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BindingError("invalid UTF-8 after percent-decoding") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BindingError("invalid UTF-8") from None


# --- binary mode --------------------------------------------------------------------------


def _header_attribute(name: bytes) -> str:
    """The attribute a ``ce-`` header name carries, validated (C16, C17, C20, C29)."""
    attribute = _HEADER_ATTRIBUTE.get(name)
    if attribute is not None:
        return attribute
    text = name.decode("utf-8", "backslashreplace")
    attribute = text[3:]
    if NAME.fullmatch(attribute) is None:
        raise BindingError(
            f"header {text}: invalid attribute name {attribute!r} "
            "(only lower-case letters a-z and digits 0-9 are allowed: C16, C20)"
        )
    if attribute == "datacontenttype":
        raise BindingError(
            "header ce-datacontenttype is not allowed in binary mode: "
            "datacontenttype travels in Content-Type (C29)"
        )
    if attribute == "data":
        raise BindingError("header ce-data: 'data' is not a valid attribute name (C17)")
    remember(_HEADER_ATTRIBUTE, name, attribute, max_key_length=MAX_NAME_LENGTH)
    return attribute


def _parse_binary(
    ce_headers: list[tuple[bytes, bytes]], content_type: bytes | None, body: bytes
) -> CloudEvent:
    attributes: dict[str, AttributeValue] = {}
    for name, raw in ce_headers:
        attribute = _HEADER_ATTRIBUTE.get(name) or _header_attribute(name)
        if attribute in attributes:
            raise BindingError(f"attribute '{attribute}' given twice (header ce-{attribute}, C11)")
        # Fast path: decode first, then look for % and " in the str (much cheaper than in the
        # bytes); UTF-8 keeps ASCII as is, so the str has them exactly when the bytes do.
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            value = None
        if value is None or "%" in value or '"' in value:
            try:
                value = decode_header_value(raw)
            except BindingError as exc:
                raise BindingError(f"header ce-{attribute}: {exc.message}") from None
        attributes[attribute] = value
    if content_type:  # an empty Content-Type is no Content-Type (C33)
        try:
            attributes["datacontenttype"] = content_type.decode("utf-8")
        except UnicodeDecodeError:
            raise BindingError("header content-type: invalid UTF-8") from None
    validate(attributes, binary=True)
    return CloudEvent(attributes, body if body else None)


# --- entry points ---------------------------------------------------------------------------


def _split_headers(headers: Headers) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
    """One pass: the Content-Type value and the ``ce-`` headers."""
    content_type: bytes | None = None
    ce_headers: list[tuple[bytes, bytes]] = []
    for pair in headers:
        name = pair[0]
        if name[:3] == b"ce-":
            ce_headers.append(pair)
        elif name == b"content-type":
            if content_type is not None:
                raise BindingError("header content-type given twice")
            content_type = pair[1]
    return content_type, ce_headers


# What a header name is to a binary-mode request, for names seen before: the attribute of a
# valid ``ce-`` header, _CONTENT_TYPE, or _OTHER. Invalid ``ce-`` names are never cached here.
_CONTENT_TYPE = "\x00content-type"
_OTHER = ""
_HEADER_ROLE: dict[bytes, str] = {}


def _header_role(name: bytes) -> str | None:
    """The role of header ``name`` (see _HEADER_ROLE); None for an invalid ``ce-`` name."""
    if name[:3] == b"ce-":
        try:
            role = _header_attribute(name)
        except BindingError:
            return None
    else:
        role = _CONTENT_TYPE if name == b"content-type" else _OTHER
    remember(_HEADER_ROLE, name, role, max_key_length=MAX_NAME_LENGTH)
    return role


def _parse_binary_fast(headers: Headers, body: bytes) -> CloudEvent | None:
    """The common binary-mode request in one pass over the headers, or None to take the
    general path (another mode, or anything unusual: a bad or repeated header, a value that
    needs percent-decoding), which then reports precisely what is wrong."""
    attributes: dict[str, AttributeValue] = {}
    content_type: bytes | None = None
    roles = _HEADER_ROLE
    for name, raw in headers:
        role = roles.get(name)
        if role is None:
            role = _header_role(name)
            if role is None:
                return None
        if role is _OTHER:
            continue
        if role is _CONTENT_TYPE:
            if content_type is not None:
                return None
            content_type = raw
            continue
        if role in attributes:
            return None
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            return None
        if "%" in value or '"' in value:
            return None
        attributes[role] = value
    if content_type:
        if _mode(content_type) != "binary":
            return None
        try:
            attributes["datacontenttype"] = content_type.decode("utf-8")
        except UnicodeDecodeError:
            return None
    # The usual 1.0 event needs only these checks of validate's (C1-C5, C14): no time, subject
    # or dataschema to check, datacontenttype non-empty by construction. Anything else, and
    # every error, goes through validate, which says precisely what is wrong.
    get = attributes.get
    if not (
        get("specversion") == "1.0"
        and get("id")
        and get("source")
        and get("type")
        and "time" not in attributes
        and "subject" not in attributes
        and "dataschema" not in attributes
        and "".join(attributes.values()).isprintable()  # type: ignore[arg-type]
    ):
        validate(attributes, binary=True)
    return CloudEvent(attributes, body if body else None)


def parse_request(headers: Headers, body: bytes) -> list[CloudEvent]:
    """The events an HTTP request carries: one (binary, structured) or any number (batch)."""
    event = _parse_binary_fast(headers, body)
    if event is not None:
        return [event]
    content_type, ce_headers = _split_headers(headers)
    mode = _mode(content_type)
    if mode == "binary":
        return [_parse_binary(ce_headers, content_type, body)]
    if mode == "structured":
        return [parse_structured(body)]
    return parse_batch(body)


def parse_response(headers: Headers, body: bytes) -> CloudEvent | None:
    """The event in a subscriber's 2xx reply, or ``None`` when the reply carries none.

    No event: an empty body with no ``ce-`` headers, a binary-mode reply without
    ``ce-specversion``, or an empty batch. A reply that tries to be an event and is malformed
    raises :class:`BindingError`, as does a batch of more than one event.
    """
    content_type, ce_headers = _split_headers(headers)
    if not body and not ce_headers:
        return None
    mode = _mode(content_type)
    if mode == "structured":
        return parse_structured(body)
    if mode == "batch":
        events = parse_batch(body)
        if len(events) > 1:
            raise BindingError(f"a reply carries at most one event, got a batch of {len(events)}")
        return events[0] if events else None
    if not any(name == b"ce-specversion" for name, _ in ce_headers):
        return None
    return _parse_binary(ce_headers, content_type, body)


def to_binary(event: CloudEvent) -> tuple[list[tuple[str, str]], bytes]:
    """Binary mode: ``ce-`` headers (percent-encoded, C36), Content-Type and the raw data.

    On the delivery hot path: the usual event has no value that needs encoding, which one
    check of all the values joined tells (:func:`_kept_as_is`); only otherwise is each value
    encoded on its own.
    """
    headers: list[tuple[str, str]] = []
    texts: list[str] = []
    content_type: AttributeValue | None = None
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            content_type = value
            continue
        text = value if value.__class__ is str else attribute_text(value)
        texts.append(text)
        headers.append(("ce-" + name, text))
    if not _kept_as_is("".join(texts)):
        headers = [(name, encode_header_value(text)) for name, text in headers]
    if content_type is not None:
        headers.append(("content-type", attribute_text(content_type)))
    return headers, event.data if event.data is not None else b""
