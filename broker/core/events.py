"""The CloudEvent value that flows through cemesh, its extension names and its filter type.

An event is its context attributes (core attributes and extensions in one mapping, each value a
``str``, ``int`` or ``bool`` as the CloudEvents type system allows) and its ``data`` as the exact
byte sequence it arrived with (``None`` when the event has no data). Keeping data as bytes lets
every hop forward it unaltered; keeping attributes in one flat dict keeps the hot path cheap.

Events are treated as immutable once built: code that needs a changed event calls
:meth:`CloudEvent.evolve`, which copies the attribute mapping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

AttributeValue = str | int | bool

# Core attributes (CloudEvents 1.0 and 0.3).
REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")
SPEC_VERSIONS = ("1.0", "0.3")

# Extensions cemesh (like Knative) reads or writes.
ARRIVAL_TIME = "knativearrivaltime"  # K44: set by ingress on every accepted event
BROKER_TTL = "knativebrokerttl"  # K45: loop guard, decremented on every re-entry
ERROR_DEST = "knativeerrordest"  # K129: destination that failed
ERROR_CODE = "knativeerrorcode"  # K130: last HTTP status (transport error -> 500)
ERROR_DATA = "knativeerrordata"  # K131: base64 of the last response body, <= 1024 chars
PARTITION_KEY = "partitionkey"  # CloudEvents partitioning extension (ordering key)

DEFAULT_MAX_TTL = 255


@dataclass(slots=True)
class CloudEvent:
    """One CloudEvent: attributes (core + extensions) and raw data bytes."""

    attributes: dict[str, AttributeValue]
    data: bytes | None = None

    @property
    def id(self) -> str:
        return str(self.attributes["id"])

    @property
    def source(self) -> str:
        return str(self.attributes["source"])

    @property
    def type(self) -> str:
        return str(self.attributes["type"])

    @property
    def specversion(self) -> str:
        return str(self.attributes["specversion"])

    @property
    def datacontenttype(self) -> str | None:
        value = self.attributes.get("datacontenttype")
        return None if value is None else str(value)

    def get(self, name: str) -> AttributeValue | None:
        return self.attributes.get(name)

    def evolve(
        self,
        *,
        set: Mapping[str, AttributeValue] | None = None,
        remove: tuple[str, ...] = (),
    ) -> CloudEvent:
        """A copy with ``set`` attributes added or replaced and ``remove`` ones dropped."""
        attributes = dict(self.attributes)
        for name in remove:
            attributes.pop(name, None)
        if set:
            attributes.update(set)
        return CloudEvent(attributes, self.data)

    @property
    def key(self) -> str | None:
        """The ordering / partition key (the ``partitionkey`` extension), if any."""
        value = self.attributes.get(PARTITION_KEY)
        return None if value is None else str(value)


def attribute_text(value: AttributeValue) -> str:
    """Canonical string form of an attribute value (CloudEvents type system, C15)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if isinstance(value, str) else str(value)


_second_cache: list[tuple[int, str]] = [(-1, "")]


def now_rfc3339() -> str:
    """The current UTC time as an RFC 3339 timestamp with microseconds.

    On the ingress hot path (``knativearrivaltime``): the date and time of the current second are
    formatted once per second and only the microseconds per call (strftime costs ~2 us; the
    zero-padding is a slice of ``1_000_000 + micros``, cheaper than a ``:06d`` format).
    """
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    cached_second, prefix = _second_cache[0]
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0] = (second, prefix)
    return f"{prefix}.{str(1_000_000 + fraction)[1:]}Z"


def new_event(
    *,
    type: str,
    source: str,
    data: bytes | None = None,
    datacontenttype: str | None = None,
    id: str | None = None,
    extensions: Mapping[str, AttributeValue] | None = None,
    time: str | None = None,
) -> CloudEvent:
    """Build a CloudEvents 1.0 event, generating ``id`` (UUID) and ``time`` when absent."""
    attributes: dict[str, AttributeValue] = {
        "specversion": "1.0",
        "id": id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": time or now_rfc3339(),
    }
    if datacontenttype is not None:
        attributes["datacontenttype"] = datacontenttype
    if extensions:
        attributes.update(extensions)
    return CloudEvent(attributes, data)


# -- The envelope: one event as bytes, for buses that carry opaque payloads ---------------------
#
# Layout: one flag byte (b"\x00" no data, b"\x01" data), the attributes as a JSON object (orjson
# escapes every newline inside strings, so the first b"\n" ends it), b"\n", then the data bytes
# exactly as received. Attribute types (int, bool extensions) survive, unlike header mappings.

_NO_DATA = b"\x00"
_HAS_DATA = b"\x01"


def encode_envelope(event: CloudEvent) -> bytes:
    """The event as one byte string that :func:`decode_envelope` turns back into it, unaltered."""
    head = orjson.dumps(event.attributes)
    if event.data is None:
        return _NO_DATA + head + b"\n"
    return _HAS_DATA + head + b"\n" + event.data


def decode_envelope(payload: bytes) -> CloudEvent:
    """The event :func:`encode_envelope` wrote. Raises ValueError for anything else."""
    flag, rest = payload[:1], payload[1:]
    head, newline, data = rest.partition(b"\n")
    if flag not in (_NO_DATA, _HAS_DATA) or not newline:
        raise ValueError("not a cemesh event envelope")
    attributes = orjson.loads(head)
    if not isinstance(attributes, dict):
        raise ValueError("not a cemesh event envelope: attributes are not an object")
    return CloudEvent(attributes, data if flag == _HAS_DATA else None)


# A compiled filter: does this event pass? (Triggers' filters, EventPolicies' filters.)
EventFilter = Callable[[CloudEvent], bool]


def match_all(event: CloudEvent) -> bool:
    """The filter of a Trigger with no filter (K75)."""
    return True
