"""The CloudEvents HTTP protocol binding: HTTP message <-> :class:`CloudEvent`, strictly.

This module owns the wire mapping of events over HTTP in all three content modes (binary,
structured JSON, batched JSON), for CloudEvents 1.0 and 0.3, in both directions, and the
validation that decides whether a message is a CloudEvent at all. It does no I/O: callers hand
in ASGI-style headers (a sequence of ``(name, value)`` byte pairs, names lower-case, as every
ASGI server and the ``http`` crate deliver them) and the body, and get events or a
:class:`~broker.errors.BindingError` whose message names the header or attribute at fault
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
  :func:`_raw_members`, off the hot path); a body nested deeper than orjson reads
  (:data:`MAX_JSON_DEPTH`) is a 400 naming that limit (binary mode has no limit: data is opaque)
- both: ``id``/``source``/``type`` non-empty (K40, K48, C1-C5), ``time`` RFC 3339 (C10),
  ``dataschema`` absolute URI (C8), ``subject`` non-empty (C9), no control characters (C14);
  the version is never changed (K32)
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import date
from typing import Any, Literal
from urllib.parse import quote, unquote_to_bytes

import orjson

from broker.errors import BindingError
from broker.events import AttributeValue, CloudEvent, attribute_text
from broker.memo import MAX_NAME_LENGTH, MAX_VALUE_LENGTH, remember

Headers = Sequence[tuple[bytes, bytes]]
ContentMode = Literal["binary", "structured", "batch"]

SUPPORTED_SPEC_VERSIONS = ("1.0", "0.3")
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"  # C42
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json; charset=UTF-8"  # C45

# Core attributes per version; in structured mode these must be JSON strings. Anything else is
# an extension (string, integer or boolean). 0.3's `schemaurl` and `datacontentencoding` are
# plain extensions in a 1.0 event, and 1.0's `dataschema` is one in a 0.3 event.
_CORE_V1 = frozenset(
    ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time")
)
_CORE_V03 = frozenset(
    (
        "specversion",
        "id",
        "source",
        "type",
        "datacontenttype",
        "datacontentencoding",
        "schemaurl",
        "subject",
        "time",
    )
)
_CORE = {"1.0": _CORE_V1, "0.3": _CORE_V03}
_SUPPORTED_TEXT = ", ".join(SUPPORTED_SPEC_VERSIONS)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_NAME = re.compile(r"[a-z0-9]+")  # C16
# C14: C0 and C1 controls, DEL, unpaired surrogates and Unicode noncharacters.
_BAD_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(p * 0x10000 + 0xFFFE)}{chr(p * 0x10000 + 0xFFFF)}" for p in range(17))
    + "]"
)
# C10: RFC 3339 date-time (section 5.6), `T`/`Z` in either case, leap second allowed. The day
# of month is range-checked here and against the month (and leap years) in `_check_time`.
_RFC3339 = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"[Tt](?:[01]\d|2[0-3]):[0-5]\d:(?:[0-5]\d|60)(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
# RFC 3986 characters: unreserved, reserved and %HH escapes (no spaces, no non-ASCII).
_URI_CHARS = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:" + _URI_CHARS)  # C8
_URI_REFERENCE = re.compile(_URI_CHARS)  # 0.3 schemaurl
_QUOTED_STRING_BODY = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)  # RFC 7230 section 3.2.6
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# C36/C37: kept as they are when encoding: printable ASCII except `"` and `%`.
_SAFE_HEADER_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')

# Memo tables: the same few header names and content types arrive on every request. Written
# only through memo.remember, which bounds them in entries and key length.
_HEADER_ATTRIBUTE: dict[bytes, str] = {}
_EXTENSION_NAMES: dict[str, bool] = {}
_MODE_BY_CONTENT_TYPE: dict[bytes, ContentMode] = {}
_JSON_MEDIA_TYPE: dict[str, bool] = {}


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


def _is_json_media_type(content_type: str | None) -> bool:
    """``*/json`` or ``*/*+json``, parameters ignored; no type at all means JSON (C55, C56)."""
    if content_type is None:
        return True
    verdict = _JSON_MEDIA_TYPE.get(content_type)
    if verdict is None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        verdict = media_type.endswith("/json") or media_type.endswith("+json")
        remember(_JSON_MEDIA_TYPE, content_type, verdict, max_key_length=MAX_VALUE_LENGTH)
    return verdict


# --- header values (C35-C41) ---------------------------------------------------------------


def encode_header_value(value: str) -> str:
    """Percent-encode an attribute's canonical string for a ``ce-`` header (C36, C37).

    Printable ASCII other than ``"`` and ``%`` is kept; everything else (space, controls,
    non-ASCII) becomes the ``%XY`` upper-case hex of its UTF-8 bytes, so
    ``Euro € 😀`` -> ``Euro%20%E2%82%AC%20%F0%9F%98%80`` (C41).
    """
    if (
        value.isascii()
        and value.isprintable()
        and " " not in value
        and '"' not in value
        and "%" not in value
    ):
        return value
    try:
        return quote(value, safe=_SAFE_HEADER_CHARS)
    except UnicodeEncodeError as exc:
        raise BindingError(
            f"cannot encode {value[exc.start : exc.end]!r} (an unpaired surrogate) in a header"
        ) from None


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


# --- validation common to every mode ------------------------------------------------------


def _where(name: str, binary: bool) -> str:
    if not binary:
        return ""
    return " (header content-type)" if name == "datacontenttype" else f" (header ce-{name})"


def _bad_char_message(name: str, value: str, binary: bool) -> str | None:
    found = _BAD_CHAR.search(value)
    if found is None:
        return None
    return (
        f"attribute '{name}' contains U+{ord(found.group()):04X} at offset {found.start()}: "
        f"control characters and noncharacters are not allowed (C14){_where(name, binary)}"
    )


def _check_time(value: str, binary: bool) -> None:
    if _RFC3339.fullmatch(value) is not None:
        if value[8:10] < "29":
            return
        try:  # the regex allows day 29-31 in every month; the calendar decides.
            date.fromisoformat(value[:10])
            return
        except ValueError:
            pass
    raise BindingError(
        f"attribute 'time' is not an RFC 3339 timestamp: {value!r} (C10){_where('time', binary)}"
    )


def _validate(attributes: dict[str, AttributeValue], binary: bool) -> None:
    """Check the required attributes (K40, K48, C1-C5) and the value rules (C8-C10, C14)."""
    specversion = attributes.get("specversion")
    if specversion not in SUPPORTED_SPEC_VERSIONS:
        if specversion is None:
            raise BindingError(
                f"missing required attribute 'specversion'{_where('specversion', binary)}"
            )
        raise BindingError(
            f"unsupported specversion {specversion!r} (supported: {_SUPPORTED_TEXT})"
            f"{_where('specversion', binary)}"
        )
    get = attributes.get
    if not (get("id") and get("source") and get("type")):
        for name in ("id", "source", "type"):
            value = get(name)
            if value is None:
                raise BindingError(f"missing required attribute '{name}'{_where(name, binary)}")
            if value == "":
                raise BindingError(
                    f"required attribute '{name}' must not be empty{_where(name, binary)}"
                )
    # C14. isprintable() is false for every control character, so one call on all values
    # clears the common case; it is also false for some harmless characters (non-ASCII
    # spaces, format characters), hence the precise regex when it says no.
    if binary:  # every value is a str
        clean = "".join(attributes.values()).isprintable()  # type: ignore[arg-type]
    else:
        clean = True
        for value in attributes.values():
            if type(value) is str and not value.isprintable():
                clean = False
                break
    if not clean:
        for name, value in attributes.items():
            if type(value) is str:
                message = _bad_char_message(name, value, binary)
                if message is not None:
                    raise BindingError(message)
    time = get("time")
    if time is not None:
        _check_time(str(time), binary)
    if "subject" in attributes and attributes["subject"] == "":
        raise BindingError(
            f"attribute 'subject' must not be empty when present (C9){_where('subject', binary)}"
        )
    if "datacontenttype" in attributes and attributes["datacontenttype"] == "":
        raise BindingError("attribute 'datacontenttype' must not be empty when present (C6)")
    if specversion == "1.0":
        if "dataschema" in attributes:
            schema = attributes["dataschema"]
            if _ABSOLUTE_URI.fullmatch(str(schema)) is None:
                raise BindingError(
                    f"attribute 'dataschema' must be a non-empty absolute URI, got {schema!r} "
                    f"(C8){_where('dataschema', binary)}"
                )
    elif "schemaurl" in attributes:
        schema = attributes["schemaurl"]
        if schema == "" or _URI_REFERENCE.fullmatch(str(schema)) is None:
            raise BindingError(
                f"attribute 'schemaurl' must be a non-empty URI-reference, got {schema!r}"
                f"{_where('schemaurl', binary)}"
            )


# --- binary mode --------------------------------------------------------------------------


def _header_attribute(name: bytes) -> str:
    """The attribute a ``ce-`` header name carries, validated (C16, C17, C20, C29)."""
    attribute = _HEADER_ATTRIBUTE.get(name)
    if attribute is not None:
        return attribute
    text = name.decode("utf-8", "backslashreplace")
    attribute = text[3:]
    if _NAME.fullmatch(attribute) is None:
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
    _validate(attributes, binary=True)
    return CloudEvent(attributes, body if body else None)


# --- structured and batched mode (JSON format) --------------------------------------------


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
        if _NAME.fullmatch(name) is None:
            raise BindingError(
                f"invalid attribute name {name!r} "
                "(only lower-case letters a-z and digits 0-9 are allowed: C16)"
            )
        remember(_EXTENSION_NAMES, name, True, max_key_length=MAX_NAME_LENGTH)
    kind = type(value)
    if kind is int:
        if not _INT32_MIN <= value <= _INT32_MAX:
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
    core = _CORE.get(specversion)
    if core is None:
        raise BindingError(
            f"unsupported specversion {specversion!r} (supported: {_SUPPORTED_TEXT})"
        )
    attributes: dict[str, AttributeValue] = {}
    for name, value in document.items():
        if value is None or name == "data" or name == "data_base64":
            continue  # null means unset (C52); data is handled below
        if name in core:
            if type(value) is not str:
                raise BindingError(
                    f"attribute '{name}' must be a JSON string, got {_json_type(value)} (C51)"
                )
        else:
            _check_extension(name, value)
        attributes[name] = value
    _validate(attributes, binary=False)
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
    if _is_json_media_type(None if content_type is None else str(content_type)):
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


def _raw_members(body: bytes, name: str, level: int) -> list[bytes | None]:
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


def _parse_structured(body: bytes) -> CloudEvent:
    document = _load_json(body, "structured event")
    if type(document) is not dict:
        raise BindingError(
            f"structured event: body must be a JSON object, got {_json_type(document)} (C49)"
        )
    try:
        return _event_from_json(document)
    except _DataTooDeep:
        return _event_from_json(document, _raw_members(body, "data", 1)[0])


def _parse_batch(body: bytes) -> list[CloudEvent]:
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
                raw = _raw_members(body, "data", 2) if raw is None else raw
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
    # The usual 1.0 event needs only these checks of _validate's (C1-C5, C14): no time, subject
    # or dataschema to check, datacontenttype non-empty by construction. Anything else, and
    # every error, goes through _validate, which says precisely what is wrong.
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
        _validate(attributes, binary=True)
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
        return [_parse_structured(body)]
    return _parse_batch(body)


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
        return _parse_structured(body)
    if mode == "batch":
        events = _parse_batch(body)
        if len(events) > 1:
            raise BindingError(f"a reply carries at most one event, got a batch of {len(events)}")
        return events[0] if events else None
    if not any(name == b"ce-specversion" for name, _ in ce_headers):
        return None
    return _parse_binary(ce_headers, content_type, body)


def to_binary(event: CloudEvent) -> tuple[list[tuple[str, str]], bytes]:
    """Binary mode: ``ce-`` headers (percent-encoded, C36), Content-Type and the raw data."""
    headers: list[tuple[str, str]] = []
    content_type: AttributeValue | None = None
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            content_type = value
        else:
            headers.append(("ce-" + name, encode_header_value(attribute_text(value))))
    if content_type is not None:
        headers.append(("content-type", attribute_text(content_type)))
    return headers, event.data if event.data is not None else b""


def _document(event: CloudEvent) -> dict[str, Any]:
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
    if _is_json_media_type(None if content_type is None else str(content_type)):
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
    return [("content-type", STRUCTURED_CONTENT_TYPE)], orjson.dumps(_document(event))


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
    body = orjson.dumps([_document(event) for event in events])
    return [("content-type", BATCH_CONTENT_TYPE)], body
