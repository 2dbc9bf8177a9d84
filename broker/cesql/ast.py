"""The CESQL syntax tree the parser builds and the compiler turns into closures.

Nodes are immutable and carry the 1-based ``line``/``column`` where they start, so later checks
(unknown function, payload access not enabled) can point at the right place.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.cesql.errors import Value


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    line: int
    column: int
    offset: int


@dataclass(frozen=True, slots=True, eq=False)
class Literal(Node):
    value: Value


@dataclass(frozen=True, slots=True, eq=False)
class Identifier(Node):
    """A context attribute or extension, by its lower-cased name."""

    name: str


@dataclass(frozen=True, slots=True, eq=False)
class DataPath(Node):
    """``data.a.b``: a value inside the event's JSON data (payload filtering, opt-in)."""

    path: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True, eq=False)
class Exists(Node):
    target: Identifier | DataPath


@dataclass(frozen=True, slots=True, eq=False)
class Unary(Node):
    op: str  # "not" | "-"
    operand: Node


@dataclass(frozen=True, slots=True, eq=False)
class Binary(Node):
    op: str  # "and" "or" "xor" "=" "!=" "<" "<=" ">" ">=" "+" "-" "*" "/" "%"
    left: Node
    right: Node


@dataclass(frozen=True, slots=True, eq=False)
class Like(Node):
    operand: Node
    pattern: str
    negated: bool


@dataclass(frozen=True, slots=True, eq=False)
class In(Node):
    operand: Node
    items: tuple[Node, ...]
    negated: bool


@dataclass(frozen=True, slots=True, eq=False)
class Call(Node):
    name: str  # upper-cased
    args: tuple[Node, ...]
