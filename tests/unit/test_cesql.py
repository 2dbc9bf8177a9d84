"""CESQL as a Trigger filter (K89) and the engine's own edges; the TCK is test_cesql_tck.py.

Covers: parse errors carry their position (engine and admission, K89), evaluation errors never
match (CESQL spec 1.2), mixing ``cesql`` with the other dialects in all/any/not (K86-K88, the K90
conformance features), and payload filters (``data.<path>``, opt-in per Trigger with the
``cemesh.dev/filter-payload`` annotation; beyond Knative, knative/eventing#8274).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.cesql import (
    CesqlParseError,
    ErrorKind,
    PayloadNotEnabled,
    Type,
    compile_expression,
)
from broker.core.errors import InvalidResource
from broker.core.events import CloudEvent
from broker.dataplane.dispatch.filters import (
    FILTER_PAYLOAD_ANNOTATION,
    compile_trigger_filter,
    validate_trigger_filters,
)
from broker.server.features import admit


def event(data: Any = None, *, content_type: str | None = "application/json", **attributes: Any):
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "1",
        "source": "http://example.com/source",
        "type": "com.example.order.created",
    }
    if content_type is not None:
        base["datacontenttype"] = content_type
    base.update(attributes)
    body = data if data is None or isinstance(data, bytes) else json.dumps(data).encode()
    return CloudEvent(base, body)


def trigger(*filters: Any, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t", "namespace": "default", "annotations": annotations or {}},
        "spec": {
            "broker": "default",
            "subscriber": {"uri": "http://127.0.0.1:9/sink"},
            "filters": list(filters),
        },
    }


def admission_error(body: dict[str, Any]) -> InvalidResource:
    with pytest.raises(InvalidResource) as info:
        admit(body)
    return info.value


def predicate(*filters: Any, payload: bool = False) -> Any:
    compiled, _ = compile_trigger_filter({"filters": list(filters)}, payload=payload)
    return compiled


# --- parse errors and their positions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "offset"),
    [
        ("type = ", 1, 8, 7),  # end of input
        ("type == 'a'", 1, 7, 6),  # unexpected token
        ("type = 'a' AND\n  source @ 'b'", 2, 10, 24),  # unexpected character, second line
        ("x LIKE 123", 1, 8, 7),  # LIKE needs a string literal (spec 3.4.3)
        ("ABC(", 1, 5, 4),  # the TCK's parse error
        ("2147483648 > 1", 1, 1, 0),  # integer literals are 32-bit
        ("'unterminated", 1, 1, 0),
    ],
)
def test_k89_parse_errors_carry_line_column_and_offset(
    text: str, line: int, column: int, offset: int
) -> None:
    with pytest.raises(CesqlParseError) as info:
        compile_expression(text)
    error = info.value
    assert (error.line, error.column, error.offset) == (line, column, offset), error
    assert f"line {line}, column {column}" in str(error)


def test_k89_admission_rejects_a_parse_error_naming_field_and_position() -> None:
    error = admission_error(trigger({"exact": {"type": "a"}}, {"cesql": "type = 'a' AND"}))
    assert error.field == "spec.filters[1].cesql"
    assert "invalid CESQL expression" in error.reason
    assert "line 1, column 15" in error.reason


def test_k89_admission_rejects_nested_cesql_errors_with_the_full_path() -> None:
    body = trigger({"any": [{"exact": {"type": "a"}}, {"not": {"cesql": "source LIKE"}}]})
    assert admission_error(body).field == "spec.filters[0].any[1].not.cesql"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "non-empty"),
        (42, "a string"),
        ("NOSUCH(type)", "no function NOSUCH taking 1 argument at line 1, column 1"),
        ("LENGTH(type)", "evaluates to Integer, a filter needs a Boolean"),
        ("CONCAT(type, 'x')", "evaluates to String"),
    ],
)
def test_k89_admission_rejects_expressions_that_can_never_match(value: Any, fragment: str) -> None:
    error = admission_error(trigger({"cesql": value}))
    assert error.field == "spec.filters[0].cesql"
    assert fragment in error.reason, error.reason


def test_k89_a_valid_cesql_trigger_is_admitted_unchanged() -> None:
    text = "type LIKE 'com.example.%' AND (subject IN ('a', 'b') OR NOT EXISTS subject)"
    admitted = admit(trigger({"cesql": text}))
    assert admitted["spec"]["filters"] == [{"cesql": text}]


# --- evaluation: errors never match (spec 1.2) ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("myext = 'x'", ErrorKind.MISSING_ATTRIBUTE),
        ("NOT (myext = 'x')", ErrorKind.MISSING_ATTRIBUTE),  # not "true": the error wins
        ("1 / 0 = 0", ErrorKind.MATH),
        ("2147483647 + 1 > 0", ErrorKind.MATH),
        ("type + 1 > 0", ErrorKind.CAST),
        ("NOT 10", ErrorKind.CAST),  # evaluates to true, with an error: no match
        ("LEFT(type, -1) = type", ErrorKind.FUNCTION_EVALUATION),
    ],
)
def test_k89_an_evaluation_error_does_not_match(text: str, kind: ErrorKind) -> None:
    expression = compile_expression(text)
    result = expression.evaluate(event())
    assert result.error is not None and result.error.kind == kind, result
    assert predicate({"cesql": text})(event()) is False
    assert predicate({"not": {"cesql": text}})(event()) is True  # not: the negated verdict


def test_k89_only_a_boolean_true_matches() -> None:
    flag = predicate({"cesql": "flag"})
    assert flag(event(flag=True))
    assert not flag(event(flag=False))
    assert not flag(event(flag="yes"))  # a String result is not a Boolean: no match
    assert not flag(event())  # missing


def test_implicit_casts_follow_the_spec() -> None:
    e = event(sequence="5", count=7, enabled="TRUE")
    for text in (
        "sequence = 5",  # String attribute cast to the literal's type (spec 3.7)
        "count = '7'",  # Integer extension cast to String
        "sequence < count",  # ordering casts both to Integer
        "enabled AND TRUE",  # 'TRUE' -> Boolean
        "count IN ('7', '8')",  # elements cast to the left type
        "INT(sequence) + count = 12",
    ):
        assert compile_expression(text).matches(e), text


def test_and_or_short_circuit_before_errors() -> None:
    assert compile_expression("FALSE AND missing = 1").evaluate(event()).error is None
    assert compile_expression("TRUE OR 1 / 0 = 1").evaluate(event()).error is None


def test_precedence_follows_the_reference_grammar() -> None:
    # Unary NOT binds tighter than comparison; AND/OR/XOR share one right-associative level.
    assert compile_expression("NOT TRUE = FALSE").evaluate(event()).value is True
    assert compile_expression("FALSE AND FALSE OR TRUE").evaluate(event()).value is False
    assert compile_expression("2 + 3 * 4 = 14").evaluate(event()).value is True


def test_like_escapes_and_shapes() -> None:
    cases = {
        "'a%b' LIKE 'a\\%b'": True,
        "'axb' LIKE 'a\\%b'": False,
        "'a_b' LIKE 'a\\_b'": True,
        "'a\\b' LIKE 'a\\b'": True,  # a backslash before anything else is literal
        "'abc' LIKE 'a%'": True,
        "'abc' LIKE '%c'": True,
        "'abc' LIKE '%b%'": True,
        "'abc' LIKE 'a%c'": True,
        "'ac' LIKE 'a_c'": False,
        "'a\nc' LIKE 'a_c'": True,
        "'abc' NOT LIKE 'x%'": True,
    }
    for text, expected in cases.items():
        assert compile_expression(text).evaluate(event()).value is expected, text


def test_identifiers_and_keywords_are_case_insensitive() -> None:
    e = event(subject="s")
    assert compile_expression("SUBJECT = 's' and exists Subject").matches(e)
    assert compile_expression("lower(TYPE) like 'com.%'").matches(e)


def test_expression_reports_its_static_type() -> None:
    assert compile_expression("type = 'a'").type is Type.BOOLEAN
    assert compile_expression("LENGTH(type)").type is Type.INTEGER
    assert compile_expression("type").type is Type.ANY


# --- dialect mixing (K86-K88, K90) --------------------------------------------------------------


def test_k90_any_filter_feature_with_its_cesql_branches() -> None:
    # knative/eventing test/rekt/features/new_trigger_filters AnyFilterFeature, in full.
    matches = predicate(
        {
            "any": [
                {"exact": {"type": "exact.event.type"}},
                {"prefix": {"type": "prefix"}},
                {"suffix": {"type": "suffix"}},
                {"not": {"cesql": "type LIKE '%event.type%'"}},
                {"cesql": "type = 'cesql.event.type'"},
            ]
        }
    )
    for delivered in (
        "exact.event.type",
        "prefix.event.type",
        "event.type.suffix",
        "not.type.event",
        "cesql.event.type",
    ):
        assert matches(event(type=delivered)), delivered
    assert not matches(event(type="not.event.type"))


def test_k90_all_filter_feature_with_its_cesql_branch() -> None:
    matches = predicate(
        {
            "all": [
                {"exact": {"type": "exact.prefix.suffix.event.type"}},
                {"prefix": {"type": "exact.prefix"}},
                {"suffix": {"type": "suffix.event.type"}},
                {"cesql": "type LIKE 'exact.prefix.suffix%'"},
            ]
        }
    )
    assert not matches(event(type="not.event.type"))
    assert not matches(event(type="exact.prefix.suffix.event"))
    assert not matches(event(type="exact.prefix.suffix.event.suffix.event.type"))
    assert matches(event(type="exact.prefix.suffix.event.type"))


def test_k79_cesql_is_anded_with_sibling_filters() -> None:
    matches = predicate({"prefix": {"type": "com."}}, {"cesql": "source LIKE 'http://%'"})
    assert matches(event())
    assert not matches(event(source="urn:x"))
    assert not matches(event(type="org.x"))


def test_filter_source_text_keeps_the_expression_and_marks_payload() -> None:
    _, text = compile_trigger_filter({"filters": [{"cesql": "type = 'a'"}]})
    assert json.loads(text) == {"filters": [{"cesql": "type = 'a'"}]}
    _, with_payload = compile_trigger_filter({"filters": [{"cesql": "type = 'a'"}]}, payload=True)
    assert json.loads(with_payload) == {"filters": [{"cesql": "type = 'a'"}], "payload": True}


# --- payload filters (cemesh.dev/filter-payload) ------------------------------------------------


PAYLOAD_ON = {FILTER_PAYLOAD_ANNOTATION: "enabled"}


def test_payload_paths_are_rejected_unless_the_trigger_opts_in() -> None:
    error = admission_error(trigger({"cesql": "data.order.total > 100"}))
    assert error.field == "spec.filters[0].cesql"
    assert FILTER_PAYLOAD_ANNOTATION in error.reason and '"enabled"' in error.reason
    assert "line 1, column 1" in error.reason
    # Any other value of the annotation is not an opt-in.
    error = admission_error(
        trigger({"cesql": "EXISTS data.customer"}, annotations={FILTER_PAYLOAD_ANNOTATION: "yes"})
    )
    assert FILTER_PAYLOAD_ANNOTATION in error.reason
    with pytest.raises(PayloadNotEnabled):
        compile_expression("data.x = 1")
    with pytest.raises(InvalidResource):
        validate_trigger_filters({"filters": [{"all": [{"cesql": "data.x = 1"}]}]})


def test_payload_trigger_with_the_annotation_is_admitted() -> None:
    body = trigger({"cesql": "data.order.total > 100"}, annotations=PAYLOAD_ON)
    assert admit(body)["spec"]["filters"] == [{"cesql": "data.order.total > 100"}]


def test_payload_paths_read_the_json_data() -> None:
    order = {
        "order": {"total": 150, "currency": "EUR", "express": True, "lines": [{"sku": "A-1"}]},
        "customer": {"id": "c1", "tier": None},
        "weight": 2.5,
    }
    e = event(order)
    cases = {
        "data.order.total > 100": True,
        "data.order.total > 200": False,
        "data.order.currency = 'EUR' AND data.order.express": True,
        "data.order.lines.0.sku LIKE 'A-%'": True,
        "EXISTS data.customer": True,
        "EXISTS data.customer.tier": False,  # JSON null is absent
        "NOT EXISTS data.refund": True,
        "data.weight = '2.5'": True,  # a fraction is compared as its JSON text
        "type LIKE 'com.example.%' AND data.customer.id IN ('c1', 'c2')": True,
    }
    for text, expected in cases.items():
        assert predicate({"cesql": text}, payload=True)(e) is expected, text


@pytest.mark.parametrize(
    "no_json",
    [
        event(None),
        event(b"<order/>", content_type="application/xml"),
        event(b"{not json", content_type="application/json"),
        event({"other": 1}),
    ],
    ids=["no-data", "xml", "undecodable", "missing-path"],
)
def test_payload_filters_never_match_events_without_that_json(no_json: CloudEvent) -> None:
    for text in ("data.order.total > 100", "NOT (data.order.total > 100)"):
        assert predicate({"cesql": text}, payload=True)(no_json) is False, text


def test_payload_exists_on_non_json_data_does_not_match_even_negated() -> None:
    assert predicate({"cesql": "NOT EXISTS data.x"}, payload=True)(event(None)) is False
    assert predicate({"cesql": "NOT EXISTS data.x"}, payload=True)(event({"y": 1})) is True


def test_payload_json_content_types() -> None:
    body = {"n": 1}
    for content_type in (
        "application/json",
        "application/cloudevents+json",
        "text/json; x=y",
        None,
    ):
        assert predicate({"cesql": "data.n = 1"}, payload=True)(
            event(body, content_type=content_type)
        ), content_type
    assert not predicate({"cesql": "data.n = 1"}, payload=True)(
        event(body, content_type="text/plain")
    )


def test_payload_objects_and_big_numbers_are_cast_errors() -> None:
    e = event({"o": {"a": 1}, "big": 2**40})
    assert compile_expression("data.o = 'x'", payload=True).evaluate(e).error.kind == "cast"  # type: ignore[union-attr]
    assert compile_expression("data.big > 1", payload=True).evaluate(e).error.kind == "cast"  # type: ignore[union-attr]
