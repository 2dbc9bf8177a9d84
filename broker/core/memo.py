"""Bounded memo tables for the ingress hot path.

The ingress remembers verdicts about what arrives again and again (route paths, header names,
content types, extension names). What arrives is chosen by clients, so a table must be bounded
twice: in entries, and in the length of each key it keeps (a thousand 1 MB header names would
otherwise be a gigabyte of cache). A key too long or a table full is simply not remembered: the
verdict is computed again next time. The tables are plain dicts, read with ``get`` on the hot
path (a dict subclass would make every lookup slower); only writing goes through here.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sized
from typing import TypeVar

K = TypeVar("K", bound=Sized)
V = TypeVar("V")

MAX_ENTRIES = 1024
MAX_NAME_LENGTH = 64  # header and attribute names (CloudEvents advises at most 20 characters)
MAX_VALUE_LENGTH = 256  # content types
MAX_PATH_LENGTH = 512  # ingress paths: a namespace (63) and a name (253), with room to spare


def remember(
    table: MutableMapping[K, V],
    key: K,
    value: V,
    *,
    max_key_length: int,
    max_entries: int = MAX_ENTRIES,
) -> None:
    """Keep ``key -> value`` in ``table`` if the key is short enough and the table has room."""
    if len(key) <= max_key_length and len(table) < max_entries:
        table[key] = value
