"""The CESQL type system: Boolean, Integer (32-bit signed), String, and the casts between them.

Values are plain Python ``bool``, ``int`` and ``str``. Because ``bool`` is a subclass of
``int``, type tests compare ``value.__class__`` and never use ``isinstance``.

Implicit casts (what an operator applies to its operands) follow the CESQL v1 TCK:
String -> Integer parses a decimal (optional sign) in range; String -> Boolean accepts
``true``/``false`` in any case; Boolean -> Integer is 1/0; anything -> String is its canonical
text. Integer -> Boolean is a Cast error implicitly (``NOT 10``) but allowed through ``BOOL()``
(non-zero is true).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum

from broker.cesql.errors import CastFailure, Value

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


class Type(StrEnum):
    BOOLEAN = "Boolean"
    INTEGER = "Integer"
    STRING = "String"
    ANY = "Any"  # known only at run time: an attribute or payload value


ZERO: dict[Type, Value] = {
    Type.BOOLEAN: False,
    Type.INTEGER: 0,
    Type.STRING: "",
    Type.ANY: False,  # the TCK's result for a failing bare identifier
}


def type_of(value: Value) -> Type:
    cls = value.__class__
    if cls is bool:
        return Type.BOOLEAN
    if cls is int:
        return Type.INTEGER
    return Type.STRING


def in_range(value: int) -> bool:
    return INT_MIN <= value <= INT_MAX


def to_integer(value: Value) -> int:
    cls = value.__class__
    if cls is int:
        return value  # type: ignore[return-value]
    if cls is bool:
        return 1 if value else 0
    if cls is str and _INTEGER_TEXT.fullmatch(value):  # type: ignore[arg-type]
        number = int(value)
        if in_range(number):
            return number
        raise CastFailure(f"cannot cast {value!r} to Integer: out of the 32-bit range")
    raise CastFailure(f"cannot cast {_show(value)} to Integer")


def to_boolean(value: Value) -> bool:
    """Implicit cast to Boolean: a Boolean, or the String ``true``/``false`` in any case."""
    cls = value.__class__
    if cls is bool:
        return value  # type: ignore[return-value]
    if cls is str:
        lowered = value.lower()  # type: ignore[union-attr]
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    raise CastFailure(f"cannot cast {_show(value)} to Boolean")


def to_boolean_explicit(value: Value) -> bool:
    """``BOOL(x)``: the implicit cast, plus Integer -> Boolean (non-zero is true)."""
    if value.__class__ is int:
        return value != 0
    return to_boolean(value)


def to_string(value: Value) -> str:
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[return-value]
    if cls is bool:
        return "true" if value else "false"
    return str(value)


# The implicit cast to each concrete type, and the Python class of its values.
CASTS: dict[Type, Callable[[Value], Value]] = {
    Type.BOOLEAN: to_boolean,
    Type.INTEGER: to_integer,
    Type.STRING: to_string,
}
PYTHON_CLASS: dict[Type, type] = {Type.BOOLEAN: bool, Type.INTEGER: int, Type.STRING: str}


def cast_to(value: Value, target: Type) -> Value:
    if target is Type.BOOLEAN:
        return to_boolean(value)
    if target is Type.INTEGER:
        return to_integer(value)
    if target is Type.STRING:
        return to_string(value)
    return value


def _show(value: Value) -> str:
    return f"{type_of(value).value} {to_string(value)!r}"
