"""The Redis Streams bus's pure rules: names, the entry format, stream ids, trimming, redelivery
arithmetic and which driver errors are worth retrying (see the package's ``bus.py`` for the
model)."""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from redis.exceptions import AuthenticationError, AuthorizationError, RedisError, ResponseError

from broker.core.events import CloudEvent, decode_envelope, encode_envelope
from broker.dataplane.bus import Message

EVENT_FIELD = b"e"
KEY_FIELD = b"k"

# Error replies after which the same command may succeed later (memory freed, failover done...).
_RETRYABLE_REPLIES = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MASTERDOWN",
    "NOREPLICAS",
    "CLUSTERDOWN",
)


def stream_key(topic: str) -> str:
    """The stream of ``topic``: the topic itself (Redis keys are binary-safe)."""
    return topic


def group_name(group: str) -> str:
    """The consumer group of ``group``: the name itself (group names are binary-safe)."""
    return group


def consumer_name() -> str:
    """A consumer name of its own for one subscription: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def retryable(exc: BaseException) -> bool:
    """Whether the command that raised ``exc`` may succeed if sent again."""
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_RETRYABLE_REPLIES)
    return isinstance(exc, RedisError | OSError)


def release_idle_ms(visibility_ms: int, delay: float) -> int | None:
    """The XCLAIM ``IDLE`` that makes an entry claimable ``delay`` seconds from now (XAUTOCLAIM
    takes entries idle for ``visibility_ms``); None when the delay is longer than that."""
    idle = visibility_ms - math.ceil(max(delay, 0.0) * 1000)
    return idle if idle >= 0 else None


def _parse_id(stream_id: bytes | str) -> tuple[int, int]:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def successor(stream_id: bytes | str) -> str:
    """The smallest stream id after ``stream_id``."""
    ms, seq = _parse_id(stream_id)
    return f"{ms}-{seq + 1}"


def trim_floor(last_generated: bytes | str, groups: Iterable[tuple[bytes | str, Any]]) -> str:
    """The MINID below which no group needs anything.

    ``groups`` holds, per group, its last delivered id and its oldest pending id (None when
    nothing is pending): a group needs its pending entries and everything not yet delivered.
    With no group, nothing up to ``last_generated`` is needed.
    """
    needed = [
        _parse_id(oldest) if oldest is not None else _parse_id(successor(last_delivered))
        for last_delivered, oldest in groups
    ]
    if not needed:
        needed = [_parse_id(successor(last_generated))]
    ms, seq = min(needed)
    return f"{ms}-{seq}"


def decode_message(fields: Mapping[bytes, bytes], attempt: int) -> Message:
    """The message of one stream entry. Raises ValueError for an entry that is not ours."""
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        raise ValueError(f"no {EVENT_FIELD.decode()!r} field: not a cemesh event entry")
    raw_key = fields.get(KEY_FIELD)
    key = None if raw_key is None else raw_key.decode("utf-8", "surrogatepass")
    return Message(decode_envelope(payload), key, attempt)


def encode_fields(event: CloudEvent, key: str | None) -> dict[bytes, bytes]:
    fields = {EVENT_FIELD: encode_envelope(event)}
    if key is not None:
        fields[KEY_FIELD] = key.encode("utf-8", "surrogatepass")
    return fields
