"""CloudEvents SQL (CESQL) v1: parse an expression once, evaluate it against many events.

    >>> expression = compile_expression("type LIKE 'com.example.%' AND INT(sequence) > 3")
    >>> expression.matches(event)            # the Subscriptions API filter: True / False
    >>> expression.evaluate(event)           # Result(value, error): the full CESQL outcome

Modules: :mod:`.parser` (lark LALR grammar -> :mod:`.ast`), :mod:`.compiler` (tree -> closures),
:mod:`.types` (type system and casts), :mod:`.functions` (built-ins), :mod:`.like` (LIKE
patterns), :mod:`.payload` (``data.<path>``, a cemesh extension), :mod:`.errors`.

As a filter (spec 1.2) an expression matches only when it evaluates to Boolean ``true`` without
any error. Pure: no I/O; compiled expressions are immutable and safe to share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker.cesql import ast
from broker.cesql.compiler import compile_tree
from broker.cesql.errors import (
    CesqlError,
    CesqlParseError,
    ErrorKind,
    EvaluationError,
    PayloadNotEnabled,
    Value,
)
from broker.cesql.parser import parse
from broker.cesql.types import ZERO, Type
from broker.core.events import CloudEvent

__all__ = [
    "CesqlError",
    "CesqlParseError",
    "ErrorKind",
    "EvaluationError",
    "Expression",
    "PayloadNotEnabled",
    "Result",
    "Type",
    "Value",
    "compile_expression",
    "parse",
]


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of evaluating an expression: always a value, plus the first error if any."""

    value: Value
    error: EvaluationError | None = None


class Expression:
    """A compiled CESQL expression. Build it with :func:`compile_expression`."""

    __slots__ = ("_fn", "_root", "predicate", "source", "static_errors", "type", "uses_payload")

    def __init__(self, source: str, root: ast.Node, *, payload: bool) -> None:
        compiled, static_errors, uses_payload = compile_tree(root, payload=payload)
        self.source = source
        self.type: Type = compiled.type
        #: errors every evaluation will raise, known at compile time (a missing function)
        self.static_errors: tuple[EvaluationError, ...] = static_errors
        self.uses_payload: bool = uses_payload
        self._root = root
        self._fn = compiled.fn
        #: the filter: ``True`` only for a Boolean ``true`` without error
        self.predicate: Callable[[CloudEvent], bool] = _predicate(compiled.fn, compiled.type)

    def matches(self, event: CloudEvent) -> bool:
        return self.predicate(event)

    def evaluate(self, event: CloudEvent) -> Result:
        try:
            return Result(self._fn(event))
        except EvaluationError as exc:
            # The failing operation's own value when it is the whole expression; otherwise
            # every enclosing operation, up to the root, evaluated to its zero value.
            value = exc.value if exc.origin is self._root else ZERO[self.type]
            return Result(value, exc)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def _predicate(fn: Callable[[CloudEvent], Value], type_: Type) -> Callable[[CloudEvent], bool]:
    if type_ is Type.BOOLEAN:

        def predicate(event: CloudEvent) -> bool:
            try:
                return fn(event)  # type: ignore[return-value]
            except EvaluationError:
                return False

        return predicate

    def non_boolean(event: CloudEvent) -> bool:
        try:
            return fn(event) is True
        except EvaluationError:
            return False

    return non_boolean


def compile_expression(source: str, *, payload: bool = False) -> Expression:
    """Parse and compile ``source``.

    Raises :class:`CesqlParseError` (with ``line``, ``column``, ``offset``) when it does not
    parse, and :class:`PayloadNotEnabled` (a parse error) when it reads ``data.<path>`` while
    ``payload`` is false.
    """
    return Expression(source, parse(source), payload=payload)
