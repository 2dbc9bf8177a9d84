"""Payload access for ``data.<path>`` identifiers (cemesh extension, opt-in per Trigger).

The event's data is decoded as JSON only when its ``datacontenttype`` says JSON
(``application/json``, ``text/json``, any ``+json`` suffix) or is absent (the CloudEvents JSON
default). The last decoded payload is remembered by the identity of the data ``bytes``: when the
dispatcher runs many Triggers' filters on one event, the data is parsed once.

A path walks objects by key and arrays by decimal index. JSON ``null`` counts as absent. The
value found must be a scalar: strings, booleans and integers (32-bit) map to CESQL types, a
number with a fraction maps to its JSON text (a String); objects and arrays cannot be compared.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from broker.cesql.errors import CastFailure, Value
from broker.cesql.types import in_range
from broker.core.events import CloudEvent, attribute_text

__all__ = ["NoPayload", "decoded", "lookup", "scalar"]


class NoPayload(Exception):
    """The event has no JSON data (no data, not JSON, or undecodable)."""


_ABSENT = object()
_UNDECODABLE = object()
# (data bytes, decoded document): one entry, swapped atomically as a whole tuple.
_last: tuple[object, object] = (None, None)


@lru_cache(maxsize=256)
def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def decoded(event: CloudEvent) -> Any:
    """The event's data as decoded JSON; raises :class:`NoPayload` when there is none."""
    global _last
    data = event.data
    if data is None:
        raise NoPayload("the event has no data")
    content_type = event.attributes.get("datacontenttype")
    if content_type is not None and not _is_json(attribute_text(content_type)):
        raise NoPayload(f"the event's data is not JSON (datacontenttype {content_type!r})")
    cached_data, document = _last
    if cached_data is not data:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            document = _UNDECODABLE
        _last = (data, document)
    if document is _UNDECODABLE:
        raise NoPayload("the event's data is not valid JSON")
    return document


def lookup(document: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``document``, or :data:`None` when absent (or JSON null)."""
    node = document
    for segment in path:
        if node.__class__ is dict:
            node = node.get(segment)
        elif node.__class__ is list and segment.isdigit():
            index = int(segment)
            node = node[index] if index < len(node) else None
        else:
            return None
        if node is None:
            return None
    return node


def scalar(value: Any) -> Value:
    """A CESQL value for a JSON value found in the payload (raises :class:`CastFailure`)."""
    cls = value.__class__
    if cls is str or cls is bool:
        return value
    if cls is int:
        if in_range(value):
            return value
        raise CastFailure(f"payload number {value} does not fit a 32-bit Integer")
    if cls is float:
        if value.is_integer() and in_range(int(value)):
            return int(value)
        return orjson.dumps(value).decode()
    raise CastFailure(f"payload value is a JSON {'object' if cls is dict else 'array'}")
