"""broker.core.binding, rule by rule (K and C requirement ids: docs/requirements.md).

Requests are built as an ASGI server hands them over: ``(name, value)`` byte pairs with
lower-case names. The cloudevents SDK appears only as an independent reference encoder.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkCloudEvent

from broker.core import binding
from broker.core.binding import (
    content_mode,
    decode_header_value,
    encode_header_value,
    parse_request,
    parse_response,
    to_batch,
    to_binary,
    to_structured,
)
from broker.core.errors import BindingError
from broker.core.events import CloudEvent

Pairs = list[tuple[bytes, bytes]]

MINIMAL_HEADERS: dict[str, str] = {
    "ce-specversion": "1.0",
    "ce-id": "A234-1234-1234",
    "ce-source": "/mycontext",
    "ce-type": "com.example.someevent",
}
MINIMAL_ATTRIBUTES: dict[str, Any] = {
    "specversion": "1.0",
    "id": "A234-1234-1234",
    "source": "/mycontext",
    "type": "com.example.someevent",
}


def binary_request(
    overrides: dict[str, str | None] | None = None, extra: Pairs | None = None
) -> Pairs:
    """The minimal binary request's headers, with some replaced (None removes one)."""
    headers: dict[str, str | None] = dict(MINIMAL_HEADERS)
    headers.update(overrides or {})
    pairs = [(k.encode(), v.encode("utf-8")) for k, v in headers.items() if v is not None]
    return pairs + (extra or [])


def raw(name: str, value: bytes) -> Pairs:
    """The minimal binary request plus one header with raw value bytes."""
    return binary_request(extra=[(name.encode(), value)])


def parse_one(headers: Pairs, body: bytes = b"") -> CloudEvent:
    (event,) = parse_request(headers, body)
    return event


STRUCTURED: Pairs = [(b"content-type", b"application/cloudevents+json")]


def parse_structured(document: Any) -> CloudEvent:
    (event,) = parse_request(STRUCTURED, orjson.dumps(document))
    return event


def minimal_document(**members: Any) -> dict[str, Any]:
    document: dict[str, Any] = dict(MINIMAL_ATTRIBUTES)
    document.update(members)
    return document


def error_of(headers: Pairs, body: bytes = b"") -> str:
    with pytest.raises(BindingError) as caught:
        parse_request(headers, body)
    return caught.value.message


def structured_error(document: Any) -> str:
    return error_of(STRUCTURED, orjson.dumps(document))


def as_bytes(headers: list[tuple[str, str]]) -> Pairs:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


# --- content mode (C25, C26, C44) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "mode"),
    [
        (None, "binary"),
        ("", "binary"),
        ("application/json", "binary"),
        ("text/plain; charset=utf-8", "binary"),
        ("application/cloudevents+json", "structured"),
        ("application/cloudevents+json; charset=UTF-8", "structured"),
        ("APPLICATION/CloudEvents+JSON;charset=utf-8", "structured"),
        ("application/cloudevents", "structured"),
        ("application/cloudevents-batch+json", "batch"),
        ("Application/CloudEvents-Batch+JSON; charset=UTF-8", "batch"),
        ("application/cloudevents-batch", "batch"),
        ("application/cloudevents+avro", "binary"),
        ("application/cloudevents+protobuf", "binary"),
        ("application/cloudevents-batch+avro", "binary"),
    ],
)
def test_content_mode_is_chosen_by_content_type_case_insensitively_c25_c26(
    content_type: str | None, mode: str
) -> None:
    """C25: batch/structured by prefix, case-insensitive; C26: other formats are binary."""
    assert content_mode(content_type) == mode


def test_structured_mode_ignores_ce_headers_payload_is_authoritative_c44() -> None:
    """C44: with a structured Content-Type, ce- headers (even bad ones) do not count."""
    document = minimal_document(id="from-body")
    headers = [*STRUCTURED, (b"ce-id", b"from-header"), (b"ce-Bad_Name", b"x")]
    (event,) = parse_request(headers, orjson.dumps(document))
    assert event.attributes["id"] == "from-body"


def test_ce_headers_do_not_make_a_structured_body_binary_c44_c84() -> None:
    """C84: the SDK picks binary when ce- headers exist; mode comes from Content-Type only."""
    headers = binary_request(extra=[(b"content-type", b"application/cloudevents+json")])
    message = error_of(headers, b"not json")
    assert "structured event: body is not valid JSON" in message


def test_unsupported_structured_format_is_parsed_as_binary_c26() -> None:
    """C26: application/cloudevents+avro is forwarded as binary, body untouched."""
    headers = binary_request(extra=[(b"content-type", b"application/cloudevents+avro")])
    event = parse_one(headers, b"\x00avro")
    assert event.datacontenttype == "application/cloudevents+avro"
    assert event.data == b"\x00avro"


# --- binary mode ----------------------------------------------------------------------------


@pytest.mark.parametrize("specversion", ["1.0", "0.3"])
def test_binary_minimal_event_parses_and_keeps_its_version_k31_k32(specversion: str) -> None:
    """K31: 1.0 and 0.3 accepted; K32: the version is never changed."""
    event = parse_one(binary_request({"ce-specversion": specversion}), b"hello")
    assert event.attributes == {**MINIMAL_ATTRIBUTES, "specversion": specversion}
    assert event.data == b"hello"


def test_binary_missing_specversion_is_rejected_k30_c86() -> None:
    """K30, C86: no ce-specversion is not a CloudEvent (the SDK would default to 1.0)."""
    message = error_of(binary_request({"ce-specversion": None}))
    assert message == "missing required attribute 'specversion' (header ce-specversion)"


@pytest.mark.parametrize("version", ["19.0", "1", "0.2", "1.0.2", ""])
def test_binary_unsupported_specversion_is_rejected_k31(version: str) -> None:
    """K31: only 1.0 and 0.3; Knative conformance sends 19.0 and expects 4xx."""
    message = error_of(binary_request({"ce-specversion": version}))
    assert message == (
        f"unsupported specversion {version!r} (supported: 1.0, 0.3) (header ce-specversion)"
    )


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_binary_missing_required_attribute_is_rejected_k40_k48_k49_c1(name: str) -> None:
    """K40, K48, K49, C1: id, source and type are all required (not only specversion)."""
    message = error_of(binary_request({f"ce-{name}": None}))
    assert message == f"missing required attribute '{name}' (header ce-{name})"


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_binary_empty_required_attribute_is_rejected_c2_c3_c5(name: str) -> None:
    """C2, C3, C5: id, source and type are non-empty."""
    message = error_of(binary_request({f"ce-{name}": ""}))
    assert message == f"required attribute '{name}' must not be empty (header ce-{name})"


@pytest.mark.parametrize(
    "header", [b"ce-foo_bar", b"ce-foo-bar", b"ce-Foo", b"ce-", b"ce-caf\xc3\xa9", b"ce-a.b"]
)
def test_binary_invalid_attribute_name_is_rejected_c16_c20(header: bytes) -> None:
    """C16, C20: names from ce- headers must be [a-z0-9]+."""
    message = error_of(binary_request(extra=[(header, b"x")]))
    assert message.startswith(f"header {header.decode()}: invalid attribute name")
    assert "C16" in message


def test_binary_attribute_named_data_is_rejected_c17() -> None:
    """C17 (1.0.3-wip): an attribute must not be named 'data'."""
    assert "'data' is not a valid attribute name" in error_of(raw("ce-data", b"x"))


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("id", [(b"ce-id", b"again")]),
        ("comexample", [(b"ce-comexample", b"one"), (b"ce-comexample", b"two")]),
    ],
)
def test_binary_attribute_given_twice_is_rejected_c11(name: str, extra: Pairs) -> None:
    """C11: each attribute appears at most once (two header lines of one name)."""
    message = error_of(binary_request(extra=extra))
    assert message == f"attribute '{name}' given twice (header ce-{name}, C11)"


def test_binary_content_type_given_twice_is_rejected() -> None:
    headers = binary_request(extra=[(b"content-type", b"text/plain")] * 2)
    assert error_of(headers, b"x") == "header content-type given twice"


def test_binary_content_type_becomes_datacontenttype_c29() -> None:
    """C29: Content-Type is datacontenttype, verbatim."""
    headers = binary_request(extra=[(b"content-type", b"application/json; charset=utf-8")])
    event = parse_one(headers, b"{}")
    assert event.attributes["datacontenttype"] == "application/json; charset=utf-8"


def test_binary_ce_datacontenttype_header_is_rejected_c29() -> None:
    """C29: datacontenttype travels in Content-Type; a ce-datacontenttype header MUST NOT."""
    headers = binary_request(
        extra=[(b"content-type", b"text/plain"), (b"ce-datacontenttype", b"text/plain")]
    )
    message = error_of(headers, b"x")
    assert "ce-datacontenttype is not allowed in binary mode" in message
    assert "C29" in message


@pytest.mark.parametrize("content_type", [None, b""])
def test_binary_without_content_type_has_no_datacontenttype_c33(
    content_type: bytes | None,
) -> None:
    """C33: no (or an empty) Content-Type: no datacontenttype is invented."""
    extra = [] if content_type is None else [(b"content-type", content_type)]
    event = parse_one(binary_request(extra=extra), b"\x01\x02")
    assert "datacontenttype" not in event.attributes
    assert event.data == b"\x01\x02"


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"a": 1}\n', b"\x00\xff\xfe raw", b"<xml/>", "Hello, 🌎!\n".encode(), b" "],
)
def test_binary_body_is_data_unchanged_c30(body: bytes) -> None:
    """C30: the body is the data byte sequence, no transcoding (even with a JSON type)."""
    headers = binary_request(extra=[(b"content-type", b"application/json")])
    assert parse_one(headers, body).data == body


def test_binary_empty_body_is_no_data() -> None:
    assert parse_one(binary_request(), b"").data is None


@pytest.mark.parametrize(
    "content_type",
    [b"application/vnd.apache.thrift.binary", b"application/xml", b"application/json"],
)
def test_binary_accepts_any_content_type_k33_c34(content_type: bytes) -> None:
    """K33, C34: Knative conformance sends thrift, XML and JSON types with body {}."""
    event = parse_one(binary_request(extra=[(b"content-type", content_type)]), b"{}")
    assert event.datacontenttype == content_type.decode()
    assert event.data == b"{}"


def test_binary_extensions_are_strings_c31() -> None:
    """C31: every other ce- header is an attribute; binary values are strings."""
    headers = binary_request(extra=[(b"ce-count", b"5"), (b"ce-flag", b"true")])
    event = parse_one(headers)
    assert event.attributes["count"] == "5"
    assert event.attributes["flag"] == "true"


def test_binary_non_ce_headers_are_not_attributes() -> None:
    headers = binary_request(extra=[(b"user-agent", b"foo"), (b"traceparent", b"00-ab-cd-01")])
    assert parse_one(headers).attributes == MINIMAL_ATTRIBUTES


# --- header value decoding (C38-C41) --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_value", "decoded"),
    [
        (b"plain", "plain"),
        (b"Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro € 😀"),  # C41
        (b"Euro%20%e2%82%ac%20%f0%9f%98%80", "Euro € 😀"),  # C39: lower-case hex
        (b"%2Fpath%2fto%41", "/path/toA"),  # C39: needless escapes
        (b"%2541", "%41"),  # C38: exactly one round
        (b'"quoted"', "quoted"),  # C38: quoted-string
        (b'"say \\"hi\\" \\\\ bye"', 'say "hi" \\ bye'),  # C38: backslash escapes
        (b'"Euro%20%E2%82%AC"', "Euro €"),  # C38: unquote, then percent-decode
        (b'"%22"', '"'),
        (b'{"othervalue": 5}', '{"othervalue": 5}'),  # interior quotes, not a quoted-string
        (b'"', '"'),
        (b"caf\xc3\xa9", "café"),  # raw UTF-8 (obs-text) is strict UTF-8 too
        (b"", ""),
    ],
)
def test_decode_header_value_c38_c39_c41(raw_value: bytes, decoded: str) -> None:
    """C38: quoted-string first, then one round of percent-decoding; C39: lenient hex."""
    assert decode_header_value(raw_value) == decoded


@pytest.mark.parametrize(
    ("raw_value", "reason"),
    [
        (b"%C0%A0", "invalid UTF-8 after percent-decoding"),  # C40: overlong
        (b"%ED%A0%80", "invalid UTF-8 after percent-decoding"),  # encoded surrogate
        (b"%E2%82", "invalid UTF-8 after percent-decoding"),  # truncated sequence
        (b"%FF", "invalid UTF-8 after percent-decoding"),
        (b"\xc0\xa0", "invalid UTF-8"),  # raw overlong bytes
        (b"\xff", "invalid UTF-8"),
        (b"100%", "invalid percent-encoding"),
        (b"%G1", "invalid percent-encoding"),
        (b"%2", "invalid percent-encoding"),
        (b"% 20", "invalid percent-encoding"),
        (b"%+1", "invalid percent-encoding"),
        (b'"a"b"', "malformed quoted-string"),
        (b'"dangling\\"', "malformed quoted-string"),
    ],
)
def test_decode_header_value_rejects_bad_input_c40(raw_value: bytes, reason: str) -> None:
    """C40: invalid UTF-8 (overlong %C0%A0 included) and bad % sequences are errors."""
    with pytest.raises(BindingError) as caught:
        decode_header_value(raw_value)
    assert reason in caught.value.message


def test_binary_bad_header_value_error_names_the_header_c40() -> None:
    """C40 -> 400 with the header named."""
    message = error_of(raw("ce-subject", b"%C0%A0"))
    assert message == "header ce-subject: invalid UTF-8 after percent-decoding"
    assert error_of(raw("ce-subject", b"\xff")) == "header ce-subject: invalid UTF-8"
    assert error_of(raw("ce-subject", b"50%")).startswith("header ce-subject: invalid percent")


def test_binary_percent_encoded_attributes_are_decoded_c41() -> None:
    headers = binary_request({"ce-source": "/a%20b", "ce-id": "%E2%82%AC"})
    event = parse_one(headers)
    assert (event.source, event.id) == ("/a b", "€")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),  # C41
        ("plain/text:with;stuff?&=~!", "plain/text:with;stuff?&=~!"),  # C87: / and : kept
        ('a "quote" and 100%', "a%20%22quote%22%20and%20100%25"),  # C36
        ("tab\there\x7f\x85", "tab%09here%7F%C2%85"),  # C37: controls, upper-case hex
        ("", ""),
    ],
)
def test_encode_header_value_c36_c37_c41(value: str, encoded: str) -> None:
    """C36: encode space, ", % and non-printable-ASCII as UTF-8 %XY; C37: upper-case hex."""
    assert encode_header_value(value) == encoded
    assert decode_header_value(encoded.encode("ascii")) == value


@pytest.mark.parametrize(
    "value",
    ["Euro € 😀", "a b", '"q"', "50%", "/x:y", "ÿ", "\U0010fffd", "é\u200de", "~!#$&'()*+,;=@[]"],
)
def test_encode_header_value_matches_the_sdk_http_encoder_c36_c87(value: str) -> None:
    """C87: same output as the SDK's HTTP-binding encoder (an independent reference)."""
    assert encode_header_value(value) == sdk_http._encode_header_value(value)


def test_encode_header_value_refuses_an_unpaired_surrogate_c14() -> None:
    with pytest.raises(BindingError, match="unpaired surrogate"):
        encode_header_value("x\ud800")


# --- attribute value rules (C8-C10, C14), both modes -----------------------------------------

VALID_TIMES = [
    "2018-04-05T03:56:24Z",
    "2018-04-05t03:56:24z",
    "1985-04-12T23:20:50.52Z",
    "1996-12-19T16:39:57-08:00",
    "2024-05-01T12:34:56.123456789+05:30",
    "1990-12-31T23:59:60Z",  # leap second
    "2024-02-29T00:00:00Z",
    "2023-12-31T23:59:59+23:59",
]
INVALID_TIMES = [
    "",
    "2018-04-05",
    "2018-04-05T03:56:24",  # no offset
    "2018-04-05 03:56:24Z",
    "20180405T035624Z",
    "2018-04-05T03:56:24+0100",
    "2018-04-05T03:56Z",
    "2018-13-01T00:00:00Z",
    "2018-04-31T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2018-04-05T24:00:00Z",
    "2018-04-05T03:60:00Z",
    "2018-04-05T03:56:24.Z",
    "2018-04-05T03:56:24Z ",
    "\u0662\u0660\u0661\u0668-04-05T03:56:24Z",  # non-ASCII digits
    "yesterday",
]


@pytest.mark.parametrize("time", VALID_TIMES)
def test_time_accepts_rfc3339_c10(time: str) -> None:
    """C10: time is an RFC 3339 timestamp (T/Z either case, fractions, offsets, leap second)."""
    assert parse_one(binary_request({"ce-time": time})).attributes["time"] == time
    assert parse_structured(minimal_document(time=time)).attributes["time"] == time


@pytest.mark.parametrize("time", INVALID_TIMES)
def test_time_rejects_non_rfc3339_c10(time: str) -> None:
    """C10: anything that is not RFC 3339 (date-only, no offset, bad calendar day...)."""
    encoded = encode_header_value(time)
    message = error_of(binary_request({"ce-time": encoded}))
    assert message.startswith("attribute 'time' is not an RFC 3339 timestamp")
    assert message.endswith("(header ce-time)")
    assert "'time' is not an RFC 3339" in structured_error(minimal_document(time=time))


@pytest.mark.parametrize(
    "schema", ["https://example.com/schema.json", "urn:example:schema", "http://x/%20a?b=c#d"]
)
def test_dataschema_accepts_absolute_uris_c8(schema: str) -> None:
    headers = binary_request({"ce-dataschema": encode_header_value(schema)})
    assert parse_one(headers).get("dataschema") == schema
    assert parse_structured(minimal_document(dataschema=schema)).get("dataschema") == schema


@pytest.mark.parametrize(
    "schema", ["", "/relative/path", "schema.json", "http://ex ample.com", "1http://x", "h:é"]
)
def test_dataschema_rejects_empty_or_relative_c8(schema: str) -> None:
    """C8: dataschema (1.0) is a non-empty absolute URI."""
    message = error_of(binary_request({"ce-dataschema": encode_header_value(schema)}))
    assert message.startswith("attribute 'dataschema' must be a non-empty absolute URI")
    assert "dataschema" in structured_error(minimal_document(dataschema=schema))


def test_dataschema_in_a_03_event_is_just_an_extension_c83() -> None:
    event = parse_one(binary_request({"ce-specversion": "0.3", "ce-dataschema": "relative"}))
    assert event.get("dataschema") == "relative"


def test_schemaurl_03_is_a_non_empty_uri_reference_c83() -> None:
    """0.3 schemaurl: a URI-reference (relative allowed), never empty."""
    ok = parse_one(binary_request({"ce-specversion": "0.3", "ce-schemaurl": "/schemas/a"}))
    assert ok.get("schemaurl") == "/schemas/a"
    message = error_of(binary_request({"ce-specversion": "0.3", "ce-schemaurl": ""}))
    assert message.startswith("attribute 'schemaurl' must be a non-empty URI-reference")
    # in a 1.0 event schemaurl is an ordinary extension
    assert parse_one(binary_request({"ce-schemaurl": ""})).get("schemaurl") == ""


def test_subject_must_not_be_empty_c9() -> None:
    """C9: subject, if present, is non-empty."""
    assert error_of(binary_request({"ce-subject": ""})) == (
        "attribute 'subject' must not be empty when present (C9) (header ce-subject)"
    )
    assert "'subject' must not be empty" in structured_error(minimal_document(subject=""))


@pytest.mark.parametrize(
    ("encoded", "codepoint"),
    [
        ("a%0Ab", "U+000A"),
        ("a%09b", "U+0009"),
        ("%00", "U+0000"),
        ("%7F", "U+007F"),
        ("%C2%85", "U+0085"),  # C1 control
        ("%C2%9F", "U+009F"),
        ("%EF%B7%90", "U+FDD0"),  # noncharacter
        ("%EF%BF%BF", "U+FFFF"),
        ("%F4%8F%BF%BE", "U+10FFFE"),
    ],
)
def test_control_characters_and_noncharacters_are_rejected_c14(
    encoded: str, codepoint: str
) -> None:
    """C14: no U+0000-U+001F, U+007F-U+009F or noncharacters in string values (both modes)."""
    message = error_of(binary_request({"ce-subject": encoded}))
    assert message.startswith(f"attribute 'subject' contains {codepoint}")
    assert message.endswith("(C14) (header ce-subject)")
    value = decode_header_value(encoded.encode())
    assert f"contains {codepoint}" in structured_error(minimal_document(comexample=value))


def test_raw_tab_in_a_header_value_is_rejected_c14() -> None:
    assert "contains U+0009" in error_of(raw("ce-comexample", b"a\tb"))


@pytest.mark.parametrize("value", ["a\u00a0b", "👩\u200d💻", "\u2028", "é", "\U0010fffd"])
def test_non_control_unprintables_are_accepted_c14(value: str) -> None:
    """C14 forbids controls and noncharacters only: NBSP, ZWJ, line separator are fine."""
    headers = binary_request({"ce-comexample": encode_header_value(value)})
    assert parse_one(headers).attributes["comexample"] == value
    assert parse_structured(minimal_document(comexample=value)).get("comexample") == value


# --- structured mode ------------------------------------------------------------------------


def test_structured_full_event_with_typed_extensions_c50_c51() -> None:
    """C50, C51: attributes are top-level members; extensions keep string/integer/boolean."""
    document = minimal_document(
        time="2018-04-05T17:31:00Z",
        subject="123",
        dataschema="https://example.com/schema",
        datacontenttype="application/json",
        comexampleint=42,
        comexamplebool=True,
        comexamplefalse=False,
        comexamplestring="text",
        data={"hello": "world"},
    )
    event = parse_structured(document)
    expected = {k: v for k, v in document.items() if k != "data"}
    assert event.attributes == expected
    assert type(event.attributes["comexampleint"]) is int
    assert event.attributes["comexamplebool"] is True
    assert event.data == b'{"hello":"world"}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "structured event: body is not valid JSON"),
        (b"{", "structured event: body is not valid JSON"),
        (b"[]", "structured event: body must be a JSON object, got array"),
        (b'"event"', "structured event: body must be a JSON object, got string"),
        (b"\xff", "structured event: body is not valid JSON"),
    ],
)
def test_structured_body_must_be_a_json_object_c49(body: bytes, reason: str) -> None:
    """C49: one event is one JSON object."""
    assert error_of(STRUCTURED, body).startswith(reason)


@pytest.mark.parametrize("name", ["specversion", "id", "source", "type"])
def test_structured_missing_required_attribute_is_rejected_k48_c1(name: str) -> None:
    document = minimal_document()
    del document[name]
    assert structured_error(document) == f"missing required attribute '{name}'"


def test_structured_unsupported_specversion_is_rejected_k31() -> None:
    message = structured_error(minimal_document(specversion="19.0"))
    assert message == "unsupported specversion '19.0' (supported: 1.0, 0.3)"


@pytest.mark.parametrize(
    ("member", "value", "kind"),
    [
        ("specversion", 1.0, "number"),
        ("id", 1234, "number"),
        ("source", ["/a"], "array"),
        ("type", True, "boolean"),
        ("time", 1700000000, "number"),
        ("subject", {"a": 1}, "object"),
        ("datacontenttype", 5, "number"),
        ("dataschema", False, "boolean"),
    ],
)
def test_structured_core_attributes_must_be_json_strings_c51(
    member: str, value: Any, kind: str
) -> None:
    """C51: String/URI/Timestamp attributes are JSON strings."""
    message = structured_error(minimal_document(**{member: value}))
    assert message.startswith(f"attribute '{member}' must be a JSON string, got {kind}")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1.5, "must be a string, integer or boolean, got number"),
        (1.0, "must be a string, integer or boolean, got number"),
        ({"othervalue": 5}, "must be a string, integer or boolean, got object"),
        ([1], "must be a string, integer or boolean, got array"),
        (2**31, "integer 2147483648 is outside the signed 32-bit range"),
        (-(2**31) - 1, "integer -2147483649 is outside the signed 32-bit range"),
    ],
)
def test_structured_extension_types_are_limited_c13(value: Any, reason: str) -> None:
    """C13: extension values are String, Integer (signed 32-bit) or Boolean."""
    message = structured_error(minimal_document(comexample=value))
    assert message.startswith("extension 'comexample'")
    assert reason in message


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 0])
def test_structured_32_bit_integer_bounds_are_accepted_c13(value: int) -> None:
    assert parse_structured(minimal_document(comexample=value)).get("comexample") == value


@pytest.mark.parametrize("name", ["Foo", "foo_bar", "foo-bar", "", "é"])
def test_structured_invalid_member_name_is_rejected_c16(name: str) -> None:
    message = structured_error(minimal_document(**{name: "x"}))
    assert message.startswith(f"invalid attribute name {name!r}")


def test_structured_null_member_is_unset_c52() -> None:
    """C52: a null member is unset (an optional one vanishes, a required one is missing)."""
    event = parse_structured(minimal_document(subject=None, comexample=None, time=None))
    assert event.attributes == MINIMAL_ATTRIBUTES
    assert structured_error(minimal_document(id=None)) == "missing required attribute 'id'"


def test_structured_data_and_data_base64_are_mutually_exclusive_c58() -> None:
    message = structured_error(minimal_document(data="x", data_base64="eA=="))
    assert message == "'data' and 'data_base64' are mutually exclusive (C58)"
    # a null data_base64 is unset, so data alone applies
    event = parse_structured(minimal_document(datacontenttype="text/plain", data="x"))
    assert event.data == b"x"
    assert parse_structured(minimal_document(data=None, data_base64=None)).data == b"null"


@pytest.mark.parametrize("payload", [b"", b"\x00\xff binary", bytes(range(256))])
def test_structured_data_base64_is_decoded_c53(payload: bytes) -> None:
    document = minimal_document(
        datacontenttype="application/octet-stream",
        data_base64=base64.b64encode(payload).decode(),
    )
    assert parse_structured(document).data == payload


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not base64!", "not valid base64"),
        ("QQ", "not valid base64"),  # missing padding
        ("QQ==\n", "not valid base64"),
        ("QR==", "not canonical base64"),  # non-zero pad bits
        ("Q Q==", "not valid base64"),
        ("4oKs", None),  # valid: "€"
    ],
)
def test_structured_data_base64_is_decoded_strictly_c53(text: str, reason: str | None) -> None:
    document = minimal_document(data_base64=text)
    if reason is None:
        assert parse_structured(document).data == "€".encode()
    else:
        message = structured_error(document)
        assert message.startswith("'data_base64' is not")
        assert reason in message


def test_structured_data_base64_must_be_a_string_c53() -> None:
    message = structured_error(minimal_document(data_base64=123))
    assert message == "'data_base64' must be a base64 JSON string, got number"


def test_structured_data_base64_without_datacontenttype_stays_without_c54() -> None:
    """C54: no datacontenttype is invented for data_base64."""
    event = parse_structured(minimal_document(data_base64="AAE="))
    assert event.data == b"\x00\x01"
    assert "datacontenttype" not in event.attributes


@pytest.mark.parametrize(
    ("content_type", "data", "expected"),
    [
        ("application/json", {"a": [1, True, None]}, b'{"a":[1,true,null]}'),
        ("application/json", "I'm just a string", b'"I\'m just a string"'),  # C59, C61
        ("application/json", '{"not":"parsed again"}', b'"{\\"not\\":\\"parsed again\\"}"'),
        ("application/json", 12.5, b"12.5"),
        ("application/json", None, b"null"),
        ("application/json; charset=utf-8", [1, 2], b"[1,2]"),  # C55: parameters ignored
        ("text/json", {"x": "€"}, '{"x":"€"}'.encode()),
        ("application/vnd.example+json", {"x": 1}, b'{"x":1}'),  # */*+json
        ("APPLICATION/JSON", {"x": 1}, b'{"x":1}'),  # C7: case-insensitive
        (None, {"x": 1}, b'{"x":1}'),  # C56: no type = JSON
        (None, "text", b'"text"'),
    ],
)
def test_structured_json_data_is_a_json_value_c55_c56_c59(
    content_type: str | None, data: Any, expected: bytes
) -> None:
    """C55/C56: JSON media type (or none): data is a JSON value; C59: a string stays one."""
    members: dict[str, Any] = {"data": data}
    if content_type is not None:
        members["datacontenttype"] = content_type
    assert parse_structured(minimal_document(**members)).data == expected


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", "Hello, 🌎!"),
        ("application/xml", '<much wow="xml"/>'),  # C61: raw XML body
        ("text/plain; charset=us-ascii", ""),
        ("application/octet-stream", "bytes as text"),
    ],
)
def test_structured_text_data_is_its_utf8_bytes_c57(content_type: str, data: str) -> None:
    """C57: non-JSON media types carry the content as a JSON string."""
    event = parse_structured(minimal_document(datacontenttype=content_type, data=data))
    assert event.data == data.encode("utf-8")


@pytest.mark.parametrize(("data", "kind"), [({"a": 1}, "object"), (5, "number"), ([], "array")])
def test_structured_non_json_type_requires_string_data_c57_c59(data: Any, kind: str) -> None:
    message = structured_error(minimal_document(datacontenttype="text/plain", data=data))
    assert message.startswith("'data' must be a JSON string for the non-JSON datacontenttype")
    assert f"got {kind}" in message


def test_structured_absent_data_is_no_data_c58() -> None:
    """C58: an absent data member is no data; a null one with a text type is none too."""
    assert parse_structured(minimal_document()).data is None
    event = parse_structured(minimal_document(datacontenttype="text/plain", data=None))
    assert event.data is None


def test_structured_03_keeps_schemaurl_and_datacontentencoding_k32_c83() -> None:
    """C83: 0.3 attributes stay as given; base64 datacontentencoding -> decoded data bytes."""
    document = minimal_document(
        specversion="0.3",
        schemaurl="https://example.com/schema",
        datacontentencoding="base64",
        datacontenttype="application/octet-stream",
        data=base64.b64encode(b"\x00\x01\x02").decode(),
    )
    event = parse_structured(document)
    assert event.attributes == {k: v for k, v in document.items() if k != "data"}
    assert event.data == b"\x00\x01\x02"


def test_structured_03_base64_data_must_be_valid_base64_c83() -> None:
    document = minimal_document(specversion="0.3", datacontentencoding="Base64", data="%%%")
    assert structured_error(document).startswith("'data' is not valid base64")
    document = minimal_document(specversion="0.3", datacontentencoding="base64", data=5)
    assert structured_error(document) == "'data' must be a base64 JSON string, got number"


def test_structured_03_without_base64_encoding_reads_data_normally_c83() -> None:
    document = minimal_document(specversion="0.3", datacontentencoding="7bit", data={"a": 1})
    assert parse_structured(document).data == b'{"a":1}'


def test_structured_10_datacontentencoding_is_an_ordinary_extension() -> None:
    """In a 1.0 event datacontentencoding means nothing: data is read as usual."""
    document = minimal_document(datacontentencoding="base64", data="aGk=")
    assert parse_structured(document).data == b'"aGk="'


# --- batch mode (C45-C48) -------------------------------------------------------------------

BATCH = [(b"content-type", b"application/cloudevents-batch+json; charset=UTF-8")]


def test_batch_empty_array_is_no_events_c47() -> None:
    assert parse_request(BATCH, b"[]") == []


def test_batch_parses_every_event_in_order_c46() -> None:
    documents = [
        minimal_document(id="1", data={"n": 1}),
        minimal_document(id="2", datacontenttype="text/plain", data="two", comexample=7),
        minimal_document(id="3", data_base64="AA=="),
    ]
    events = parse_request(BATCH, orjson.dumps(documents))
    assert [e.id for e in events] == ["1", "2", "3"]
    assert [e.data for e in events] == [b'{"n":1}', b"two", b"\x00"]
    assert events[1].attributes["comexample"] == 7


def test_batch_bad_element_error_names_its_index_c46() -> None:
    documents = [minimal_document(id="1"), minimal_document(id="2"), minimal_document()]
    del documents[2]["id"]
    message = error_of(BATCH, orjson.dumps(documents))
    assert message == "event [2]: missing required attribute 'id'"


def test_batch_element_must_be_an_object_c46() -> None:
    message = error_of(BATCH, orjson.dumps([minimal_document(), 5]))
    assert message == "event [1]: must be a JSON object, got number (C46)"


@pytest.mark.parametrize(("body", "reason"), [(b"{}", "got object"), (b"[", "not valid JSON")])
def test_batch_body_must_be_a_json_array_c46(body: bytes, reason: str) -> None:
    message = error_of(BATCH, body)
    assert message.startswith("batch: body")
    assert reason in message


def test_batch_events_must_share_one_specversion_c47() -> None:
    documents = [minimal_document(id="1"), minimal_document(id="2", specversion="0.3")]
    message = error_of(BATCH, orjson.dumps(documents))
    assert message.startswith("event [1]: specversion '0.3' differs from '1.0' of event [0]")
    assert "C47" in message


def test_batch_events_may_differ_in_other_attributes_c47() -> None:
    documents = [
        minimal_document(id="1", datacontenttype="text/plain", data="a"),
        minimal_document(id="2", type="other", datacontenttype="application/json", data=[1]),
    ]
    assert len(parse_request(BATCH, orjson.dumps(documents))) == 2


def test_to_batch_writes_the_batch_media_type_and_round_trips_c45_c46() -> None:
    events = [
        CloudEvent({**MINIMAL_ATTRIBUTES, "id": str(i), "comexample": i}, b'{"i":%d}' % i)
        for i in range(3)
    ]
    headers, body = to_batch(events)
    assert headers == [("content-type", "application/cloudevents-batch+json; charset=UTF-8")]
    assert parse_request(as_bytes(headers), body) == events
    assert to_batch([])[1] == b"[]"


def test_to_batch_refuses_mixed_specversions_c47() -> None:
    events = [
        CloudEvent(dict(MINIMAL_ATTRIBUTES)),
        CloudEvent({**MINIMAL_ATTRIBUTES, "specversion": "0.3"}),
    ]
    with pytest.raises(BindingError, match="one specversion"):
        to_batch(events)


# --- responses (replies) ---------------------------------------------------------------------


def test_parse_response_empty_reply_is_no_event() -> None:
    assert parse_response([], b"") is None
    assert parse_response([(b"content-type", b"application/cloudevents+json")], b"") is None


def test_parse_response_binary_without_specversion_is_no_event_k30() -> None:
    """A plain HTTP reply (no ce-specversion, not structured) carries no event."""
    headers = [(b"content-type", b"application/json"), (b"ce-id", b"1")]
    assert parse_response(headers, b'{"ok":true}') is None
    assert parse_response([(b"content-type", b"text/plain")], b"thanks") is None


def test_parse_response_binary_event_is_parsed_strictly_c24() -> None:
    """C24: replies follow the same rules as requests."""
    headers = binary_request(extra=[(b"content-type", b"text/plain")])
    event = parse_response(headers, b"reply")
    assert event == CloudEvent({**MINIMAL_ATTRIBUTES, "datacontenttype": "text/plain"}, b"reply")
    with pytest.raises(BindingError, match="missing required attribute 'source'"):
        parse_response(binary_request({"ce-source": None}), b"")


def test_parse_response_structured_event_and_malformed_one_c24() -> None:
    document = minimal_document(data={"a": 1})
    event = parse_response(STRUCTURED, orjson.dumps(document))
    assert event is not None
    assert event.data == b'{"a":1}'
    with pytest.raises(BindingError, match="body is not valid JSON"):
        parse_response(STRUCTURED, b"{oops")


def test_parse_response_batch_reply() -> None:
    assert parse_response(BATCH, b"[]") is None
    event = parse_response(BATCH, orjson.dumps([minimal_document()]))
    assert event is not None
    assert event.attributes == MINIMAL_ATTRIBUTES
    with pytest.raises(BindingError, match="at most one event, got a batch of 2"):
        parse_response(BATCH, orjson.dumps([minimal_document(), minimal_document()]))


# --- encoders -------------------------------------------------------------------------------


def test_to_binary_maps_attributes_to_headers_c29_c31_c35_c36() -> None:
    """C31: ce-<name> per attribute; C29: datacontenttype -> content-type; C15/C35 canonical."""
    event = CloudEvent(
        {
            **MINIMAL_ATTRIBUTES,
            "subject": "Euro € 😀",
            "datacontenttype": "text/plain; charset=utf-8",
            "comexampleint": 42,
            "comexamplebool": False,
        },
        b"hello",
    )
    headers, body = to_binary(event)
    assert headers == [
        ("ce-specversion", "1.0"),
        ("ce-id", "A234-1234-1234"),
        ("ce-source", "/mycontext"),
        ("ce-type", "com.example.someevent"),
        ("ce-subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
        ("ce-comexampleint", "42"),
        ("ce-comexamplebool", "false"),
        ("content-type", "text/plain; charset=utf-8"),
    ]
    assert body == b"hello"


def test_to_binary_without_data_or_type_c33() -> None:
    headers, body = to_binary(CloudEvent(dict(MINIMAL_ATTRIBUTES)))
    assert "content-type" not in dict(headers)
    assert body == b""


def test_to_structured_content_type_and_members_c42_c50_c51() -> None:
    event = CloudEvent({**MINIMAL_ATTRIBUTES, "comexampleint": 7, "comexamplebool": True})
    headers, body = to_structured(event)
    assert headers == [("content-type", "application/cloudevents+json; charset=UTF-8")]
    assert orjson.loads(body) == event.attributes


@pytest.mark.parametrize(
    ("content_type", "data", "member", "value"),
    [
        ("application/json", b'{"a": [1, 2]}', "data", {"a": [1, 2]}),  # C55
        ("application/json", b'"I\'m just a string"', "data", "I'm just a string"),  # C61
        (None, b"[1,2]", "data", [1, 2]),  # C56
        ("application/json", b"{not json", "data_base64", "e25vdCBqc29u"),
        (None, b"not json", "data_base64", "bm90IGpzb24="),  # C54
        ("text/plain", "Hello, 🌎!".encode(), "data", "Hello, 🌎!"),  # C57
        ("application/xml", b"<a/>", "data", "<a/>"),  # C61
        ("application/octet-stream", b"\x00\xff", "data_base64", "AP8="),  # C53
        ("text/plain", b"\xff\xfe", "data_base64", "//4="),  # not UTF-8
    ],
)
def test_to_structured_data_member_c53_to_c57(
    content_type: str | None, data: bytes, member: str, value: Any
) -> None:
    attributes: dict[str, Any] = dict(MINIMAL_ATTRIBUTES)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    _, body = to_structured(CloudEvent(attributes, data))
    document = orjson.loads(body)
    assert document[member] == value
    assert {"data", "data_base64"} & set(document) == {member}  # C58
    assert ("datacontenttype" in document) == (content_type is not None)  # C54


def test_to_structured_03_base64_encoding_writes_base64_text_as_data_c83() -> None:
    event = CloudEvent(
        {**MINIMAL_ATTRIBUTES, "specversion": "0.3", "datacontentencoding": "base64"}, b"\x00"
    )
    document = orjson.loads(to_structured(event)[1])
    assert document["data"] == "AA=="
    assert "data_base64" not in document


# --- round trips ----------------------------------------------------------------------------

ROUND_TRIP_EVENTS = {
    "minimal-1.0": CloudEvent(dict(MINIMAL_ATTRIBUTES)),
    "minimal-0.3": CloudEvent({**MINIMAL_ATTRIBUTES, "specversion": "0.3"}),
    "full-1.0-unicode": CloudEvent(
        {
            **MINIMAL_ATTRIBUTES,
            "source": "https://example.com/a b?c=d%20e",
            "time": "2018-04-05T17:31:00.123Z",
            "subject": "Euro € 😀",
            "dataschema": "https://example.com/schema.json",
            "datacontenttype": "application/json",
            "comexampleextension": 'quotes " and percent % and \\ backslash',
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
        b'{"message":"Hello, \xf0\x9f\x8c\x8e!"}',
    ),
    "0.3-schemaurl-base64": CloudEvent(
        {
            **MINIMAL_ATTRIBUTES,
            "specversion": "0.3",
            "schemaurl": "/schemas/x",
            "datacontentencoding": "base64",
            "datacontenttype": "application/octet-stream",
        },
        bytes(range(256)),
    ),
    "0.3-json": CloudEvent(
        {**MINIMAL_ATTRIBUTES, "specversion": "0.3", "datacontenttype": "application/json"},
        b'["Hello","\xf0\x9f\x8c\x8e!"]',
    ),
    "json-string": CloudEvent(
        {**MINIMAL_ATTRIBUTES, "datacontenttype": "application/json; charset=utf-8"},
        b'"I\'m just a string"',
    ),
    "json-without-type": CloudEvent(dict(MINIMAL_ATTRIBUTES), b'{"a":1}'),
    "text": CloudEvent(
        {**MINIMAL_ATTRIBUTES, "datacontenttype": "text/plain; charset=utf-8"},
        "Hello, 🌎!\n".encode(),
    ),
    "xml": CloudEvent(
        {**MINIMAL_ATTRIBUTES, "datacontenttype": "application/xml"}, b'<much wow="xml"/>'
    ),
    "binary": CloudEvent(
        {**MINIMAL_ATTRIBUTES, "datacontenttype": "application/vnd.apache.thrift.binary"},
        b"\x80\x01\x00\x01\xff\xfe",
    ),
    "binary-without-type": CloudEvent(dict(MINIMAL_ATTRIBUTES), b"\xc0\xa0"),
    "invalid-json-with-json-type": CloudEvent(
        {**MINIMAL_ATTRIBUTES, "datacontenttype": "application/json"}, b"{not json"
    ),
}
TYPED_EXTENSIONS = {"comexampleint": -(2**31), "comexamplebool": True, "comexampleno": False}


@pytest.mark.parametrize("name", ROUND_TRIP_EVENTS)
def test_binary_round_trip(name: str) -> None:
    """parse(to_binary(e)) == e for both versions, unicode values and any data (C30, C41)."""
    event = ROUND_TRIP_EVENTS[name]
    headers, body = to_binary(event)
    assert parse_request(as_bytes(headers), body) == [event]
    assert parse_response(as_bytes(headers), body) == event


@pytest.mark.parametrize("name", ROUND_TRIP_EVENTS)
def test_structured_round_trip_with_typed_extensions(name: str) -> None:
    """parse(to_structured(e)) == e, typed extensions included (C51, C53-C57)."""
    event = ROUND_TRIP_EVENTS[name].evolve(set=TYPED_EXTENSIONS)
    headers, body = to_structured(event)
    assert parse_request(as_bytes(headers), body) == [event]


def test_binary_structured_binary_crossing_keeps_data_bytes_c61() -> None:
    """C61: JSON string data with a JSON type stays the quoted JSON text in binary mode."""
    event = ROUND_TRIP_EVENTS["json-string"]
    (via_structured,) = parse_request(*_structured(event))
    assert to_binary(via_structured)[1] == b'"I\'m just a string"'


def _structured(event: CloudEvent) -> tuple[Pairs, bytes]:
    headers, body = to_structured(event)
    return as_bytes(headers), body


# --- the SDK as an independent reference encoder ---------------------------------------------


def _sdk_event(data: Any, **attributes: Any) -> SdkCloudEvent:
    base = {
        "id": "sdk-1",
        "source": "/sdk",
        "type": "com.example.sdk",
        "specversion": "1.0",
        "time": datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=UTC),
        "subject": "Euro € 😀",
        "comexample": "a b",
    }
    base.update(attributes)
    return SdkCloudEvent(base, data)


@pytest.mark.parametrize(
    ("data", "content_type", "expected_data"),
    [
        ({"a": 1}, "application/json", b'{"a": 1}'),
        ("plain text", "text/plain", b"plain text"),
        (b"\x00\x01", "application/octet-stream", b"\x00\x01"),
    ],
)
def test_sdk_binary_encoding_parses_c31_c36_c41(
    data: Any, content_type: str, expected_data: bytes
) -> None:
    message = sdk_http.to_binary(_sdk_event(data, datacontenttype=content_type), JSONFormat())
    headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in message.headers.items()]
    event = parse_one(headers, message.body)
    assert event.attributes == {
        "id": "sdk-1",
        "source": "/sdk",
        "type": "com.example.sdk",
        "specversion": "1.0",
        "time": "2024-05-01T12:34:56.789000Z",
        "subject": "Euro € 😀",
        "comexample": "a b",
        "datacontenttype": content_type,
    }
    assert event.data == expected_data


@pytest.mark.parametrize(
    ("data", "content_type", "expected_data"),
    [
        ({"a": 1}, "application/json", b'{"a":1}'),
        ("plain text", "text/plain", b"plain text"),
        (b"\x00\x01", "application/octet-stream", b"\x00\x01"),
    ],
)
def test_sdk_structured_encoding_parses_c43_c53_c55_c57(
    data: Any, content_type: str, expected_data: bytes
) -> None:
    message = sdk_http.to_structured(_sdk_event(data, datacontenttype=content_type), JSONFormat())
    headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in message.headers.items()]
    event = parse_one(headers, message.body)
    assert event.attributes["subject"] == "Euro € 😀"
    assert event.attributes["time"] == "2024-05-01T12:34:56.789000Z"
    assert event.data == expected_data


def test_sdk_decoder_reads_our_binary_encoding_c36() -> None:
    """Our to_binary output is what the SDK's decoder expects (interoperability)."""
    event = ROUND_TRIP_EVENTS["full-1.0-unicode"]
    headers, body = to_binary(event)
    decoded = sdk_http.from_binary(sdk_http.HTTPMessage(dict(headers), body), JSONFormat())
    assert decoded.get_attributes()["subject"] == "Euro € 😀"
    assert (
        decoded.get_attributes()["comexampleextension"] == event.attributes["comexampleextension"]
    )


def test_module_exports_the_public_api() -> None:
    for name in (
        "content_mode",
        "parse_request",
        "parse_response",
        "to_binary",
        "to_structured",
        "to_batch",
        "encode_header_value",
        "decode_header_value",
    ):
        assert callable(getattr(binding, name))
