"""CESQL v1, case by case from the specification: every operator, function, cast and error kind.

The project's own table, written from the CESQL 1.0 text (sections 2 to 3.7): literals,
identifiers, unary and binary operators with their precedence, LIKE, IN, EXISTS, every built-in
function, implicit and explicit casts, and what evaluation returns when it fails. CESQL is
total: a failing operation still has a value (its documented result, or the zero value of its
return type: ``false``, ``0``, ``''``) and the error is reported beside it. Each case states
both. Expressions that are not CESQL must be refused when compiled (a parse error).

The ``../shared`` TCK (test_cesql_tck.py) is an extra conformance pass over the same engine.
"""

from __future__ import annotations

from typing import Any

import pytest

from broker.cesql import CesqlParseError, ErrorKind, compile_expression
from broker.core.events import CloudEvent

MATH = ErrorKind.MATH
CAST = ErrorKind.CAST
MISSING = ErrorKind.MISSING_ATTRIBUTE
FUNCTION = ErrorKind.FUNCTION_EVALUATION
NO_FUNCTION = ErrorKind.MISSING_FUNCTION

# One event for every case: the required attributes, some optional ones and extensions of each
# CloudEvents type (String, Integer, Boolean), plus Strings that look like numbers or Booleans.
EVENT = CloudEvent(
    {
        "specversion": "1.0",
        "id": "order-1",
        "source": "/shop/orders",
        "type": "com.example.order.created",
        "subject": "Order-42",
        "time": "2024-05-30T12:00:00Z",
        "datacontenttype": "application/json",
        "sequence": "7",  # a String that casts to Integer
        "count": 12,  # an Integer extension
        "urgent": True,  # a Boolean extension
        "confirmed": "FALSE",  # a String that casts to Boolean
        "customer": "  Ada Lovelace  ",
        "big": "2147483648",  # one past the 32-bit range
        "word": "seven",
    },
    None,
)


def case(expression: str, value: Any, error: ErrorKind | None = None) -> Any:
    return pytest.param(expression, value, error, id=expression)


CASES = [
    # --- literals and identifiers (2.1, 2.2, 3.2) --------------------------------------------
    case("TRUE", True),
    case("false", False),
    case("42", 42),
    case("-42", -42),
    case("'single quoted'", "single quoted"),
    case('"double quoted"', "double quoted"),
    case("'it''s'", "it's"),
    case("'it\\'s'", "it's"),
    case('"say \\"hi\\""', 'say "hi"'),
    case("id", "order-1"),
    case("ID", "order-1"),  # identifiers are case-insensitive
    case("count", 12),  # an Integer extension keeps its type
    case("urgent", True),
    case("sequence", "7"),  # attributes are Strings unless typed otherwise
    case("specversion", "1.0"),
    case("time", "2024-05-30T12:00:00Z"),  # Timestamps are Strings
    case("missing", False, MISSING),  # an absent attribute evaluates to false, with an error
    # --- unary operators (3.4.1) -------------------------------------------------------------
    case("NOT TRUE", False),
    case("NOT urgent", False),
    case("NOT confirmed", True),  # 'FALSE' cast to Boolean
    case("NOT word", True, CAST),  # a failed cast gives the zero value, then NOT applies
    case("NOT 10", True, CAST),  # Integer to Boolean is not an implicit cast
    case("-count", -12),
    case("-sequence", -7),
    case("- - 5", 5),
    case("-word", 0, CAST),
    case("-TRUE", -1),  # Boolean to Integer is 1 / 0
    # --- arithmetic (3.4.2): truncated division, remainder takes the dividend's sign ---------
    case("1 + 2", 3),
    case("10 - 15", -5),
    case("6 * 7", 42),
    case("7 / 2", 3),
    case("-7 / 2", -3),
    case("7 / -2", -3),
    case("7 % 3", 1),
    case("-7 % 3", -1),
    case("7 % -3", 1),
    case("5 / 0", 0, MATH),
    case("5 % 0", 0, MATH),
    case("sequence + count", 19),
    case("word + 1", 0, CAST),  # a failed cast: the operation returns its zero value
    case("big + 0", 0, CAST),  # out of the 32-bit range
    case("2 + 3 * 4", 14),  # * before +
    case("(2 + 3) * 4", 20),
    case("10 - 2 - 3", 5),  # left to right
    case("100 / 10 / 5", 2),
    # --- comparison (3.4.2) -------------------------------------------------------------------
    case("1 = 1", True),
    case("1 != 2", True),
    case("1 <> 1", False),
    case("3 < 4", True),
    case("4 <= 4", True),
    case("5 > 4", True),
    case("4 >= 5", False),
    case("'a' = 'a'", True),
    case("'a' = 'A'", False),  # String equality is case-sensitive
    case("'a' != 'b'", True),
    case("TRUE = TRUE", True),
    case("TRUE <> FALSE", True),
    case("sequence = 7", True),  # the right operand's type decides the cast (3.7)
    case("7 = sequence", True),
    case("count = '12'", True),
    case("sequence < count", True),  # ordering is Integer only
    case("'10' < '9'", False),  # ... so these Strings compare as numbers
    case("urgent = 'true'", True),
    case("confirmed = FALSE", True),
    case("word = 7", False, CAST),
    case("word < 1", False, CAST),
    case("missing = ''", False, MISSING),
    case("missing != ''", False, MISSING),  # every operation on a failed operand is false
    # --- logic (3.4.2, 3.6): short-circuit AND/OR, XOR ----------------------------------------
    case("TRUE AND TRUE", True),
    case("TRUE AND FALSE", False),
    case("FALSE OR TRUE", True),
    case("FALSE OR FALSE", False),
    case("TRUE XOR FALSE", True),
    case("TRUE XOR TRUE", False),
    case("FALSE AND missing = 1", False),  # right side not evaluated: no error
    case("TRUE OR 1 / 0 = 0", True),
    case("TRUE AND missing = 1", False, MISSING),
    case("FALSE OR missing = 1", False, MISSING),
    case("urgent AND confirmed", False),
    case("urgent AND 'yes'", False, CAST),
    case("NOT FALSE AND FALSE", False),  # NOT binds tighter than AND
    case("NOT (FALSE AND FALSE)", True),
    case("1 + 1 = 2 AND 'a' = 'a'", True),  # comparison binds tighter than AND
    case("TRUE OR FALSE AND FALSE", True),
    # --- LIKE (3.4.3) -------------------------------------------------------------------------
    case("type LIKE 'com.example.%'", True),
    case("type LIKE 'com.example'", False),  # the whole value must match
    case("type LIKE '%.created'", True),
    case("type LIKE '%order%'", True),
    case("subject LIKE 'Order-__'", True),
    case("subject LIKE 'Order-_'", False),
    case("subject LIKE 'order-%'", False),  # case-sensitive
    case("'abc' LIKE 'abc'", True),
    case("'' LIKE '%'", True),
    case("'' LIKE '_'", False),
    case("'50%' LIKE '50\\%'", True),  # escaped % is literal
    case("'500' LIKE '50\\%'", False),
    case("'a_b' LIKE 'a\\_b'", True),
    case("'axb' LIKE 'a\\_b'", False),
    case("'a.b' LIKE 'a.b'", True),  # regular-expression characters are literal
    case("'aXb' LIKE 'a.b'", False),
    case("'(x)' LIKE '(%)'", True),
    case("type NOT LIKE 'com.%'", False),
    case("source NOT LIKE 'http%'", True),
    case("count LIKE '1%'", True),  # the Integer 12 is cast to the String '12'
    case("missing LIKE '%'", False, MISSING),
    # --- IN (3.4.5): the left operand's type is the target of the casts ----------------------
    case("'b' IN ('a', 'b', 'c')", True),
    case("'z' IN ('a', 'b')", False),
    case("'z' NOT IN ('a', 'b')", True),
    case("sequence IN (5, 6, 7)", True),  # sequence is a String: 7 becomes '7' ...
    case("sequence IN ('7')", True),
    case("count IN ('11', '12')", True),  # ... and count is an Integer: '12' becomes 12
    case("count IN (11, 12)", True),
    case("count IN ('eleven', 12)", False, CAST),  # a failed cast: false and the error
    case("urgent IN (TRUE)", True),
    case("1 IN (1)", True),
    case("count NOT IN (1, 2)", True),
    case("missing IN ('a')", False, MISSING),
    # --- EXISTS (3.4.4) -----------------------------------------------------------------------
    case("EXISTS id", True),  # required attributes always exist
    case("EXISTS specversion", True),
    case("EXISTS subject", True),
    case("EXISTS dataschema", False),
    case("EXISTS count", True),
    case("EXISTS missing", False),  # no error: EXISTS is how to ask
    case("NOT EXISTS missing", True),
    case("EXISTS missing AND missing = 'x'", False),
    # --- string functions (3.5.1) -------------------------------------------------------------
    case("LENGTH('hello')", 5),
    case("LENGTH('')", 0),
    case("LENGTH('héllo')", 5),  # characters, not bytes
    case("LENGTH(count)", 2),  # 12 cast to '12'
    case("LENGTH(missing)", 0, MISSING),
    case("CONCAT()", ""),
    case("CONCAT('a')", "a"),
    case("CONCAT('a', 'b', 'c')", "abc"),
    case("CONCAT(id, ':', count)", "order-1:12"),
    case("CONCAT('x', TRUE)", "xtrue"),
    case("CONCAT_WS(',', 'a', 'b', 'c')", "a,b,c"),
    case("CONCAT_WS(', ', id)", "order-1"),
    case("CONCAT_WS('-')", ""),
    case("LOWER('ÀBC')", "àbc"),
    case("UPPER(subject)", "ORDER-42"),
    case("LOWER(TRUE)", "true"),
    case("TRIM(customer)", "Ada Lovelace"),
    case("TRIM('\t x \n')", "x"),
    case("TRIM('')", ""),
    case("LEFT('abcdef', 3)", "abc"),
    case("LEFT('abc', 10)", "abc"),
    case("LEFT('abc', 0)", ""),
    case("LEFT('abc', -1)", "abc", FUNCTION),  # x returned, with an error
    case("RIGHT('abcdef', 2)", "ef"),
    case("RIGHT('abc', 3)", "abc"),
    case("RIGHT('abc', -2)", "abc", FUNCTION),
    case("LEFT(subject, sequence)", "Order-4"),  # '7' cast to Integer
    case("SUBSTRING('abcdef', 3)", "cdef"),
    case("SUBSTRING('abcdef', 1)", "abcdef"),
    case("SUBSTRING('abcdef', 6)", "f"),
    case("SUBSTRING('abcdef', -2)", "ef"),  # counted from the end
    case("SUBSTRING('abcdef', -6)", "abcdef"),
    case("SUBSTRING('abcdef', 0)", ""),
    case("SUBSTRING('abcdef', 7)", "", FUNCTION),  # past the end: '' and an error
    case("SUBSTRING('abcdef', -7)", "", FUNCTION),
    case("SUBSTRING('abcdef', 2, 3)", "bcd"),
    case("SUBSTRING('abcdef', 2, 100)", "bcdef"),  # length capped at the string's end
    case("SUBSTRING('abcdef', -3, 2)", "de"),
    case("SUBSTRING('abcdef', 2, 0)", ""),
    case("SUBSTRING('abcdef', 0, 3)", ""),
    case("SUBSTRING('abcdef', 2, -1)", "", FUNCTION),  # negative length
    case("SUBSTRING('abcdef', 9, 1)", "", FUNCTION),
    # --- math function (3.5.2) ----------------------------------------------------------------
    case("ABS(-5)", 5),
    case("ABS(5)", 5),
    case("ABS(0)", 0),
    case("ABS(sequence)", 7),
    case("ABS(-2147483647)", 2147483647),
    case("ABS(-2147483648)", 2147483647, MATH),
    case("ABS(word)", 0, CAST),
    # --- explicit casts and type checks (3.7) -------------------------------------------------
    case("INT('42')", 42),
    case("INT('-17')", -17),
    case("INT('+3')", 3),
    case("INT(TRUE)", 1),
    case("INT(FALSE)", 0),
    case("INT(count)", 12),
    case("INT('4.5')", 0, CAST),
    case("INT('')", 0, CAST),
    case("INT('2147483647')", 2147483647),
    case("INT(big)", 0, CAST),
    case("BOOL('true')", True),
    case("BOOL('False')", False),
    case("BOOL(1)", True),
    case("BOOL(0)", False),
    case("BOOL(confirmed)", False),
    case("BOOL('yes')", False, CAST),
    case("STRING(42)", "42"),
    case("STRING(-1)", "-1"),
    case("STRING(TRUE)", "true"),
    case("STRING(FALSE)", "false"),
    case("STRING(id)", "order-1"),
    case("STRING(count) = '12'", True),
    case("IS_INT('12')", True),
    case("IS_INT(sequence)", True),
    case("IS_INT(count)", True),
    case("IS_INT(word)", False),  # a check, not a cast: no error
    case("IS_INT(big)", False),
    case("IS_INT('1.0')", False),
    case("IS_BOOL('TRUE')", True),
    case("IS_BOOL(urgent)", True),
    case("IS_BOOL(confirmed)", True),
    case("IS_BOOL('1')", False),
    case("IS_BOOL(word)", False),
    # --- functions: names, arity, dispatch ----------------------------------------------------
    case("length('abc')", 3),  # function names are case-insensitive
    case("Upper('a')", "A"),
    case("NOPE(1)", False, NO_FUNCTION),
    case("LENGTH('a', 'b')", False, NO_FUNCTION),  # no LENGTH of arity 2
    case("ABS()", False, NO_FUNCTION),
    case("LENGTH(CONCAT(UPPER('ab'), LOWER('CD'))) = 4", True),  # nested invocations
]


@pytest.mark.parametrize(("expression", "value", "error"), CASES)
def test_cesql_expression_evaluates_to_the_specified_value_and_error(
    expression: str, value: Any, error: ErrorKind | None
) -> None:
    result = compile_expression(expression).evaluate(EVENT)

    assert result.value == value and result.value.__class__ is value.__class__, (
        f"{expression!r}: got {result.value!r}, expected {value!r}"
    )
    if error is None:
        assert result.error is None, f"{expression!r}: unexpected {result.error!r}"
    else:
        assert result.error is not None, f"{expression!r}: expected a {error} error"
        assert result.error.kind == error, f"{expression!r}: {result.error!r}"


@pytest.mark.parametrize(("expression", "value", "error"), CASES)
def test_cesql_filter_matches_only_an_error_free_true(
    expression: str, value: Any, error: ErrorKind | None
) -> None:
    """As a filter (spec 1.2) an expression selects an event only when it evaluates to Boolean
    ``true`` without an error: ``NOT 10`` is ``true`` with a Cast error and does not match."""
    expected = error is None and value is True
    assert compile_expression(expression).matches(EVENT) is expected


@pytest.mark.parametrize(
    "expression",
    [
        "",  # empty
        "1 +",  # dangling operator
        "(1 + 2",  # unbalanced parenthesis
        "1 + 2)",
        "'unterminated",
        "1 == 1",  # not a CESQL operator
        "a && b",
        "x LIKE y",  # the pattern must be a string literal
        "x LIKE 1",
        "x IN ()",  # a set has at least one element
        "x IN 'a'",  # ... and parentheses
        "EXISTS 'id'",  # EXISTS takes an identifier
        "EXISTS 1",
        "LENGTH('a',)",  # trailing comma
        "UPPER 'a'",
        "1 2",
        "id @ 1",  # unknown character
        "NOT",
        "TRUE AND",
        "a.b = 1",  # dotted names are not attributes (payload paths are opt-in)
        "9999999999",  # an Integer literal outside 32 bits
    ],
)
def test_an_expression_that_is_not_cesql_is_refused_when_compiled(expression: str) -> None:
    with pytest.raises(CesqlParseError):
        compile_expression(expression)


def test_evaluation_is_pure_and_the_same_expression_serves_many_events() -> None:
    """A compiled expression keeps no state between events (3: total and pure)."""
    expression = compile_expression("INT(sequence) * 2 = count")
    six = CloudEvent({**EVENT.attributes, "sequence": "6"}, None)
    assert expression.matches(six)
    assert not expression.matches(EVENT)
    assert expression.matches(six)
