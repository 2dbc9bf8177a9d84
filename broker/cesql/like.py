"""LIKE patterns compiled once into a string test.

``%`` matches any run of characters (also none), ``_`` exactly one; ``\\%`` and ``\\_`` match
the character itself, any other backslash is literal. The common shapes (exact, prefix,
suffix, contains, prefix+suffix) become plain ``str`` methods; the rest a compiled regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["compile_like"]

_ANY = object()
_ONE = object()


def _tokens(pattern: str) -> list[object]:
    tokens: list[object] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            tokens.append("".join(literal))
            literal.clear()

    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern) and pattern[index + 1] in "%_":
            literal.append(pattern[index + 1])
            index += 2
            continue
        if char in "%_":
            flush()
            token = _ANY if char == "%" else _ONE
            if not (token is _ANY and tokens and tokens[-1] is _ANY):  # "%%" is "%"
                tokens.append(token)
        else:
            literal.append(char)
        index += 1
    flush()
    return tokens


def compile_like(pattern: str) -> Callable[[str], bool]:
    """A test of whether a string matches the LIKE ``pattern`` (the whole string)."""
    tokens = _tokens(pattern)
    if _ONE not in tokens:
        shape = tuple("%" if token is _ANY else "s" for token in tokens)
        texts = [token for token in tokens if isinstance(token, str)]
        if shape == ():
            return "".__eq__
        if shape == ("%",):
            return lambda text: True
        if shape == ("s",):
            return texts[0].__eq__
        if shape == ("s", "%"):
            prefix = texts[0]
            return lambda text: text.startswith(prefix)
        if shape == ("%", "s"):
            suffix = texts[0]
            return lambda text: text.endswith(suffix)
        if shape == ("%", "s", "%"):
            middle = texts[0]
            return lambda text: middle in text
        if shape == ("s", "%", "s"):
            head, tail = texts
            least = len(head) + len(tail)
            return lambda text: len(text) >= least and text.startswith(head) and text.endswith(tail)
    regex = "".join(
        ".*" if token is _ANY else "." if token is _ONE else re.escape(str(token))
        for token in tokens
    )
    fullmatch = re.compile(regex, re.DOTALL).fullmatch
    return lambda text: fullmatch(text) is not None
