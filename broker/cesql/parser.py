"""CESQL v1 text -> syntax tree (:mod:`broker.cesql.ast`), with a LALR grammar run by ``lark``.

Precedence follows the reference ANTLR grammar of the CESQL spec (what the Go and Java SDKs, and
so Knative, implement), from tightest to loosest:

1. literals, identifiers, function calls, ``EXISTS x``, parentheses
2. unary ``NOT`` and ``-`` (so ``NOT a = b`` is ``(NOT a) = b``: parenthesise)
3. ``x [NOT] LIKE 'pattern'`` and ``x [NOT] IN (...)``
4. ``*`` ``/`` ``%``
5. ``+`` ``-``
6. ``=`` ``!=`` ``<>`` ``<`` ``<=`` ``>`` ``>=``
7. ``AND`` ``OR`` ``XOR``, one level, right-associative (``a AND b OR c`` is ``a AND (b OR c)``)

Keywords, boolean literals and function names are case-insensitive; identifiers are
lower-cased. Strings are ``'...'`` or ``"..."``; inside them ``\\'`` (resp. ``\\"``) and a
doubled quote stand for the quote, every other backslash is kept (LIKE reads ``\\%``, ``\\_``).
Integer literals must fit 32 bits (``-2147483648`` is allowed: a minus before a literal folds).
``data.a.b`` (dotted) is parsed here and admitted or refused by the compiler.

Limits, checked here so that admission refuses what the compiler and evaluator (which recurse
over the tree) could not handle: an expression is at most :data:`MAX_EXPRESSION_LENGTH`
characters, and its tree at most :data:`MAX_EXPRESSION_DEPTH` operators deep (``NOT NOT x`` is
2 deep, ``a AND b AND c`` and ``1 + 2 + 3`` are 2 deep; parentheses add nothing).
"""

from __future__ import annotations

import re
from dataclasses import fields
from functools import cache
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from broker.cesql import ast
from broker.cesql.errors import CesqlParseError
from broker.cesql.types import in_range

__all__ = ["MAX_EXPRESSION_DEPTH", "MAX_EXPRESSION_LENGTH", "parse"]

MAX_EXPRESSION_LENGTH = 4096  # characters
MAX_EXPRESSION_DEPTH = 100  # nested operators, calls and IN lists

_GRAMMAR = r"""
?start: logic

?logic: comparison
      | comparison (AND | OR | XOR) logic             -> binary

?comparison: additive
           | comparison CMP_OP additive               -> binary

?additive: multiplicative
         | additive (PLUS | MINUS) multiplicative     -> binary

?multiplicative: postfix
               | multiplicative MUL_OP postfix        -> binary

?postfix: unary
        | postfix [NOT] LIKE STRING                   -> like
        | postfix [NOT] IN LPAR logic ("," logic)* ")" -> in_set

?unary: atom
      | NOT unary                                     -> unary
      | MINUS unary                                   -> unary
      | PLUS INT                                      -> plus_integer

?atom: INT                                            -> integer
     | STRING                                         -> string
     | TRUE                                           -> boolean
     | FALSE                                          -> boolean
     | NAME                                           -> identifier
     | DOTTED                                         -> data_path
     | NAME LPAR [logic ("," logic)*] ")"             -> call
     | EXISTS (NAME | DOTTED)                         -> exists
     | LPAR logic ")"                                 -> group

AND: "and"i
OR: "or"i
XOR: "xor"i
NOT: "not"i
LIKE: "like"i
IN: "in"i
EXISTS: "exists"i
TRUE: "true"i
FALSE: "false"i

CMP_OP: "!=" | "<>" | "<=" | ">=" | "=" | "<" | ">"
MUL_OP: "*" | "/" | "%"
PLUS: "+"
MINUS: "-"
LPAR: "("

DOTTED.3: /[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+/
NAME: /[0-9]*[A-Za-z_][A-Za-z0-9_]*/
INT: /[0-9]+/
STRING: /'(?:[^'\\]|\\.|'')*'/s
      | /"(?:[^"\\]|\\.|"")*"/s

%import common.WS
%ignore WS
"""

_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
_FUNCTION_NAME = re.compile(r"[A-Z][A-Z_]*")
_TOKEN_NAMES = {
    "AND": "AND",
    "OR": "OR",
    "XOR": "XOR",
    "NOT": "NOT",
    "LIKE": "LIKE",
    "IN": "IN",
    "EXISTS": "EXISTS",
    "TRUE": "TRUE",
    "FALSE": "FALSE",
    "CMP_OP": "a comparison operator",
    "MUL_OP": "'*', '/' or '%'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "DOTTED": "a data path",
    "NAME": "an identifier",
    "INT": "an integer",
    "STRING": "a string literal",
    "$END": "the end of the expression",
}


class _Unfolded(ast.Literal):
    """An integer literal not yet range-checked: ``-`` in front may still fold into it."""

    __slots__ = ()


class _Folded(_Unfolded):
    """An integer literal with its sign folded in: a second ``-`` is a negation."""

    __slots__ = ()


def _at(token: Token) -> dict[str, int]:
    return {"line": token.line or 1, "column": token.column or 1, "offset": token.start_pos or 0}


def _of(node: ast.Node) -> dict[str, int]:
    return {"line": node.line, "column": node.column, "offset": node.offset}


def _error_at(reason: str, where: Token | ast.Node) -> CesqlParseError:
    position = _at(where) if isinstance(where, Token) else _of(where)
    return CesqlParseError(reason, **position)


def _unquote(token: Token) -> str:
    quote = token[0]
    body = token[1:-1]
    # Only the delimiting quote is unescaped (as the reference SDKs do); "\%" and "\_" must reach
    # LIKE intact, and any other backslash is an ordinary character.
    return body.replace("\\" + quote, quote).replace(quote + quote, quote)


def _checked(node: ast.Node) -> ast.Node:
    """Range-check an integer literal that no minus folded into."""
    if isinstance(node, _Unfolded):
        value = node.value
        assert isinstance(value, int)
        if not in_range(value):
            raise _error_at(f"integer literal {value} does not fit in 32 bits", node)
        return ast.Literal(value=value, **_of(node))
    return node


@v_args(inline=True)
class _Builder(Transformer[Token, ast.Node]):
    def integer(self, token: Token) -> ast.Node:
        return _Unfolded(value=int(token), **_at(token))

    def plus_integer(self, plus: Token, token: Token) -> ast.Node:
        return _Folded(value=int(token), **_at(plus))

    def string(self, token: Token) -> ast.Node:
        return ast.Literal(value=_unquote(token), **_at(token))

    def boolean(self, token: Token) -> ast.Node:
        return ast.Literal(value=token.type == "TRUE", **_at(token))

    def identifier(self, token: Token) -> ast.Node:
        name = token.lower()
        if not _ATTRIBUTE_NAME.fullmatch(name):
            raise _error_at(
                f"invalid attribute name {str(token)!r}: names are letters and digits only", token
            )
        return ast.Identifier(name=name, **_at(token))

    def data_path(self, token: Token) -> ast.Node:
        head, *rest = token.split(".")
        if head.lower() != "data":
            raise _error_at(
                f"unexpected dotted name {str(token)!r}: only data.<path> (payload) is dotted",
                token,
            )
        return ast.DataPath(path=tuple(rest), text=str(token), **_at(token))

    def exists(self, keyword: Token, token: Token) -> ast.Node:
        target = self.data_path(token) if token.type == "DOTTED" else self.identifier(token)
        assert isinstance(target, ast.Identifier | ast.DataPath)
        return ast.Exists(target=target, **_at(keyword))

    def call(self, name: Token, lpar: Token, *args: ast.Node | None) -> ast.Node:
        upper = name.upper()
        if not _FUNCTION_NAME.fullmatch(upper):
            raise _error_at(f"invalid function name {str(name)!r}", name)
        arguments = tuple(_checked(arg) for arg in args if arg is not None)
        return ast.Call(name=upper, args=arguments, **_at(name))

    def group(self, lpar: Token, inner: ast.Node) -> ast.Node:
        # A parenthesised integer is a finished literal: "-(2147483648)" does not fold.
        return _checked(inner)

    def unary(self, op: Token, operand: ast.Node) -> ast.Node:
        if op.type == "MINUS":
            if isinstance(operand, _Unfolded) and not isinstance(operand, _Folded):
                value = operand.value
                assert isinstance(value, int)
                return _Folded(value=-value, **_at(op))
            return ast.Unary(op="-", operand=_checked(operand), **_at(op))
        return ast.Unary(op="not", operand=_checked(operand), **_at(op))

    def binary(self, left: ast.Node, op: Token, right: ast.Node) -> ast.Node:
        symbol = op.lower()
        if symbol == "<>":
            symbol = "!="
        return ast.Binary(op=symbol, left=_checked(left), right=_checked(right), **_of(left))

    def like(self, operand: ast.Node, negated: Token | None, _: Token, pattern: Token) -> ast.Node:
        return ast.Like(
            operand=_checked(operand),
            pattern=_unquote(pattern),
            negated=negated is not None,
            **_of(operand),
        )

    def in_set(self, operand: ast.Node, negated: Token | None, *rest: Any) -> ast.Node:
        items = tuple(_checked(item) for item in rest if not isinstance(item, Token))
        return ast.In(
            operand=_checked(operand), items=items, negated=negated is not None, **_of(operand)
        )


@cache
def _parser() -> Lark:
    return Lark(
        _GRAMMAR,
        parser="lalr",
        lexer="basic",
        transformer=_Builder(),
        maybe_placeholders=True,
    )


def parse(text: str) -> ast.Node:
    """The syntax tree of ``text``; raises :class:`CesqlParseError` with the position."""
    if not isinstance(text, str):
        raise CesqlParseError("the expression must be a string", line=1, column=1, offset=0)
    if not text.strip():
        raise CesqlParseError("the expression is empty", line=1, column=1, offset=0)
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise CesqlParseError(
            f"the expression is {len(text)} characters long; at most {MAX_EXPRESSION_LENGTH} "
            "are allowed",
            line=1,
            column=1,
            offset=0,
        )
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _translate(exc, text) from exc
    except CesqlParseError:
        raise
    assert isinstance(tree, ast.Node)
    _check_depth(tree)
    return _checked(tree)


def _children(node: ast.Node) -> list[ast.Node]:
    found: list[ast.Node] = []
    for field in fields(node):
        value = getattr(node, field.name)
        if isinstance(value, ast.Node):
            found.append(value)
        elif isinstance(value, tuple):
            found.extend(item for item in value if isinstance(item, ast.Node))
    return found


def _check_depth(tree: ast.Node) -> None:
    """Refuse a tree deeper than MAX_EXPRESSION_DEPTH (walked without recursion)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise _error_at(
                f"the expression nests more than {MAX_EXPRESSION_DEPTH} operators deep; "
                "split it or flatten it (IN lists, fewer NOTs)",
                node,
            )
        stack.extend((child, depth + 1) for child in _children(node))


def _translate(exc: UnexpectedInput, text: str) -> CesqlParseError:
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        line = text.count("\n") + 1
        column = len(text) - (text.rfind("\n") + 1) + 1
        expected = _expected(getattr(exc, "expected", None) or getattr(exc, "accepts", None))
        return CesqlParseError(
            f"unexpected end of expression{expected}", line=line, column=column, offset=len(text)
        )
    offset = exc.pos_in_stream or 0
    if isinstance(exc, UnexpectedCharacters):
        char = text[offset] if offset < len(text) else ""
        return CesqlParseError(
            f"unexpected character {char!r}", line=exc.line, column=exc.column, offset=offset
        )
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        return CesqlParseError(
            f"unexpected {str(token)!r}{_expected(exc.accepts or exc.expected)}",
            line=exc.line,
            column=exc.column,
            offset=token.start_pos or 0,
        )
    return CesqlParseError(str(exc), line=exc.line, column=exc.column, offset=offset)


def _expected(names: Any) -> str:
    if not names:
        return ""
    labels = sorted({_TOKEN_NAMES.get(name, name) for name in names})
    return f"; expected {', '.join(labels[:8])}{', ...' if len(labels) > 8 else ''}"
