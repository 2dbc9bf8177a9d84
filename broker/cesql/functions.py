"""The built-in functions of CESQL v1, resolved by name and arity at compile time.

Each :class:`Function` declares its parameter types (the compiler casts the arguments to them
implicitly) and its return type. An implementation receives already-cast arguments; when it
fails it raises :class:`FunctionFailure` with the value the spec says it still returns
(``LEFT('abc', -2)`` is ``'abc'`` with a functionEvaluation error).

Overloads are told apart by arity (``SUBSTRING`` has 2 and 3); a variadic function has fixed
leading parameters and then any number of one type (``CONCAT_WS(sep, x...)`` needs ``sep``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker.cesql.errors import CastFailure, ErrorKind, FunctionFailure, Value
from broker.cesql.types import (
    INT_MAX,
    Type,
    in_range,
    to_boolean,
    to_boolean_explicit,
    to_integer,
    to_string,
)

__all__ = ["Function", "resolve"]

# TRIM's whitespace: space, tab, line feed, carriage return, vertical tab, form feed.
_WHITESPACE = " \t\n\r\v\f"


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    params: tuple[Type, ...]
    returns: Type
    impl: Callable[..., Value]
    variadic: Type | None = None  # the type of the arguments after ``params``, if any

    def accepts(self, arity: int) -> bool:
        if self.variadic is None:
            return arity == len(self.params)
        return arity >= len(self.params)

    def param_types(self, arity: int) -> tuple[Type, ...]:
        extra = arity - len(self.params)
        return self.params + ((self.variadic,) * extra if self.variadic is not None else ())


def _abs(x: int) -> int:
    result = abs(x)
    if not in_range(result):
        raise FunctionFailure(ErrorKind.MATH, f"ABS({x}) overflows 32 bits", INT_MAX)
    return result


def _left(x: str, n: int) -> str:
    if n < 0:
        raise FunctionFailure(ErrorKind.FUNCTION_EVALUATION, f"LEFT length {n} is negative", x)
    return x[:n]


def _right(x: str, n: int) -> str:
    if n < 0:
        raise FunctionFailure(ErrorKind.FUNCTION_EVALUATION, f"RIGHT length {n} is negative", x)
    return x[len(x) - n :] if n < len(x) else x


def _start(x: str, pos: int) -> int | None:
    """0-based start of SUBSTRING (None: position 0, the empty string)."""
    if pos > len(x) or pos < -len(x):
        raise FunctionFailure(
            ErrorKind.FUNCTION_EVALUATION,
            f"SUBSTRING position {pos} is outside a string of length {len(x)}",
            "",
        )
    if pos == 0:
        return None
    return pos - 1 if pos > 0 else len(x) + pos


def _substring(x: str, pos: int) -> str:
    start = _start(x, pos)
    return "" if start is None else x[start:]


def _substring_len(x: str, pos: int, length: int) -> str:
    if length < 0:
        raise FunctionFailure(
            ErrorKind.FUNCTION_EVALUATION, f"SUBSTRING length {length} is negative", ""
        )
    start = _start(x, pos)
    return "" if start is None else x[start : start + length]


def _is(cast: Callable[[Value], Value]) -> Callable[[Value], bool]:
    def check(x: Value) -> bool:
        try:
            cast(x)
        except CastFailure:
            return False
        return True

    return check


def _is_int(x: Value) -> bool:
    return x.__class__ is int or (x.__class__ is str and _is(to_integer)(x))


def _is_bool(x: Value) -> bool:
    return x.__class__ is bool or (x.__class__ is str and _is(to_boolean)(x))


STR, INT, BOOL, ANY = Type.STRING, Type.INTEGER, Type.BOOLEAN, Type.ANY

_BUILTINS: Sequence[Function] = (
    Function("LENGTH", (STR,), INT, len),
    Function("CONCAT", (), STR, lambda *xs: "".join(xs), variadic=STR),
    Function("CONCAT_WS", (STR,), STR, lambda sep, *xs: sep.join(xs), variadic=STR),
    Function("LOWER", (STR,), STR, str.lower),
    Function("UPPER", (STR,), STR, str.upper),
    Function("TRIM", (STR,), STR, lambda x: x.strip(_WHITESPACE)),
    Function("LEFT", (STR, INT), STR, _left),
    Function("RIGHT", (STR, INT), STR, _right),
    Function("SUBSTRING", (STR, INT), STR, _substring),
    Function("SUBSTRING", (STR, INT, INT), STR, _substring_len),
    Function("ABS", (INT,), INT, _abs),
    Function("INT", (ANY,), INT, to_integer),
    Function("BOOL", (ANY,), BOOL, to_boolean_explicit),
    Function("STRING", (ANY,), STR, to_string),
    Function("IS_INT", (ANY,), BOOL, _is_int),
    Function("IS_BOOL", (ANY,), BOOL, _is_bool),
)

_BY_NAME: dict[str, list[Function]] = {}
for _function in _BUILTINS:
    _BY_NAME.setdefault(_function.name, []).append(_function)


def resolve(name: str, arity: int) -> Function | None:
    """The built-in ``name`` taking ``arity`` arguments (fixed arity wins over variadic)."""
    candidates = [f for f in _BY_NAME.get(name.upper(), ()) if f.accepts(arity)]
    candidates.sort(key=lambda f: f.variadic is not None)
    return candidates[0] if candidates else None
