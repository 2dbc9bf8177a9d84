"""The bounds every parser of user input keeps (issue 11): durations, CESQL, nesting, URLs,
JSON data carried as raw bytes. Each is one rule in one place; these tests say the rule."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.cesql import compile_expression
from broker.cesql.errors import CesqlParseError
from broker.cesql.parser import MAX_EXPRESSION_DEPTH, MAX_EXPRESSION_LENGTH
from broker.controlplane.resources import MAX_RESOURCE_DEPTH, check_depth, parse_url
from broker.core.binding import parse_request
from broker.core.binding_json import raw_members
from broker.core.durations import MAX_DURATION_SECONDS, parse_duration
from broker.core.errors import BindingError, InvalidResource
from broker.features.serving.autoscaler import parse_go_duration

# --- durations ------------------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=10**15).map(str),
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False).map(str),
    st.sampled_from(["1e400", "9" * 40, "0.5", "-1", ""]),
)


@st.composite
def iso_durations(draw: st.DrawFn) -> str:
    date = "".join(f"{draw(_NUMBERS)}{unit}" for unit in draw(st.sets(st.sampled_from("YMWD"))))
    time = "".join(f"{draw(_NUMBERS)}{unit}" for unit in draw(st.sets(st.sampled_from("HMS"))))
    return "P" + date + ("T" + time if time or draw(st.booleans()) else "")


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(iso_durations(), st.text(max_size=30)))
def test_any_duration_text_is_seconds_within_the_bound_or_a_422_naming_the_field(text):
    try:
        seconds = parse_duration(text, "spec.delivery.timeout")
    except InvalidResource as exc:
        assert exc.field == "spec.delivery.timeout"
    else:
        assert 0 <= seconds <= MAX_DURATION_SECONDS


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("P99999Y", "100 years"),
        ("P101Y", "100 years"),
        ("P36526D", "100 years"),
        ("P999999999999D", "100 years"),
        ("PT99999999999999999999999S", "100 years"),
        ("P2.5Y", "fraction"),
        ("P0.5M", "fraction"),
        ("P" + "1" * 100 + "D", "at most 64"),
    ],
)
def test_durations_past_the_bound_or_with_fractional_months_are_refused(text, words):
    with pytest.raises(InvalidResource) as caught:
        parse_duration(text, "spec.retentionDuration")
    assert caught.value.field == "spec.retentionDuration" and words in caught.value.reason


def test_the_bound_itself_and_fractional_days_are_durations():
    assert parse_duration("P100Y", "f") == MAX_DURATION_SECONDS
    assert parse_duration("P1.5D", "f") == 129600


def test_go_durations_share_the_bound():
    assert parse_go_duration("1h30m", "f") == 5400
    with pytest.raises(InvalidResource, match="100 years"):
        parse_go_duration("1" * 400 + "h", "f")


# --- CESQL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda n: "NOT " * n + "true",
        lambda n: " AND ".join(["true"] * (n + 1)),
        lambda n: "+".join(["1"] * n) + " = 1",
        lambda n: "ABS(" * n + "1" + ")" * n + " = 1",
        lambda n: "-" * n + "1 = 1",
    ],
)
def test_cesql_depth_is_bounded_at_parse_time(build):
    compile_expression(build(MAX_EXPRESSION_DEPTH - 1))  # just within: compiles
    for n in (MAX_EXPRESSION_DEPTH + 2, 3 * MAX_EXPRESSION_DEPTH):
        text = build(n)
        if len(text) > MAX_EXPRESSION_LENGTH:
            continue
        with pytest.raises(CesqlParseError, match=f"more than {MAX_EXPRESSION_DEPTH} operators"):
            compile_expression(text)


def test_cesql_length_is_bounded():
    with pytest.raises(CesqlParseError, match=str(MAX_EXPRESSION_LENGTH)):
        compile_expression("a = 'x' OR " * 1000 + "true")
    # parentheses nest no operator: deep grouping within the length limit is fine
    compile_expression("(" * 1000 + "true" + ")" * 1000)


# --- nesting and URLs -----------------------------------------------------------------------------


def test_objects_nest_at_most_the_limit_and_the_error_names_where():
    value: object = 1
    for _ in range(MAX_RESOURCE_DEPTH - 2):
        value = [value]
    check_depth({"spec": value})  # the object, spec and 98 lists: at the limit
    with pytest.raises(InvalidResource) as caught:
        check_depth({"spec": {"a": [value]}})
    assert caught.value.field.startswith("spec.a[0]") and "100 levels" in caught.value.reason


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999/", "http://h:x/", "http://a b/"])
def test_urls_that_do_not_parse_are_a_422_naming_the_field(url):
    with pytest.raises(InvalidResource) as caught:
        parse_url(url, "spec.sink.uri")
    assert caught.value.field == "spec.sink.uri"


def test_a_huge_value_is_cut_in_the_message():
    error = InvalidResource("spec.x", f"{'a' * 100_000!r} is wrong")
    assert len(error.message) < 1100 and "characters cut" in error.message


# --- JSON data carried as bytes (the ingress) ----------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    documents=st.lists(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4), max_size=3),
    data=JSON_VALUES,
    spaces=st.sampled_from(["", " ", "\n\t "]),
)
def test_raw_members_are_the_bytes_orjson_reads_for_that_member(documents, data, spaces):
    for document in documents:
        document["data"] = data
    body = orjson.dumps(documents, option=orjson.OPT_INDENT_2 if spaces else 0)
    raw = raw_members(body, "data", 2)
    assert [orjson.loads(item) for item in raw if item is not None] == [data] * len(documents)


@pytest.mark.parametrize("depth", [253, 254, 255, 600, 1000])
def test_structured_json_data_of_any_depth_orjson_reads_is_accepted(depth):
    data = b"[" * depth + b"1" + b"]" * depth
    body = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + data + b"}"
    [event] = parse_request([(b"content-type", b"application/cloudevents+json")], body)
    assert event.data == data  # compact already: re-written or carried, the same bytes


def test_structured_json_deeper_than_orjson_reads_is_a_400_naming_the_limit():
    data = b"[" * 1100 + b"]" * 1100
    body = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":' + data + b"}"
    with pytest.raises(BindingError, match="1024 levels"):
        parse_request([(b"content-type", b"application/cloudevents+json")], body)
