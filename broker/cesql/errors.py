"""CESQL errors: parse errors (with a position) and evaluation errors (with a kind and a value).

    CemeshError
    └── CesqlError
        ├── CesqlParseError        the text is not a CESQL expression (line, column, offset)
        │   └── PayloadNotEnabled  ``data.<path>`` used while payload filtering is off
        └── EvaluationError        evaluating raised one of the spec's error kinds

CESQL is total: evaluation always has a value. An :class:`EvaluationError` carries the value the
failing operation defines (``ABS(-2147483648)`` is ``2147483647``, ``NOT 10`` is ``true``) and
the node that raised it (``origin``), so the evaluator can tell the operation's own value from
the zero value every enclosing operation returns once an operand failed.
"""

from __future__ import annotations

from enum import StrEnum

from broker.core.errors import CemeshError

Value = bool | int | str


class ErrorKind(StrEnum):
    """The error kinds of CESQL v1 (the names the TCK uses)."""

    PARSE = "parse"
    MATH = "math"
    CAST = "cast"
    MISSING_FUNCTION = "missingFunction"
    FUNCTION_EVALUATION = "functionEvaluation"
    MISSING_ATTRIBUTE = "missingAttribute"
    GENERIC = "generic"


class CesqlError(CemeshError):
    """Base of every CESQL error."""


class CesqlParseError(CesqlError):
    """The expression does not parse. ``line``/``column`` are 1-based, ``offset`` 0-based."""

    kind = ErrorKind.PARSE

    def __init__(self, reason: str, *, line: int, column: int, offset: int) -> None:
        super().__init__(f"{reason} (at line {line}, column {column})")
        self.reason = reason
        self.line = line
        self.column = column
        self.offset = offset


class PayloadNotEnabled(CesqlParseError):
    """``data.<path>`` appears in an expression compiled without payload access."""


class EvaluationError(CesqlError):
    """An operation failed while evaluating; ``value`` is what that operation evaluates to."""

    def __init__(self, kind: ErrorKind, message: str, value: Value, origin: object) -> None:
        super().__init__(message)
        self.kind = kind
        self.value = value
        self.origin = origin


class CastFailure(Exception):
    """Internal: a value could not be cast. The consuming operation turns it into a Cast error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FunctionFailure(Exception):
    """Internal: a built-in function failed; ``value`` is what the function returns anyway."""

    def __init__(self, kind: ErrorKind, message: str, value: Value) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.value = value
