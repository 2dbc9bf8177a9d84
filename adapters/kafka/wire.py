"""The Kafka bus's names and wire format (pure): topic names, and events as records.

Records use the CloudEvents Kafka binding, binary mode (C71), plus two cemesh headers for what
the binding cannot say; structured-mode records (C72) of other producers are read too. See the
package's ``bus.py`` for the model.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import string
from typing import Any

from broker.core.events import AttributeValue, CloudEvent, attribute_text

TYPES_HEADER = "cemesh_attribute_types"
NO_DATA_HEADER = "cemesh_no_data"
_TYPE_NAMES = {"Integer": int, "Boolean": bool}

_LEGAL_TOPIC_CHARS = frozenset(string.ascii_letters + string.digits + ".-")
_MAX_TOPIC_LENGTH = 249


def kafka_topic(topic: str) -> str:
    """The Kafka topic of cemesh topic ``topic``: itself when legal, else an injective escape.

    Kafka topic names are 1-249 characters of ``[A-Za-z0-9._-]``, not ``.`` or ``..``. Every
    other character, and ``_`` itself (so that escapes cannot collide with plain names), becomes
    ``_<hex code point>_``; a name still too long keeps its first 232 characters plus ``-`` and
    16 hex digits of its SHA-256.
    """
    name = "".join(ch if ch in _LEGAL_TOPIC_CHARS else f"_{ord(ch):x}_" for ch in topic)
    if name in ("", ".", ".."):
        name = "".join(f"_{ord(ch):x}_" for ch in name) or "_"
    if len(name) > _MAX_TOPIC_LENGTH:
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name[: _MAX_TOPIC_LENGTH - 17]}-{digest}"
    return name


Headers = list[tuple[str, bytes]]


def encode_record(event: CloudEvent) -> tuple[bytes, Headers]:
    """The record value and headers of ``event`` (Kafka binding, binary mode, C71)."""
    headers: Headers = []
    append = headers.append
    typed: list[tuple[str, str]] | None = None
    for name, value in event.attributes.items():
        if value.__class__ is str:  # nearly every attribute: no type to record
            if name == "datacontenttype":
                append(("content-type", value.encode()))
            else:
                append(("ce_" + name, value.encode()))
            continue
        if isinstance(value, int):  # bool included
            if typed is None:
                typed = []
            typed.append((name, "Boolean" if isinstance(value, bool) else "Integer"))
        append(("ce_" + name, attribute_text(value).encode()))
    if typed:
        append((TYPES_HEADER, _types_header(tuple(typed))))
    if event.data is None:
        append((NO_DATA_HEADER, b"1"))
        return b"", headers
    return event.data, headers


@functools.lru_cache(maxsize=256)
def _types_header(typed: tuple[tuple[str, str], ...]) -> bytes:
    """The ``cemesh_attribute_types`` value (events of one source share a few; memoized)."""
    return json.dumps(dict(typed), separators=(",", ":")).encode()


@functools.lru_cache(maxsize=256)
def _parse_types_header(raw: bytes) -> tuple[tuple[str, Any], ...]:
    """The pairs of a ``cemesh_attribute_types`` value; ValueError when it is no JSON object."""
    types = json.loads(raw)
    if not isinstance(types, dict):
        raise ValueError(f"bad {TYPES_HEADER} header")
    return tuple(types.items())


def decode_record(value: bytes | None, headers: Any) -> CloudEvent:
    """The event of a record: binary mode (C71) or structured JSON (C72). ValueError otherwise."""
    attributes: dict[str, AttributeValue] = {}
    content_type: str | None = None
    types: tuple[tuple[str, Any], ...] = ()
    no_data = False
    for name, raw in headers:
        if name[:3] == "ce_":
            attributes[name[3:]] = raw.decode()
        elif name == TYPES_HEADER:
            types = _parse_types_header(raw)
        elif name == NO_DATA_HEADER:
            no_data = True
        elif name.lower() == "content-type":
            content_type = raw.decode()
    if "specversion" not in attributes:
        if content_type is not None and content_type.startswith("application/cloudevents+json"):
            return _decode_structured(value or b"")
        raise ValueError("neither a binary-mode nor a structured CloudEvents record")
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    for name, type_name in types:
        text = attributes.get(name)
        if type_name == "Boolean" and text in ("true", "false"):
            attributes[name] = text == "true"
        elif type_name == "Integer" and isinstance(text, str):
            attributes[name] = int(text)
        else:
            raise ValueError(f"bad {TYPES_HEADER} entry {name!r}: {type_name!r}")
    return CloudEvent(attributes, None if no_data or value is None else value)


def _decode_structured(value: bytes) -> CloudEvent:
    """A JSON-format event (``application/cloudevents+json``) written by another producer."""
    document = json.loads(value)
    if not isinstance(document, dict):
        raise ValueError("a structured record is not a JSON object")
    data: bytes | None = None
    if "data_base64" in document:
        data = base64.b64decode(document.pop("data_base64"))
    elif "data" in document:
        payload = document.pop("data")
        content_type = str(document.get("datacontenttype", "application/json"))
        is_json = content_type.split(";")[0].strip().endswith(("/json", "+json"))
        if isinstance(payload, str) and not is_json:
            data = payload.encode()
        else:
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    attributes: dict[str, AttributeValue] = {}
    for name, attribute in document.items():
        if isinstance(attribute, str | int | bool):
            attributes[name] = attribute
        elif attribute is not None:
            raise ValueError(f"attribute {name!r} is not a string, integer or boolean")
    if "specversion" not in attributes:
        raise ValueError("a structured record without specversion")
    return CloudEvent(attributes, data)
