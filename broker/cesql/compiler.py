"""Syntax tree -> Python closures, built once per expression and run once per event.

Every node becomes a closure ``(event) -> value`` that returns a ``bool``, ``int`` or ``str``
or raises :class:`EvaluationError`. There is no tree walk at run time: the operator, the
implicit casts the static types call for, and the literals are all resolved here, and the
common filter shapes (``attr = 'x'``, ``attr LIKE 'x%'``, ``attr IN (...)``) get closures that
read the attribute directly.

Error semantics (CESQL v1 and its TCK):

* An operation whose operand fails to cast raises a Cast error; a unary operation's value is
  computed from the operand's zero value (``NOT 10`` is ``true``), a binary one's is the zero
  value of its result type.
* Math errors (division by zero, 32-bit overflow) and function errors carry the value the spec
  gives the operation (``5 / 0`` is ``0``, ``ABS(-2147483648)`` is ``2147483647``).
* A missing attribute raises a missingAttribute error.
* Every operation enclosing a failed one evaluates to its zero value: the error aborts the rest
  of the evaluation (AND/OR still short-circuit before reaching it). So the expression's value
  is the failing operation's own value when that operation is the root, else the zero value of
  the root's type; :class:`broker.cesql.Expression` works that out from the error's ``origin``.

Operands are evaluated left to right before they are cast, so a missing attribute on either
side is reported before a cast or math error of the operation itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from broker.cesql import ast
from broker.cesql.errors import (
    CastFailure,
    ErrorKind,
    EvaluationError,
    FunctionFailure,
    PayloadNotEnabled,
    Value,
)
from broker.cesql.functions import resolve
from broker.cesql.like import compile_like
from broker.cesql.payload import NoPayload, decoded, lookup, scalar
from broker.cesql.types import (
    CASTS,
    INT_MAX,
    INT_MIN,
    PYTHON_CLASS,
    ZERO,
    Type,
    cast_to,
    to_boolean,
    to_integer,
    to_string,
    type_of,
)
from broker.core.events import CloudEvent

__all__ = ["Compiled", "compile_tree"]

Fn = Callable[[CloudEvent], Value]

_NONE: Any = object()  # "not a constant"

CAST = ErrorKind.CAST
MATH = ErrorKind.MATH
MISSING = ErrorKind.MISSING_ATTRIBUTE


class Compiled:
    """The closure of one node plus what the compiler knows about it statically."""

    __slots__ = ("attribute", "const", "fn", "type")

    def __init__(self, fn: Fn, type_: Type, *, const: Any = _NONE, attribute: str | None = None):
        self.fn = fn
        self.type = type_
        self.const = const  # the value, when the node is a literal
        self.attribute = attribute  # the name, when the node is a plain attribute reference


class _Compiler:
    def __init__(self, *, payload: bool) -> None:
        self.payload = payload
        self.uses_payload = False
        self.static_errors: list[EvaluationError] = []

    # --- leaves ---------------------------------------------------------------------------------

    def compile(self, node: ast.Node) -> Compiled:
        method = getattr(self, f"_{type(node).__name__.lower()}")
        result: Compiled = method(node)
        return result

    def _literal(self, node: ast.Literal) -> Compiled:
        value = node.value
        return Compiled(lambda event: value, type_of(value), const=value)

    def _identifier(self, node: ast.Identifier) -> Compiled:
        name = node.name

        def attribute(event: CloudEvent) -> Value:
            value = event.attributes.get(name)
            if value is None:
                raise EvaluationError(MISSING, f"missing attribute {name!r}", False, node)
            return value

        return Compiled(attribute, Type.ANY, attribute=name)

    def _payload_path(self, node: ast.DataPath) -> tuple[str, ...]:
        if not self.payload:
            raise PayloadNotEnabled(
                f"{node.text!r} reads the event payload, which is not enabled",
                line=node.line,
                column=node.column,
                offset=node.offset,
            )
        self.uses_payload = True
        return node.path

    def _datapath(self, node: ast.DataPath) -> Compiled:
        path = self._payload_path(node)
        text = node.text

        def payload_value(event: CloudEvent) -> Value:
            try:
                document = decoded(event)
            except NoPayload as exc:
                raise EvaluationError(MISSING, f"{text}: {exc}", False, node) from None
            found = lookup(document, path)
            if found is None:
                raise EvaluationError(MISSING, f"{text} is absent from the payload", False, node)
            try:
                return scalar(found)
            except CastFailure as exc:
                raise EvaluationError(CAST, f"{text}: {exc.message}", False, node) from None

        return Compiled(payload_value, Type.ANY)

    def _exists(self, node: ast.Exists) -> Compiled:
        target = node.target
        if isinstance(target, ast.Identifier):
            name = target.name
            return Compiled(lambda event: name in event.attributes, Type.BOOLEAN)
        path = self._payload_path(target)

        def exists_in_payload(event: CloudEvent) -> bool:
            try:
                document = decoded(event)
            except NoPayload as exc:
                # No JSON payload at all: a payload filter never matches such an event, even
                # "NOT EXISTS data.x".
                raise EvaluationError(MISSING, f"{target.text}: {exc}", False, node) from None
            return lookup(document, path) is not None

        return Compiled(exists_in_payload, Type.BOOLEAN)

    # --- unary ----------------------------------------------------------------------------------

    def _unary(self, node: ast.Unary) -> Compiled:
        operand = self.compile(node.operand)
        fn = operand.fn
        if node.op == "not":
            if operand.type is Type.BOOLEAN:
                return Compiled(lambda event: not fn(event), Type.BOOLEAN)

            def not_(event: CloudEvent) -> bool:
                value = fn(event)
                if value is True:
                    return False
                if value is False:
                    return True
                try:
                    return not to_boolean(value)
                except CastFailure as exc:
                    raise EvaluationError(CAST, exc.message, True, node) from None

            return Compiled(not_, Type.BOOLEAN)

        def negate(event: CloudEvent) -> int:
            value = fn(event)
            if value.__class__ is not int:
                try:
                    value = to_integer(value)
                except CastFailure as exc:
                    raise EvaluationError(CAST, exc.message, 0, node) from None
            result = -value
            if result > INT_MAX:
                raise EvaluationError(MATH, f"-({value}) overflows 32 bits", INT_MAX, node)
            return result

        return Compiled(negate, Type.INTEGER)

    # --- binary ---------------------------------------------------------------------------------

    def _binary(self, node: ast.Binary) -> Compiled:
        op = node.op
        if op in ("and", "or", "xor"):
            return self._logic(node)
        if op in ("=", "!="):
            return self._equality(node)
        if op in ("<", "<=", ">", ">="):
            return self._ordering(node)
        return self._arithmetic(node)

    def _logic(self, node: ast.Binary) -> Compiled:
        left, right = self.compile(node.left).fn, self.compile(node.right).fn
        op = node.op

        def as_bool(value: Value) -> bool:
            if value is True or value is False:
                return value
            try:
                return to_boolean(value)
            except CastFailure as exc:
                raise EvaluationError(CAST, exc.message, False, node) from None

        if op == "and":

            def and_(event: CloudEvent) -> bool:
                a = left(event)
                if a is False or (a is not True and not as_bool(a)):
                    return False
                b = right(event)
                return b if b is True or b is False else as_bool(b)

            return Compiled(and_, Type.BOOLEAN)
        if op == "or":

            def or_(event: CloudEvent) -> bool:
                a = left(event)
                if a is True or (a is not False and as_bool(a)):
                    return True
                b = right(event)
                return b if b is True or b is False else as_bool(b)

            return Compiled(or_, Type.BOOLEAN)

        def xor(event: CloudEvent) -> bool:
            a = as_bool(left(event))
            return a != as_bool(right(event))

        return Compiled(xor, Type.BOOLEAN)

    def _equality(self, node: ast.Binary) -> Compiled:
        left, right = self.compile(node.left), self.compile(node.right)
        equal = node.op == "="
        fast = self._attribute_equals(node, left, right, equal)
        if fast is not None:
            return fast
        lfn, rfn = left.fn, right.fn
        # The right operand's type picks the overload; the left one is cast to it (spec 3.7).
        target = right.type

        def equality(event: CloudEvent) -> bool:
            a = lfn(event)
            b = rfn(event)
            if a.__class__ is not b.__class__:
                try:
                    a = cast_to(a, type_of(b) if target is Type.ANY else target)
                except CastFailure as exc:
                    raise EvaluationError(CAST, exc.message, False, node) from None
            return (a == b) is equal

        return Compiled(equality, Type.BOOLEAN)

    def _attribute_equals(
        self, node: ast.Binary, left: Compiled, right: Compiled, equal: bool
    ) -> Compiled | None:
        """``attribute = literal``: one closure, the literal's type fixed."""
        name, want = left.attribute, right.const
        if name is None or want is _NONE:
            return None
        cls = want.__class__
        target = right.type

        def attribute_equals(event: CloudEvent) -> bool:
            value = event.attributes.get(name)
            if value is None:
                raise EvaluationError(MISSING, f"missing attribute {name!r}", False, node)
            if value.__class__ is not cls:
                try:
                    value = cast_to(value, target)
                except CastFailure as exc:
                    raise EvaluationError(CAST, exc.message, False, node) from None
            return (value == want) is equal

        return Compiled(attribute_equals, Type.BOOLEAN)

    def _ordering(self, node: ast.Binary) -> Compiled:
        lfn, rfn = self.compile(node.left).fn, self.compile(node.right).fn
        compare: Callable[[int, int], bool] = {
            "<": operator.lt,
            "<=": operator.le,
            ">": operator.gt,
            ">=": operator.ge,
        }[node.op]

        def ordering(event: CloudEvent) -> bool:
            a = lfn(event)
            b = rfn(event)
            if a.__class__ is not int or b.__class__ is not int:
                try:
                    a, b = to_integer(a), to_integer(b)
                except CastFailure as exc:
                    raise EvaluationError(CAST, exc.message, False, node) from None
            return compare(a, b)

        return Compiled(ordering, Type.BOOLEAN)

    def _arithmetic(self, node: ast.Binary) -> Compiled:
        lfn, rfn = self.compile(node.left).fn, self.compile(node.right).fn
        op = node.op

        def operands(event: CloudEvent) -> tuple[int, int]:
            a = lfn(event)
            b = rfn(event)
            if a.__class__ is not int or b.__class__ is not int:
                try:
                    return to_integer(a), to_integer(b)
                except CastFailure as exc:
                    raise EvaluationError(CAST, exc.message, 0, node) from None
            return a, b

        def checked(result: int) -> int:
            if result > INT_MAX:
                raise EvaluationError(MATH, f"{op} overflows 32 bits", INT_MAX, node)
            if result < INT_MIN:
                raise EvaluationError(MATH, f"{op} overflows 32 bits", INT_MIN, node)
            return result

        if op in ("/", "%"):
            division = op == "/"

            def divide(event: CloudEvent) -> int:
                a, b = operands(event)
                if b == 0:
                    raise EvaluationError(
                        MATH, f"{'division' if division else 'modulo'} by zero", 0, node
                    )
                # Truncated division: the quotient rounds toward zero, the remainder takes the
                # sign of the dividend (Python's // and % floor instead).
                quotient = abs(a) // abs(b)
                if (a < 0) != (b < 0):
                    quotient = -quotient
                return checked(quotient) if division else a - b * quotient

            return Compiled(divide, Type.INTEGER)

        combine: Callable[[int, int], int] = {
            "+": operator.add,
            "-": operator.sub,
            "*": operator.mul,
        }[op]

        def arithmetic(event: CloudEvent) -> int:
            a, b = operands(event)
            return checked(combine(a, b))

        return Compiled(arithmetic, Type.INTEGER)

    # --- LIKE, IN -------------------------------------------------------------------------------

    def _like(self, node: ast.Like) -> Compiled:
        operand = self.compile(node.operand)
        matches = compile_like(node.pattern)
        negated = node.negated
        name = operand.attribute
        if name is not None:

            def attribute_like(event: CloudEvent) -> bool:
                value = event.attributes.get(name)
                if value is None:
                    raise EvaluationError(MISSING, f"missing attribute {name!r}", False, node)
                text = value if value.__class__ is str else to_string(value)
                return matches(text) is not negated

            return Compiled(attribute_like, Type.BOOLEAN)
        fn = operand.fn

        def like(event: CloudEvent) -> bool:
            value = fn(event)
            text = value if value.__class__ is str else to_string(value)
            return matches(text) is not negated

        return Compiled(like, Type.BOOLEAN)

    def _in(self, node: ast.In) -> Compiled:
        operand = self.compile(node.operand)
        items = [self.compile(item) for item in node.items]
        negated = node.negated
        fn = operand.fn
        # The left operand's type is the target type of every element (spec 3.7).
        if all(item.const is not _NONE for item in items):
            consts = [item.const for item in items]
            sets: dict[type, frozenset[Value] | None] = {
                cls: _cast_all(consts, target)
                for cls, target in ((str, Type.STRING), (int, Type.INTEGER), (bool, Type.BOOLEAN))
            }
            if sets[str] is not None and all(s is not None for s in sets.values()):
                by_class: dict[type, frozenset[Value]] = sets  # type: ignore[assignment]

                def in_constants(event: CloudEvent) -> bool:
                    value = fn(event)
                    return (value in by_class[value.__class__]) is not negated

                return Compiled(in_constants, Type.BOOLEAN)
        item_fns = [item.fn for item in items]

        def in_items(event: CloudEvent) -> bool:
            value = fn(event)
            target = type_of(value)
            cls = value.__class__
            for item in item_fns:
                candidate = item(event)
                if candidate.__class__ is not cls:
                    try:
                        candidate = cast_to(candidate, target)
                    except CastFailure as exc:
                        raise EvaluationError(CAST, exc.message, False, node) from None
                if candidate == value:
                    return not negated
            return negated

        return Compiled(in_items, Type.BOOLEAN)

    # --- functions ------------------------------------------------------------------------------

    def _call(self, node: ast.Call) -> Compiled:
        args = [self.compile(arg) for arg in node.args]
        function = resolve(node.name, len(args))
        if function is None:
            error = EvaluationError(
                ErrorKind.MISSING_FUNCTION,
                f"no function {node.name} taking {len(args)} argument"
                f"{'' if len(args) == 1 else 's'}",
                False,
                node,
            )
            self.static_errors.append(error)

            def missing_function(event: CloudEvent) -> Value:
                raise EvaluationError(error.kind, error.message, False, node)

            return Compiled(missing_function, Type.ANY)

        impl = function.impl
        returns = function.returns
        zero = ZERO[returns]
        params = function.param_types(len(args))
        fns = [arg.fn for arg in args]
        casts: list[Callable[[Value], Value] | None] = [
            None if param is Type.ANY or param is arg.type else CASTS[param]
            for param, arg in zip(params, args, strict=True)
        ]
        classes = [PYTHON_CLASS.get(param) for param in params]

        def call(event: CloudEvent) -> Value:
            values = [fn(event) for fn in fns]
            try:
                for index, cast in enumerate(casts):
                    if cast is not None and values[index].__class__ is not classes[index]:
                        values[index] = cast(values[index])
                return impl(*values)
            except CastFailure as exc:
                raise EvaluationError(CAST, exc.message, zero, node) from None
            except FunctionFailure as exc:
                raise EvaluationError(exc.kind, exc.message, exc.value, node) from None

        return Compiled(call, returns)


def _cast_all(values: list[Value], target: Type) -> frozenset[Value] | None:
    """The constants cast to ``target``, or None when one cannot be (decided at run time)."""
    try:
        return frozenset(cast_to(value, target) for value in values)
    except CastFailure:
        return None


def compile_tree(
    root: ast.Node, *, payload: bool
) -> tuple[Compiled, tuple[EvaluationError, ...], bool]:
    """The root's closure, the errors known before any event (missing functions), and whether
    the expression reads the payload. Raises :class:`PayloadNotEnabled`."""
    compiler = _Compiler(payload=payload)
    compiled = compiler.compile(root)
    return compiled, tuple(compiler.static_errors), compiler.uses_payload
