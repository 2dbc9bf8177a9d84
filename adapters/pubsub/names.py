"""The Pub/Sub bus's names (pure): the topic and subscription IDs of cemesh topics and groups."""

from __future__ import annotations

import hashlib
import string

# "~" and "%" are legal too, but encoded: "~" marks structure, "%" starts an escape.
_KEPT = frozenset(string.ascii_letters + string.digits + "-_.+")


def _encode(name: str) -> str:
    return "".join(
        char if char in _KEPT else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in name
    )


def _fit(encoded: str) -> str:
    """``encoded`` if it is a valid Pub/Sub ID, else its marked form (see the module docstring)."""
    if (
        3 <= len(encoded) <= 255
        and encoded[0] in string.ascii_letters
        and not encoded.lower().startswith("goog")
    ):
        return encoded
    if len(encoded) <= 252:
        return "xx~" + encoded  # three characters at least
    return "h~" + encoded[:150] + "~" + hashlib.sha256(encoded.encode()).hexdigest()


def topic_id(topic: str) -> str:
    """The Pub/Sub topic ID of a cemesh topic (injective; cemesh's own names are kept)."""
    return _fit(_encode(topic))


def subscription_id(topic: str, group: str) -> str:
    """The Pub/Sub subscription ID of consumer group ``group`` of ``topic`` (injective)."""
    return _fit(_encode(group) + "~" + _encode(topic))
