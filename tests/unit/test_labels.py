"""Label selectors have one rule, Kubernetes' own (broker/core/labels.py, issue 12)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.errors import InvalidResource
from broker.core.labels import (
    check_label_selector,
    is_label_key,
    is_label_value,
    label_selector_matches,
)

FIELD = "spec.selector"

name_chars = st.sampled_from("abcXYZ019-_.")
alnum = st.sampled_from("abcXYZ019")
label_names = st.builds(
    lambda first, middle, last: first + middle + last,
    alnum,
    st.text(name_chars, max_size=40),
    alnum,
)


@given(label_names)
def test_label_names_of_kubernetes_characters_are_keys_and_values(name: str) -> None:
    assert is_label_key(name)
    assert is_label_key(f"example.com/{name}")
    assert is_label_value(name)


@pytest.mark.parametrize(
    "key", ["", "-app", "app-", "a" * 64, "Example.com/app", "/app", "a/b/c", "app name", 7]
)
def test_malformed_label_keys_are_refused(key: object) -> None:
    assert not is_label_key(key)


@pytest.mark.parametrize("value", ["-x", "x-", "a" * 64, "white space", "ünï"])
def test_malformed_label_values_are_refused(value: str) -> None:
    assert not is_label_value(value)


def test_the_empty_label_value_is_allowed() -> None:
    assert is_label_value("")


@pytest.mark.parametrize(
    ("selector", "field", "message"),
    [
        ([], FIELD, "must be a label selector"),
        ({"matchFields": {}}, f"{FIELD}.matchFields", "unknown field"),
        ({"matchLabels": ["app"]}, f"{FIELD}.matchLabels", "must be a map"),
        ({"matchLabels": {"-app": "x"}}, f"{FIELD}.matchLabels", "invalid label key"),
        ({"matchLabels": {"app": 1}}, f"{FIELD}.matchLabels[app]", "must be a string"),
        ({"matchLabels": {"app": "no way"}}, f"{FIELD}.matchLabels[app]", "invalid label value"),
        ({"matchExpressions": {}}, f"{FIELD}.matchExpressions", "must be a list"),
        ({"matchExpressions": ["app"]}, f"{FIELD}.matchExpressions[0]", "must be {key"),
        (
            {"matchExpressions": [{"operator": "Exists"}]},
            f"{FIELD}.matchExpressions[0].key",
            "is required",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Has"}]},
            f"{FIELD}.matchExpressions[0].operator",
            "must be one of In, NotIn, Exists, DoesNotExist",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In"}]},
            f"{FIELD}.matchExpressions[0].values",
            "must be non-empty for In",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
            f"{FIELD}.matchExpressions[0].values",
            "must be empty for Exists",
        ),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]},
            f"{FIELD}.matchExpressions[0].values[0]",
            "invalid label value",
        ),
    ],
)
def test_bad_selectors_are_refused_naming_the_field(
    selector: object, field: str, message: str
) -> None:
    with pytest.raises(InvalidResource) as caught:
        check_label_selector(selector, FIELD)
    assert caught.value.field == field
    assert message in caught.value.reason


@pytest.mark.parametrize(
    "selector",
    [
        None,
        {},
        {"matchLabels": {"app.kubernetes.io/name": "shop", "tier": ""}},
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db", "cache"]}]},
        {"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
    ],
)
def test_kubernetes_selectors_are_accepted(selector: Any) -> None:
    check_label_selector(selector, FIELD)


labels_maps = st.dictionaries(label_names, label_names, max_size=4)


@given(labels_maps)
def test_the_empty_selector_selects_everything(labels: dict[str, str]) -> None:
    assert label_selector_matches({}, labels)


@given(labels_maps)
def test_a_selector_of_an_objects_own_labels_selects_it(labels: dict[str, str]) -> None:
    assert label_selector_matches({"matchLabels": labels}, labels)
    expressions = [
        {"key": key, "operator": "In", "values": [value]} for key, value in labels.items()
    ]
    assert label_selector_matches({"matchExpressions": expressions}, labels)
