"""Kubernetes labels and label selectors (``metav1.LabelSelector``): one rule, Kubernetes' own.

Owns what every kind that selects objects by label shares (EventPolicy ``spec.to``, SinkBinding
``spec.subject``, ApiServerSource ``spec.resources[].selector``, serving's SinkBinding subjects):

- :func:`check_label_selector`: admission, as the Kubernetes API server validates a selector
  (``ValidateLabelSelector``): only ``matchLabels`` and ``matchExpressions``; keys are qualified
  names (an optional DNS-subdomain prefix and ``/``, then at most 63 letters, digits, ``-``,
  ``_`` or ``.``, starting and ending with a letter or digit); ``matchLabels`` values and
  ``In``/``NotIn`` values are label values (the same characters, at most 63, or empty);
  ``In``/``NotIn`` need values, ``Exists``/``DoesNotExist`` take none.
- :func:`label_selector_matches`: whether labels satisfy a selector (every requirement; empty
  selects everything).
- :func:`label_selector_string`: the ``labelSelector`` query-string form Kubernetes prints.

Pure: errors are :class:`~broker.core.errors.InvalidResource` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from broker.core.errors import InvalidResource

SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
MAX_NAME_LENGTH = 63
MAX_PREFIX_LENGTH = 253

_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_label_key(key: object) -> bool:
    """A qualified name: optional ``prefix/`` (a DNS subdomain), then a name of at most 63."""
    if not isinstance(key, str) or not key:
        return False
    prefix, slash, name = key.rpartition("/")
    if len(name) > MAX_NAME_LENGTH or not _QUALIFIED_NAME.fullmatch(name):
        return False
    return not slash or (
        len(prefix) <= MAX_PREFIX_LENGTH and bool(_DNS1123_SUBDOMAIN.fullmatch(prefix))
    )


def is_label_value(value: object) -> bool:
    """Empty, or at most 63 letters, digits, ``-``, ``_``, ``.``, alphanumeric at both ends."""
    return isinstance(value, str) and (
        value == "" or (len(value) <= MAX_NAME_LENGTH and bool(_QUALIFIED_NAME.fullmatch(value)))
    )


def check_label_key(key: object, field: str) -> None:
    if not is_label_key(key):
        raise InvalidResource(
            field,
            f"invalid label key {key!r}: an optional DNS prefix and '/', then at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )


def check_label_value(value: object, field: str) -> None:
    if not isinstance(value, str):
        raise InvalidResource(field, f"must be a string, got {value!r}; quote it")
    if not is_label_value(value):
        raise InvalidResource(
            field,
            f"invalid label value {value!r}: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (or empty)",
        )


def check_label_selector(value: object, field: str) -> None:
    """A metav1.LabelSelector (``matchLabels``, ``matchExpressions``); None is no selector."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidResource(field, "must be a label selector: {matchLabels, matchExpressions}")
    unknown = set(value) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise InvalidResource(f"{field}.{sorted(unknown)[0]}", "unknown field of a label selector")
    labels = value.get("matchLabels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise InvalidResource(f"{field}.matchLabels", "must be a map of label to value")
        for key, item in labels.items():
            check_label_key(key, f"{field}.matchLabels")
            check_label_value(item, f"{field}.matchLabels[{key}]")
    expressions = value.get("matchExpressions")
    if expressions is None:
        return
    if not isinstance(expressions, list):
        raise InvalidResource(f"{field}.matchExpressions", "must be a list")
    for index, expression in enumerate(expressions):
        _check_expression(expression, f"{field}.matchExpressions[{index}]")


def _check_expression(expression: object, where: str) -> None:
    """One ``matchExpressions`` entry: {key, operator, values}."""
    if not isinstance(expression, Mapping):
        raise InvalidResource(where, "must be {key, operator, values}")
    key = expression.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidResource(f"{where}.key", "is required")
    check_label_key(key, f"{where}.key")
    operator = expression.get("operator")
    if operator not in SELECTOR_OPERATORS:
        raise InvalidResource(
            f"{where}.operator",
            f"must be one of {', '.join(SELECTOR_OPERATORS)}, got {operator!r}",
        )
    values = expression.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidResource(f"{where}.values", "must be a list of strings")
    if operator in ("In", "NotIn") and not values:
        raise InvalidResource(f"{where}.values", f"must be non-empty for {operator}")
    if operator in ("Exists", "DoesNotExist") and values:
        raise InvalidResource(f"{where}.values", f"must be empty for {operator}")
    for index, item in enumerate(values):
        check_label_value(item, f"{where}.values[{index}]")


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a metav1.LabelSelector (every requirement; empty: all)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def label_selector_string(selector: Mapping[str, Any] | None) -> str:
    """A metav1.LabelSelector as the ``labelSelector`` query string (``LabelSelectorAsSelector``).

    Requirements are sorted by key and values sorted, as Kubernetes prints them; an absent or
    empty selector is ``""`` (everything).
    """
    if not selector:
        return ""
    requirements: list[tuple[str, str]] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        requirements.append((key, f"{key}={value}"))
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = ",".join(sorted(expression.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }[operator]
        requirements.append((key, text))
    return ",".join(text for _, text in sorted(requirements, key=lambda r: r[0]))
