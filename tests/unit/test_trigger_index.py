"""The Trigger index answers exactly what testing every Trigger's filter answers (issue 14)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.events import CloudEvent, match_all
from broker.dataplane.dispatch.filters import compile_trigger_filter
from broker.dataplane.dispatch.trigger_index import (
    Pin,
    TriggerIndex,
    choose_pin,
    pins_of,
    residual,
)

# Few names and short overlapping values, so that pins, prefixes and events collide often.
NAMES = ["type", "source", "tenant", "region", "datamediatype", "datacontenttype", "schemaurl"]
VALUES = ["a", "ab", "abc", "b", "ba", "5", "true", "text/plain", "text/plain; charset=x"]
CESQL = [
    "type = 'ab'",
    "tenant LIKE 'a%'",
    "EXISTS region",
    "INT(tenant) > 3",
    "region = 'b'",
    "tenant = '5' AND (type = 'a' AND source = 'ab')",  # pins: tenant, type, source
    "tenant = 'true' AND EXISTS region",  # a boolean extension compares as its text
    "type = 'a' OR region = 'b'",  # no pin: either may hold
    "NOT (type = 'a')",  # no pin
    "'a' = type",  # the literal's type does not pick the comparison here: no pin
    "datacontenttype = 'text/plain'",
]

names = st.sampled_from(NAMES)
values = st.sampled_from(VALUES)
attribute_maps = st.dictionaries(names, values, min_size=1, max_size=3)

leaf_filters = st.one_of(
    st.builds(lambda m: {"exact": m}, attribute_maps),
    st.builds(lambda m: {"prefix": m}, attribute_maps),
    st.builds(lambda m: {"suffix": m}, attribute_maps),
    st.builds(lambda text: {"cesql": text}, st.sampled_from(CESQL)),
    st.just({}),
    st.just({"exact": None, "prefix": {"type": "a"}}),  # a null dialect is not set
)
filter_elements = st.recursive(
    leaf_filters,
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner),
    ),
    max_leaves=6,
)
trigger_specs = st.one_of(
    st.builds(lambda items: {"filters": items}, st.lists(filter_elements, max_size=3)),
    st.builds(
        lambda m: {"filter": {"attributes": m}},
        st.dictionaries(names, st.sampled_from(["", *VALUES]), max_size=3),
    ),
    st.just({}),
)
attribute_values = st.one_of(values, st.integers(0, 9), st.booleans())
events = st.builds(
    lambda extra, type_, source: CloudEvent(
        {"specversion": "1.0", "id": "1", "type": type_, "source": source, **extra}, None
    ),
    st.dictionaries(
        st.sampled_from(["tenant", "region", "datamediatype", "datacontenttype", "schemaurl"]),
        attribute_values,
        max_size=4,
    ),
    values,
    values,
)


def _compiled(specs: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    entries = []
    for key, spec in enumerate(specs):
        predicate, source = compile_trigger_filter(spec)
        entries.append((key, source, predicate))
    return entries


@settings(max_examples=400, deadline=None)
@given(st.lists(trigger_specs, max_size=25), st.lists(events, min_size=1, max_size=5))
def test_index_matches_exactly_the_triggers_whose_filter_matches(
    specs: list[dict[str, Any]], probes: list[CloudEvent]
) -> None:
    entries = _compiled(specs)
    index = TriggerIndex(entries)
    assert len(index) == len(entries)
    for event in probes:
        expected = [key for key, _, predicate in entries if predicate(event)]
        assert sorted(index.matching(event)) == expected


@settings(max_examples=200, deadline=None)
@given(trigger_specs, events)
def test_a_trigger_whose_pin_fails_does_not_match(spec: dict[str, Any], event: CloudEvent) -> None:
    # The pin is a necessary condition: whenever the filter matches, the pin holds.
    predicate, source = compile_trigger_filter(spec)
    if not predicate(event):
        return
    for cover in pins_of(source).covers:  # at least one pin of every cover holds
        assert any(_holds(pin, event) for pin in cover), (cover, event.attributes)


def _holds(pin: Pin, event: CloudEvent) -> bool:
    value = event.attributes.get(pin.name)
    if value is None:
        return False
    text = value if isinstance(value, str) else str(value).lower()
    if pin.kind == "exact":
        return text == pin.value
    return text.startswith(pin.value) if pin.kind == "prefix" else text.endswith(pin.value)


def pin_of(spec: dict[str, Any], shared_by: dict[Pin, int] | None = None) -> Pin | None:
    pins = pins_of(compile_trigger_filter(spec)[1]).pins
    return choose_pin(pins, {pin: 1 for pin in pins} | (shared_by or {}))


def test_pin_is_least_shared_then_exact_then_longest_never_from_not() -> None:
    both = {"filters": [{"prefix": {"type": "com."}}, {"exact": {"source": "/s"}}]}
    assert pin_of(both) == Pin("exact", "source", "/s")
    assert pin_of(both, {Pin("exact", "source", "/s"): 500}) == Pin("prefix", "type", "com.")
    longest = {"filters": [{"all": [{"prefix": {"type": "com."}}, {"prefix": {"id": "abcde"}}]}]}
    assert pin_of(longest) == Pin("prefix", "id", "abcde")
    for unpinned in (  # not, other CESQL, an `any` with an unpinned branch, derived names, none
        {"filters": [{"not": {"exact": {"type": "x"}}}]},
        {"filters": [{"cesql": "type = 'x' OR source = 'y'"}]},
        {"filters": [{"any": [{"exact": {"type": "x"}}, {"not": {"exact": {"type": "y"}}}]}]},
        {"filters": [{"exact": {"datamediatype": "text/plain"}}]},
        {},
    ):
        assert pin_of(unpinned) is None, unpinned
    assert pin_of({"filters": [{"cesql": "type = 'x' AND INT(n) > 1"}]}) == Pin(
        "exact", "type", "x"
    )
    assert pin_of({"filters": [{"suffix": {"type": ".x"}}]}) == Pin("suffix", "type", ".x")
    assert pin_of({"filter": {"attributes": {"tenant": ""}}}) == Pin("prefix", "tenant", "")


def test_only_unpinned_and_hit_buckets_are_candidates() -> None:
    # Every Trigger also pins the same source: the index files them by their type instead.
    specs = [{"filter": {"attributes": {"type": f"t{n}", "source": "/"}}} for n in range(1000)]
    specs.append({"filters": [{"cesql": "type = 't7'"}]})
    specs.append({"filters": [{"not": {"exact": {"type": "t8"}}}]})
    index = TriggerIndex(_compiled(specs))
    event = CloudEvent({"specversion": "1.0", "id": "1", "source": "/", "type": "t7"}, None)
    assert index.unpinned == 1  # the `not`
    assert len(index.candidates(event)) == 3  # it, and the bucket of t7
    # Type and source exact and nothing else: decided by one lookup of both values; CESQL
    # and `not` still run their predicates.
    decided = {key: predicate is None for key, predicate in index.candidates(event)}
    assert decided == {7: True, 1000: False, 1001: False}
    assert sorted(index.matching(event)) == [7, 1000, 1001]
    assert TriggerIndex([(0, "{}", match_all)]).matching(event) == [0]


def test_a_filter_that_is_only_its_pin_is_decided_by_the_lookup() -> None:
    only_type = compile_trigger_filter({"filters": [{"exact": {"type": "t"}}]})
    type_and_cesql = compile_trigger_filter({"filters": [{"exact": {"type": "t"}}, {"cesql": "x"}]})
    present = compile_trigger_filter({"filter": {"attributes": {"tenant": ""}}})
    index = TriggerIndex(
        [
            ("only", only_type[1], only_type[0]),
            ("more", type_and_cesql[1], type_and_cesql[0]),
            ("present", present[1], present[0]),
        ]
    )
    event = CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/", "type": "t", "tenant": 1}, None
    )
    decided = {key: predicate is None for key, predicate in index.candidates(event)}
    assert decided == {"only": True, "more": False, "present": True}
    assert sorted(index.matching(event)) == ["only", "present"]


def test_an_any_is_filed_under_each_branch_and_reported_once() -> None:
    spec = {"filters": [{"any": [{"exact": {"type": "a"}}, {"prefix": {"source": "/s"}}]}]}
    predicate, source = compile_trigger_filter(spec)
    index = TriggerIndex([("any", source, predicate)])
    assert index.unpinned == 0
    both = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s1", "type": "a"}, None)
    neither = CloudEvent({"specversion": "1.0", "id": "1", "source": "/t", "type": "b"}, None)
    assert len(index.candidates(both)) == 2
    assert index.matching(both) == ["any"]
    assert index.candidates(neither) == []


def test_triggers_with_the_same_residual_cost_one_predicate_call_per_event() -> None:
    # 100 Triggers pin the same type beside the same CESQL, 50 more share one unpinned filter:
    # each group's predicate runs once per event, and every member is reported.
    shared_cesql = {"filters": [{"exact": {"type": "t"}}, {"cesql": "INT(priority) > 1"}]}
    negated = {"filters": [{"not": {"prefix": {"type": "x."}}}]}
    specs = [shared_cesql] * 100 + [negated] * 50
    index = TriggerIndex(_compiled(specs))
    assert index.unpinned == 50
    event = CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/", "type": "t", "priority": "5"}, None
    )
    assert index.predicate_calls(event) == 2
    assert sorted(index.matching(event)) == list(range(150))
    low = CloudEvent({**event.attributes, "priority": "0"}, None)
    assert sorted(index.matching(low)) == list(range(100, 150))


def test_the_residual_is_what_the_filter_asks_beyond_its_pin() -> None:
    def rest(spec: dict[str, Any], pin: Pin) -> str | None:
        decided, found = residual(compile_trigger_filter(spec)[1], pin)
        assert decided
        return None if found is None else found[0]

    type_t = Pin("exact", "type", "t")
    assert rest({"filters": [{"exact": {"type": "t", "source": "/s"}}]}, type_t) == (
        '{"filters":[{"exact":{"source":"/s"}}]}'
    )
    nested = {"filters": [{"all": [{"exact": {"type": "t"}}, {"cesql": "EXISTS a"}]}, {}]}
    assert rest(nested, type_t) == '{"filters":[{"cesql":"EXISTS a"}]}'
    assert rest({"filter": {"attributes": {"type": "t", "tenant": ""}}}, type_t) == (
        '{"filter":{"attributes":{"tenant":""}}}'
    )
    assert rest({"filter": {"attributes": {"tenant": ""}}}, Pin("prefix", "tenant", "")) is None
    assert rest({"filters": [{"exact": {"type": "t"}}, {"exact": {"type": "t"}}]}, type_t) is None
    # A pin found inside CESQL or an `any` is no conjunct of its own: the whole filter runs.
    for whole in (
        {"filters": [{"cesql": "type = 't' AND EXISTS a"}]},
        {"filters": [{"any": [{"exact": {"type": "t"}}]}]},
    ):
        assert residual(compile_trigger_filter(whole)[1], type_t) == (False, None)
