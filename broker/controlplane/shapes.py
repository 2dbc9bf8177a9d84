"""The shape checks admission makes of applied YAML: an object, a string, a list, one of two.

Pure helpers every kind's admission shares, each raising
:class:`~broker.core.errors.InvalidResource` that names the field and what it should have been
(``must be an object, got list``), so a mistake in a manifest reads the same for every kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.core.errors import InvalidResource


def type_name(value: object) -> str:
    """How a value reads in a message: ``null`` for None, else its Python type's name."""
    return "null" if value is None else type(value).__name__


def require_mapping(value: object, field: str, what: str = "an object") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidResource(field, f"must be {what}, got {type_name(value)}")
    return value


def require_string(value: object, field: str, what: str) -> str:
    """A non-empty string; ``what`` says what is expected when it is missing."""
    if value is None or value == "":
        raise InvalidResource(field, f"is required: {what}")
    if not isinstance(value, str):
        raise InvalidResource(field, f"must be a string, got {type_name(value)} {value!r}")
    return value


def optional_list(value: object, field: str, what: str) -> list[Any]:
    """A list of ``what``, or [] when absent."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidResource(field, f"must be a list of {what}, got {type_name(value)}")
    return value


def one_of(entry: Mapping[str, Any], field: str, keys: tuple[str, str]) -> str:
    """The one of ``keys`` that ``entry`` sets; refused when it sets neither or both."""
    present = [key for key in keys if entry.get(key) not in (None, "")]
    if not present:
        raise InvalidResource(field, f"needs one of {keys[0]!r} or {keys[1]!r}; neither is set")
    if len(present) == 2:
        raise InvalidResource(field, f"sets both {keys[0]!r} and {keys[1]!r}; set exactly one")
    return present[0]
