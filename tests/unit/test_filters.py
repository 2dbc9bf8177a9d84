"""Trigger filters: legacy ``filter.attributes`` (K70-K78) and ``filters`` dialects (K79-K91)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.errors import InvalidResource
from broker.core.events import CloudEvent, match_all
from broker.dataplane.dispatch.filters import (
    canonical_text,
    compile_trigger_filter,
    validate_trigger_filters,
)


def event(**attributes: Any) -> CloudEvent:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "1",
        "source": "http://example.com/source",
        "type": "com.example.MinEvent",
    }
    base.update(attributes)
    return CloudEvent(base, None)


def legacy(attributes: dict[str, Any]) -> Any:
    predicate, _ = compile_trigger_filter({"filter": {"attributes": attributes}})
    return predicate


def filters(*elements: Any) -> Any:
    predicate, _ = compile_trigger_filter({"filters": list(elements)})
    return predicate


def rejected(spec: dict[str, Any], field: str, *fragments: str) -> InvalidResource:
    with pytest.raises(InvalidResource) as info:
        validate_trigger_filters(spec)
    assert info.value.field == field, info.value
    for fragment in fragments:
        assert fragment in info.value.reason, info.value.reason
    # compile checks too: an unvalidated spec never becomes a predicate
    with pytest.raises(InvalidResource):
        compile_trigger_filter(spec)
    return info.value


# --- legacy filter.attributes ---------------------------------------------------------------------


def test_k75_no_filter_or_empty_map_passes_every_event() -> None:
    specs: list[dict[str, Any]] = [
        {},
        {"filter": {}},
        {"filter": {"attributes": {}}},
        {"filter": None},
    ]
    for spec in specs:
        predicate, text = compile_trigger_filter(spec)
        assert predicate is match_all
        assert text == "{}"
        assert predicate(event())


def test_k70_all_attributes_must_match() -> None:
    predicate = legacy({"type": "t", "source": "s"})
    assert predicate(event(type="t", source="s"))
    assert not predicate(event(type="t", source="other"))
    assert not predicate(event(type="other", source="s"))


def test_k71_attribute_must_be_present() -> None:
    predicate = legacy({"myext": "v"})
    assert not predicate(event())
    assert predicate(event(myext="v"))


def test_k72_values_are_case_sensitive_exact_matches() -> None:
    predicate = legacy({"type": "Order.Created"})
    assert predicate(event(type="Order.Created"))
    assert not predicate(event(type="order.created"))
    assert not predicate(event(type="Order.Created.v2"))


def test_k73_empty_value_matches_any_present_value_but_not_an_unset_attribute() -> None:
    predicate = legacy({"subject": ""})
    assert predicate(event(subject="anything"))
    assert predicate(event(subject=""))
    assert not predicate(event())  # no subject: no match (IMPL)
    assert legacy({"type": ""})(event(type="whatever"))


def test_k76_lookup_names_include_schemaurl_alias_and_datamediatype() -> None:
    assert legacy({"dataschema": "http://s"})(event(dataschema="http://s"))
    assert legacy({"schemaurl": "http://s"})(event(dataschema="http://s"))
    assert legacy({"dataschema": "http://s"})(event(specversion="0.3", schemaurl="http://s"))
    typed = event(datacontenttype="Application/JSON; charset=utf-8")
    assert legacy({"datamediatype": "application/json"})(typed)
    assert legacy({"datacontenttype": "Application/JSON; charset=utf-8"})(typed)
    assert not legacy({"datamediatype": ""})(event())  # no datacontenttype: absent
    assert legacy({"time": "2020-03-21T12:34:56.78Z"})(event(time="2020-03-21T12:34:56.78Z"))
    assert legacy({"datacontentencoding": "base64"})(event(datacontentencoding="base64"))
    assert legacy({"myext": "x"})(event(myext="x"))  # any other name is an extension


def test_k77_non_string_attributes_compare_by_canonical_string() -> None:
    assert legacy({"exbool": "true"})(event(exbool=True))
    assert not legacy({"exbool": "True"})(event(exbool=True))
    assert legacy({"exint": "42"})(event(exint=42))


def test_k70_k76_several_attributes_mixing_lookups_wildcards_and_typed_values() -> None:
    predicate = legacy({"type": "t", "exint": "42", "subject": ""})
    assert predicate(event(type="t", exint=42, subject="s"))
    assert not predicate(event(type="t", exint=42))
    assert not predicate(event(type="t", exint=43, subject="s"))
    derived = legacy({"datamediatype": "application/json", "type": "", "schemaurl": "http://s"})
    assert derived(event(datacontenttype="application/json", dataschema="http://s"))
    assert not derived(event(datacontenttype="text/plain", dataschema="http://s"))
    assert not derived(event(datacontenttype="application/json"))
    exact = filters({"exact": {"type": "t", "source": "s", "exbool": "false"}})
    assert exact(event(type="t", source="s", exbool=False))
    assert not exact(event(type="t", source="s"))


def test_k74_attribute_names_must_be_lowercase_alphanumerics() -> None:
    for bad in ("Type", "my-ext", "1abc", "my_ext", "type\n", ""):
        rejected(
            {"filter": {"attributes": {bad: "x"}}},
            "spec.filter.attributes",
            "^[a-z][a-z0-9]*$" if bad else "empty",
        )


def test_k77_legacy_values_must_be_strings() -> None:
    rejected({"filter": {"attributes": {"exint": 42}}}, "spec.filter.attributes.exint", "string")


def test_legacy_filter_rejects_unknown_fields_and_non_objects() -> None:
    rejected({"filter": {"prefix": {"type": "a"}}}, "spec.filter.prefix", "spec.filters")
    rejected({"filter": "type=a"}, "spec.filter", "attributes")
    rejected({"filter": {"attributes": ["type"]}}, "spec.filter.attributes", "map")


def test_k53_filters_on_data_are_rejected() -> None:
    rejected({"filter": {"attributes": {"data": "x"}}}, "spec.filter.attributes", "payload")
    rejected({"filters": [{"exact": {"data": "x"}}]}, "spec.filters[0].exact", "payload")


# ManyTriggers conformance matrix (K78): eventing test/rekt/features/broker/feature.go.
ANY = ""
T1, T2 = "type1", "type2"
S1, S2 = "http://source1.com", "http://source2.com"
Expectations = dict[str, tuple[str, str, dict[str, str]]]
MANY_TRIGGERS_1: Expectations = {
    "dumper-1": (ANY, ANY, {}),
    "dumper-12": (T1, ANY, {}),
    "dumper-123": (ANY, S1, {}),
    "dumper-1234": (T1, S1, {}),
}
MANY_TRIGGERS_2: Expectations = {
    "dumper-12345": (ANY, ANY, {"extname1": "extval1"}),
    "dumper-123456": (ANY, ANY, {"extname1": "extval1", "extname2": "extvalue2"}),
    "dumper-1234567": (ANY, ANY, {"extname2": "extvalue2"}),
    "dumper-654321": (T1, ANY, {"extname1": "extval1"}),
    "dumper-54321": (ANY, ANY, {"extname1": ANY}),
    "dumper-4321": (ANY, S1, {"extname1": "extval1"}),
    "dumper-321": (ANY, S1, {"extname1": "extval1", "extname2": "extvalue2"}),
    "dumper-21": (ANY, S2, {"extname1": "extval1", "extname2": "extval1"}),
}


@pytest.mark.parametrize(
    ("triggers", "sent", "expected"),
    [
        (MANY_TRIGGERS_1, (T1, S1, {}), {"dumper-1", "dumper-12", "dumper-123", "dumper-1234"}),
        (MANY_TRIGGERS_1, (T1, S2, {}), {"dumper-1", "dumper-12"}),
        (MANY_TRIGGERS_1, (T2, S1, {}), {"dumper-1", "dumper-123"}),
        (MANY_TRIGGERS_1, (T2, S2, {}), {"dumper-1"}),
        (
            MANY_TRIGGERS_2,
            (T1, S1, {"extname1": "extval1"}),
            {"dumper-12345", "dumper-654321", "dumper-54321", "dumper-4321"},
        ),
        (
            MANY_TRIGGERS_2,
            (T1, S1, {"extname1": "extval1", "extname2": "extvalue2"}),
            {
                "dumper-12345",
                "dumper-123456",
                "dumper-1234567",
                "dumper-654321",
                "dumper-54321",
                "dumper-4321",
                "dumper-321",
            },
        ),
        (MANY_TRIGGERS_2, (T1, S1, {"extname2": "extvalue2"}), {"dumper-1234567"}),
        (
            MANY_TRIGGERS_2,
            (T1, S2, {"extname1": "extval1"}),
            {"dumper-12345", "dumper-654321", "dumper-54321"},
        ),
        (MANY_TRIGGERS_2, (T2, S1, {"extname1": "nonmatchingextval"}), {"dumper-54321"}),
        (MANY_TRIGGERS_2, (T2, S2, {"nonmatchingextname": "extval1"}), set()),
        (
            MANY_TRIGGERS_2,
            (T2, S2, {"extname1": "extval1", "extname2": "extvalue2"}),
            {"dumper-12345", "dumper-123456", "dumper-1234567", "dumper-54321"},
        ),
        (
            MANY_TRIGGERS_2,
            (T2, S2, {"extname1": "extval1", "nonmatchingextname": "extvalue2"}),
            {"dumper-12345", "dumper-54321"},
        ),
    ],
)
def test_k78_many_triggers_conformance_matrix(
    triggers: Expectations,
    sent: tuple[str, str, dict[str, str]],
    expected: set[str],
) -> None:
    sent_type, sent_source, sent_extensions = sent
    sample = event(type=sent_type, source=sent_source, **sent_extensions)
    matched = {
        name
        for name, (want_type, want_source, extensions) in triggers.items()
        if legacy({"type": want_type, "source": want_source, **extensions})(sample)
    }
    assert matched == expected


# --- filters dialects ---------------------------------------------------------------------------


def test_k79_filters_list_is_an_implicit_and() -> None:
    predicate = filters({"prefix": {"type": "com."}}, {"suffix": {"type": ".created"}})
    assert predicate(event(type="com.order.created"))
    assert not predicate(event(type="com.order.deleted"))
    assert not predicate(event(type="org.order.created"))


def test_k80_non_empty_filters_override_filter_and_empty_list_does_not() -> None:
    spec = {"filter": {"attributes": {"type": "a"}}, "filters": [{"exact": {"type": "b"}}]}
    predicate, text = compile_trigger_filter(spec)
    assert predicate(event(type="b"))
    assert not predicate(event(type="a"))
    assert json.loads(text) == {"filters": [{"exact": {"type": "b"}}]}

    predicate, text = compile_trigger_filter(
        {"filter": {"attributes": {"type": "a"}}, "filters": []}
    )
    assert predicate(event(type="a"))
    assert not predicate(event(type="b"))
    assert json.loads(text) == {"filter": {"attributes": {"type": "a"}}}

    predicate, _ = compile_trigger_filter({"filters": []})
    assert predicate is match_all


def test_k81_each_filter_sets_exactly_one_dialect() -> None:
    error = rejected(
        {"filters": [{"exact": {"type": "a"}}, {"exact": {"type": "a"}, "prefix": {"type": "b"}}]},
        "spec.filters[1]",
        "multiple dialects found",
        "exact, prefix",
    )
    assert "exactly one of" in error.reason
    rejected(
        {"filters": [{"regex": {"type": ".*"}}]}, "spec.filters[0].regex", "unknown filter dialect"
    )
    rejected({"filters": ["type=a"]}, "spec.filters[0]", "must be an object")
    rejected({"filters": {"exact": {"type": "a"}}}, "spec.filters", "list")


def test_k81_an_empty_filter_passes_and_null_dialects_are_unset() -> None:
    assert filters({})(event())
    assert filters({"exact": {"type": "a"}, "prefix": None})(event(type="a"))


def test_k82_exact_every_entry_must_equal_and_missing_attribute_is_false() -> None:
    predicate = filters({"exact": {"type": "t", "myext": "v"}})
    assert predicate(event(type="t", myext="v"))
    assert not predicate(event(type="t"))
    assert not predicate(event(type="T", myext="v"))
    assert filters({"exact": {"exint": "42"}})(event(exint=42))
    assert filters({"exact": {"schemaurl": "http://s"}})(event(dataschema="http://s"))


def test_k83_prefix() -> None:
    predicate = filters({"prefix": {"type": "com.example", "source": "http"}})
    assert predicate(event(type="com.example.x"))
    assert not predicate(event(type="org.example.x"))
    assert not filters({"prefix": {"myext": "a"}})(event())


def test_k84_suffix() -> None:
    predicate = filters({"suffix": {"type": ".created"}})
    assert predicate(event(type="order.created"))
    assert not predicate(event(type="order.created.v2"))
    assert not filters({"suffix": {"myext": "a"}})(event())


@pytest.mark.parametrize("dialect", ["exact", "prefix", "suffix"])
def test_k85_empty_names_and_values_are_rejected(dialect: str) -> None:
    rejected({"filters": [{dialect: {"type": ""}}]}, f"spec.filters[0].{dialect}.type", "empty")
    rejected({"filters": [{dialect: {"": "a"}}]}, f"spec.filters[0].{dialect}", "empty")
    rejected({"filters": [{dialect: {"Type": "a"}}]}, f"spec.filters[0].{dialect}", "Type")
    rejected({"filters": [{dialect: {}}]}, f"spec.filters[0].{dialect}", "at least one")
    rejected({"filters": [{dialect: {"exint": 42}}]}, f"spec.filters[0].{dialect}.exint", "string")


def test_k86_all_is_true_iff_every_nested_filter_is_true() -> None:
    predicate = filters({"all": [{"prefix": {"type": "a."}}, {"suffix": {"type": ".z"}}]})
    assert predicate(event(type="a.z"))
    assert not predicate(event(type="a.y"))
    rejected({"filters": [{"all": []}]}, "spec.filters[0].all", "at least one nested filter")


def test_k87_any_is_true_iff_one_nested_filter_is_true() -> None:
    predicate = filters({"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]})
    assert predicate(event(type="a"))
    assert predicate(event(type="b"))
    assert not predicate(event(type="c"))
    rejected({"filters": [{"any": []}]}, "spec.filters[0].any", "at least one nested filter")


def test_k88_not_negates_its_nested_filter() -> None:
    predicate = filters({"not": {"exact": {"type": "a"}}})
    assert not predicate(event(type="a"))
    assert predicate(event(type="b"))
    assert filters({"not": {"exact": {"myext": "x"}}})(event())  # missing -> false -> negated


def test_nested_errors_name_the_full_path() -> None:
    rejected(
        {"filters": [{}, {"any": [{"exact": {"type": "a"}}, {"not": {"prefix": {"type": ""}}}]}]},
        "spec.filters[1].any[1].not.prefix.type",
        "empty",
    )


def test_k89_cesql_parse_errors_are_rejected_at_admission_with_their_position() -> None:
    # More in tests/unit/test_cesql.py; the engine itself runs the CESQL TCK.
    rejected({"filters": [{"cesql": "type = "}]}, "spec.filters[0].cesql", "line 1, column 8")
    rejected(
        {"filters": [{"any": [{"exact": {"type": "a"}}, {"cesql": "type LIKE 1"}]}]},
        "spec.filters[0].any[1].cesql",
        "invalid CESQL expression",
    )


# K90 scenarios: eventing test/rekt/features/new_trigger_filters/feature.go. The sender's events
# are sdk-go's FullEvent (matched) and MinEvent with type/source changed (unmatched).
FULL = event(type="com.example.FullEvent", source="http://example.com/source", subject="topic")
WRONG = event(type="org.wrong.type", source="org.wrong.source")


@pytest.mark.parametrize(
    "element",
    [
        {"exact": {"type": "com.example.FullEvent", "source": "http://example.com/source"}},
        {"prefix": {"type": "com.", "source": "http"}},
        {"suffix": {"type": "xample.FullEvent", "source": "//example.com/source"}},
    ],
    ids=["exact", "prefix", "suffix"],
)
def test_k90_single_dialect_filters(element: dict[str, Any]) -> None:
    predicate = filters(element)
    assert predicate(FULL)
    assert not predicate(WRONG)


def test_k90_any_filter_feature_without_its_cesql_branches() -> None:
    # The conformance filter also has `not: {cesql: ...}` and `cesql` branches, rejected here
    # (K89); the types they alone would deliver ("not.type.event", "cesql.event.type") are
    # therefore left out.
    predicate = filters(
        {
            "any": [
                {"exact": {"type": "exact.event.type"}},
                {"prefix": {"type": "prefix"}},
                {"suffix": {"type": "suffix"}},
                {"not": {"prefix": {"type": "not."}}},
            ]
        }
    )
    for delivered in ("exact.event.type", "prefix.event.type", "event.type.suffix"):
        assert predicate(event(type=delivered)), delivered
    assert not predicate(event(type="not.event.type"))


def test_k90_all_filter_feature_without_its_cesql_branch() -> None:
    predicate = filters(
        {
            "all": [
                {"exact": {"type": "exact.prefix.suffix.event.type"}},
                {"prefix": {"type": "exact.prefix"}},
                {"suffix": {"type": "suffix.event.type"}},
            ]
        }
    )
    assert not predicate(event(type="not.event.type"))
    assert not predicate(event(type="exact.prefix.suffix.event"))
    assert not predicate(event(type="exact.prefix.suffix.event.suffix.event.type"))
    assert predicate(event(type="exact.prefix.suffix.event.type"))


def test_k90_multiple_triggers_with_overlapping_filters() -> None:
    first = filters({"any": [{"exact": {"type": "type1"}}, {"prefix": {"type": "both"}}]})
    second = filters({"any": [{"exact": {"type": "type2"}}, {"prefix": {"type": "both"}}]})
    outcomes = {
        "type1": (True, False),
        "both.should.match": (True, True),
        "type2": (False, True),
        "type3": (False, False),
    }
    for event_type, (to_first, to_second) in outcomes.items():
        sample = event(type=event_type)
        assert (first(sample), second(sample)) == (to_first, to_second), event_type


def test_k90_missing_extension_attribute_does_not_match() -> None:
    for dialect in ("exact", "prefix", "suffix"):
        assert not filters({dialect: {"myextension": "x"}})(event())


def test_k90_cloudevents_sql_filter_feature() -> None:
    predicate = filters(
        {"cesql": "type = 'com.example.FullEvent' AND source = 'http://example.com/source'"}
    )
    assert predicate(FULL)
    assert not predicate(WRONG)


def test_k91_filters_need_no_feature_flag() -> None:
    # GA: no annotation or setting turns them on; a bare spec compiles.
    assert filters({"exact": {"type": "a"}})(event(type="a"))


# --- canonical text -----------------------------------------------------------------------------


def test_filter_source_is_canonical_json_of_the_effective_filter() -> None:
    _, one = compile_trigger_filter({"filters": [{"exact": {"type": "a", "source": "s"}}]})
    _, two = compile_trigger_filter(
        {"filters": [{"exact": {"source": "s", "type": "a"}, "prefix": None}], "filter": {}}
    )
    assert one == two
    assert json.loads(one) == {"filters": [{"exact": {"source": "s", "type": "a"}}]}
    _, other = compile_trigger_filter({"filters": [{"exact": {"type": "b", "source": "s"}}]})
    assert other != one
    _, legacy_text = compile_trigger_filter({"filter": {"attributes": {"b": "2", "a": "1"}}})
    assert legacy_text == '{"filter":{"attributes":{"a":"1","b":"2"}}}'


def test_equal_filters_compile_once_and_values_of_other_types_never_share_the_result() -> None:
    spec = {"filters": [{"exact": {"type": "t"}}]}
    first = compile_trigger_filter(spec)
    assert compile_trigger_filter({"filters": [{"exact": {"type": "t"}}]}) is first
    assert compile_trigger_filter(spec, payload=True) is not first
    # "true" is a valid attribute name; the YAML boolean true is not, however often it is asked.
    compile_trigger_filter({"filter": {"attributes": {"true": "x"}}})
    for _ in range(2):
        with pytest.raises(InvalidResource):
            compile_trigger_filter({"filter": {"attributes": {True: "x"}}})


# --- the canonical filter text ------------------------------------------------------------------

_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True).filter(lambda name: name != "data")
# Any text, control characters, quotes, backslashes and non-ASCII included (and lone surrogates,
# which orjson refuses and json writes).
_VALUES = st.text(st.characters(exclude_categories=()), max_size=12)
_ATTRIBUTES = st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=4)
_NON_EMPTY = st.dictionaries(_NAMES, _VALUES.filter(bool), min_size=1, max_size=4)
_ELEMENTS = st.recursive(
    st.one_of(
        st.builds(lambda pairs: {"exact": pairs}, _NON_EMPTY),
        st.builds(lambda pairs: {"prefix": pairs}, _NON_EMPTY),
        st.builds(lambda pairs: {"suffix": pairs}, _NON_EMPTY),
    ),
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner),
    ),
    max_leaves=6,
)


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(_VALUES, inner, max_size=3)


@given(st.recursive(st.none() | st.booleans() | _VALUES, _containers, max_leaves=12))
def test_canonical_text_is_the_sorted_compact_json_text_of_the_value(value: Any) -> None:
    wrapped = {"value": value}
    assert canonical_text(wrapped) == _json_text(wrapped)


@given(_ATTRIBUTES)
def test_a_legacy_filters_text_is_its_canonical_json(attributes: dict[str, str]) -> None:
    _, text = compile_trigger_filter({"filter": {"attributes": attributes}})
    assert text == _json_text({"filter": {"attributes": attributes}})


@given(st.lists(_ELEMENTS, min_size=1, max_size=3), st.booleans())
def test_a_dialect_filters_text_is_its_canonical_json(
    elements: list[dict[str, Any]], payload: bool
) -> None:
    _, text = compile_trigger_filter({"filters": elements}, payload=payload)
    expected: dict[str, Any] = {"filters": elements}
    if payload:
        expected["payload"] = True
    assert text == _json_text(expected)
