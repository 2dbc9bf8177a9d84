"""The project's own CloudEvents HTTP request cases, written from the specifications.

Each :class:`BindingCase` is one HTTP request (headers and body) and what a receiver must make of
it: the events it carries (attributes and data bytes), or a 400 whose message names the fault.
The cases follow the CloudEvents 1.0 core specification, the HTTP protocol binding (binary,
structured and batched content modes, header encoding), the JSON event format (typed members,
``data`` / ``data_base64``) and the JSON batch format. They are run at the binding level
(tests/unit/test_binding_cases.py) and end to end through a Broker
(tests/e2e/test_binding_cases_through_broker.py), so the same table checks both.

Every valid case has its own ``id`` so that a subscriber shared by all cases can tell the
deliveries apart.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

Header = tuple[str, bytes]
AttributeValue = str | int | bool

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


@dataclass(frozen=True)
class Expected:
    """One event a request must yield: its attributes and data (``None``: no data)."""

    attributes: dict[str, AttributeValue]
    data: bytes | None = None


@dataclass(frozen=True)
class BindingCase:
    name: str
    headers: list[Header]
    body: bytes = b""
    events: list[Expected] = field(default_factory=list)
    error: str | None = None  # a fragment the 400 message must contain (names the fault)

    @property
    def valid(self) -> bool:
        return self.error is None

    def param(self) -> Any:
        return pytest.param(self, id=self.name)


def required(case_id: str, **more: AttributeValue) -> dict[str, AttributeValue]:
    """The four required attributes (1.0) with a case-specific id, plus ``more``."""
    return {
        "specversion": "1.0",
        "id": case_id,
        "source": "/cemesh/tests",
        "type": "dev.cemesh.binding.case",
        **more,
    }


def binary(case_id: str, *extra: tuple[str, str | bytes], omit: tuple[str, ...] = ()) -> list:
    """Binary-mode headers: ``ce-`` headers for the required attributes, then ``extra``."""
    headers = [
        (f"ce-{name}", str(value).encode())
        for name, value in required(case_id).items()
        if name not in omit
    ]
    return headers + [(name, v if isinstance(v, bytes) else v.encode()) for name, v in extra]


def structured_body(document: Any) -> bytes:
    return json.dumps(document).encode()


def content_type(value: str) -> Header:
    return ("content-type", value.encode())


def _binary_cases() -> list[BindingCase]:
    cid = "binary"
    return [
        BindingCase(
            "binary: the required attributes and no body is an event without data",
            binary(f"{cid}-minimal"),
            events=[Expected(required(f"{cid}-minimal"))],
        ),
        BindingCase(
            "binary: Content-Type becomes datacontenttype, the body is data byte for byte",
            binary(f"{cid}-json", ("content-type", "application/json")),
            b'{"total": 12.5,  "items": [1, 2]}',
            [
                Expected(
                    required(f"{cid}-json", datacontenttype="application/json"),
                    b'{"total": 12.5,  "items": [1, 2]}',
                )
            ],
        ),
        BindingCase(
            "binary: any media type is carried, binary data unchanged",
            binary(f"{cid}-octets", ("content-type", "application/octet-stream")),
            bytes(range(256)),
            [
                Expected(
                    required(f"{cid}-octets", datacontenttype="application/octet-stream"),
                    bytes(range(256)),
                )
            ],
        ),
        BindingCase(
            "binary: a body without Content-Type has no datacontenttype",
            binary(f"{cid}-untyped"),
            b"plain bytes",
            [Expected(required(f"{cid}-untyped"), b"plain bytes")],
        ),
        BindingCase(
            "binary: datacontenttype keeps its parameters",
            binary(f"{cid}-charset", ("content-type", "text/plain; charset=utf-8")),
            "héllo".encode(),
            [
                Expected(
                    required(f"{cid}-charset", datacontenttype="text/plain; charset=utf-8"),
                    "héllo".encode(),
                )
            ],
        ),
        BindingCase(
            "binary: optional attributes subject, time, dataschema",
            binary(
                f"{cid}-optional",
                ("ce-subject", "order/42"),
                ("ce-time", "2024-05-30T12:00:00.123456789+02:00"),
                ("ce-dataschema", "https://example.com/schemas/order.json"),
            ),
            events=[
                Expected(
                    required(
                        f"{cid}-optional",
                        subject="order/42",
                        time="2024-05-30T12:00:00.123456789+02:00",
                        dataschema="https://example.com/schemas/order.json",
                    )
                )
            ],
        ),
        BindingCase(
            "binary: extensions are ce- headers and stay Strings",
            binary(
                f"{cid}-extensions",
                ("ce-tenant", "acme"),
                ("ce-priority", "5"),
                ("ce-sampled", "true"),
            ),
            events=[
                Expected(required(f"{cid}-extensions", tenant="acme", priority="5", sampled="true"))
            ],
        ),
        BindingCase(
            "binary: header names are case-insensitive",
            [
                ("CE-SpecVersion", b"1.0"),
                ("Ce-Id", f"{cid}-case".encode()),
                ("CE-SOURCE", b"/cemesh/tests"),
                ("ce-Type", b"dev.cemesh.binding.case"),
                ("Ce-TraceParentx", b"x"),
                ("CONTENT-TYPE", b"text/plain"),
            ],
            b"x",
            [
                Expected(
                    required(f"{cid}-case", traceparentx="x", datacontenttype="text/plain"),
                    b"x",
                )
            ],
        ),
        BindingCase(
            "binary: percent-encoded header values are decoded as UTF-8",
            binary(f"{cid}-percent", ("ce-subject", "caf%C3%A9%20au%20lait%25")),
            events=[Expected(required(f"{cid}-percent", subject="café au lait%"))],
        ),
        BindingCase(
            "binary: a quoted-string header value is unquoted",
            binary(f"{cid}-quoted", ("ce-note", '"a \\"b\\" c"')),
            events=[Expected(required(f"{cid}-quoted", note='a "b" c'))],
        ),
        BindingCase(
            "binary: headers without the ce- prefix are not attributes",
            binary(
                f"{cid}-transport",
                ("x-request-id", "r-1"),
                ("user-agent", "tests/1.0"),
                ("cesomething", "no dash"),
            ),
            events=[Expected(required(f"{cid}-transport"))],
        ),
        BindingCase(
            "binary: version 0.3 is accepted and kept",
            [
                ("ce-specversion", b"0.3"),
                ("ce-id", f"{cid}-v03".encode()),
                ("ce-source", b"/cemesh/tests"),
                ("ce-type", b"dev.cemesh.binding.case"),
                ("ce-schemaurl", b"schemas/order"),
            ],
            events=[
                Expected(
                    {
                        "specversion": "0.3",
                        "id": f"{cid}-v03",
                        "source": "/cemesh/tests",
                        "type": "dev.cemesh.binding.case",
                        "schemaurl": "schemas/order",
                    }
                )
            ],
        ),
        BindingCase(
            "binary: a source may be any non-empty URI-reference",
            [
                ("ce-specversion", b"1.0"),
                ("ce-id", f"{cid}-urn".encode()),
                ("ce-source", b"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"),
                ("ce-type", b"dev.cemesh.binding.case"),
            ],
            events=[
                Expected(
                    {
                        **required(f"{cid}-urn"),
                        "source": "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
                    }
                )
            ],
        ),
        # --- invalid binary requests ------------------------------------------------------
        BindingCase(
            "binary: missing ce-specversion",
            binary("x", omit=("specversion",)),
            error="missing required attribute 'specversion'",
        ),
        BindingCase(
            "binary: missing ce-id",
            binary("x", omit=("id",)),
            error="missing required attribute 'id'",
        ),
        BindingCase(
            "binary: missing ce-source",
            binary("x", omit=("source",)),
            error="missing required attribute 'source'",
        ),
        BindingCase(
            "binary: missing ce-type",
            binary("x", omit=("type",)),
            error="missing required attribute 'type'",
        ),
        BindingCase(
            "binary: an empty ce-id",
            [(n, b"" if n == "ce-id" else v) for n, v in binary("x")],
            error="id",
        ),
        BindingCase(
            "binary: specversion 2.0 is not supported",
            [(n, b"2.0" if n == "ce-specversion" else v) for n, v in binary("x")],
            error="2.0",
        ),
        BindingCase(
            "binary: specversion 1 (not major.minor) is not supported",
            [(n, b"1" if n == "ce-specversion" else v) for n, v in binary("x")],
            error="specversion",
        ),
        BindingCase(
            "binary: an extension name with upper case or punctuation",
            binary("x", ("ce-my_ext", "v")),
            error="my_ext",
        ),
        BindingCase("binary: an attribute named data", binary("x", ("ce-data", "v")), error="data"),
        BindingCase(
            "binary: an attribute given twice",
            binary("x", ("ce-tenant", "a"), ("ce-tenant", "b")),
            error="tenant",
        ),
        BindingCase(
            "binary: a time that is not RFC 3339",
            binary("x", ("ce-time", "30 May 2024 12:00")),
            error="time",
        ),
        BindingCase(
            "binary: a time without a zone offset",
            binary("x", ("ce-time", "2024-05-30T12:00:00")),
            error="time",
        ),
        BindingCase(
            "binary: a relative dataschema",
            binary("x", ("ce-dataschema", "schemas/a")),
            error="dataschema",
        ),
        BindingCase("binary: an empty subject", binary("x", ("ce-subject", "")), error="subject"),
        BindingCase(
            "binary: a malformed percent escape",
            binary("x", ("ce-subject", "100%")),
            error="ce-subject",
        ),
        BindingCase(
            "binary: percent-encoding that is not UTF-8",
            binary("x", ("ce-subject", "%FF%FE")),
            error="ce-subject",
        ),
        BindingCase(
            "binary: a control character, percent-encoded",
            binary("x", ("ce-subject", "a%00b")),
            error="subject",
        ),
        BindingCase(
            "binary: ce-datacontenttype instead of Content-Type",
            binary("x", ("ce-datacontenttype", "application/json")),
            error="datacontenttype",
        ),
    ]


def _structured_cases() -> list[BindingCase]:
    cid = "structured"
    json_type = content_type(STRUCTURED)
    return [
        BindingCase(
            "structured: JSON data is a JSON value",
            [json_type],
            structured_body(
                required(f"{cid}-json", datacontenttype="application/json", data={"a": [1, 2]})
            ),
            [Expected(required(f"{cid}-json", datacontenttype="application/json"), b'{"a":[1,2]}')],
        ),
        BindingCase(
            "structured: without datacontenttype, data is JSON",
            [json_type],
            structured_body(required(f"{cid}-implied", data=[True, None])),
            [Expected(required(f"{cid}-implied"), b"[true,null]")],
        ),
        BindingCase(
            "structured: a +json media type reads data as JSON",
            [json_type],
            structured_body(
                required(f"{cid}-plusjson", datacontenttype="application/vnd.order+json", data=7)
            ),
            [
                Expected(
                    required(f"{cid}-plusjson", datacontenttype="application/vnd.order+json"),
                    b"7",
                )
            ],
        ),
        BindingCase(
            "structured: text data is its UTF-8 bytes",
            [json_type],
            structured_body(
                required(f"{cid}-text", datacontenttype="text/plain", data="grüße\nzeile 2")
            ),
            [
                Expected(
                    required(f"{cid}-text", datacontenttype="text/plain"),
                    "grüße\nzeile 2".encode(),
                )
            ],
        ),
        BindingCase(
            "structured: data_base64 is decoded to the bytes",
            [json_type],
            structured_body(
                required(
                    f"{cid}-base64",
                    datacontenttype="image/png",
                    data_base64=base64.b64encode(b"\x89PNG\r\n\x1a\n\x00").decode(),
                )
            ),
            [
                Expected(
                    required(f"{cid}-base64", datacontenttype="image/png"),
                    b"\x89PNG\r\n\x1a\n\x00",
                )
            ],
        ),
        BindingCase(
            "structured: typed extensions keep their JSON types",
            [json_type],
            structured_body(
                required(f"{cid}-typed", priority=5, sampled=False, region="eu-west-1")
            ),
            events=[
                Expected(required(f"{cid}-typed", priority=5, sampled=False, region="eu-west-1"))
            ],
        ),
        BindingCase(
            "structured: a null member is an absent attribute",
            [json_type],
            structured_body(required(f"{cid}-null", subject=None, time=None, tenant=None)),
            events=[Expected(required(f"{cid}-null"))],
        ),
        BindingCase(
            "structured: the media type is case-insensitive and may carry a charset",
            [content_type("Application/CloudEvents+JSON; Charset=UTF-8")],
            structured_body(required(f"{cid}-mixedcase")),
            events=[Expected(required(f"{cid}-mixedcase"))],
        ),
        BindingCase(
            "structured: ce- headers are ignored, the body is the event",
            [json_type, ("ce-id", b"from-header"), ("ce-tenant", b"header")],
            structured_body(required(f"{cid}-headers")),
            events=[Expected(required(f"{cid}-headers"))],
        ),
        BindingCase(
            "structured: time with fractional seconds and a lower-case t and z",
            [json_type],
            structured_body(required(f"{cid}-time", time="2024-05-30t12:00:00.5z")),
            events=[Expected(required(f"{cid}-time", time="2024-05-30t12:00:00.5z"))],
        ),
        # --- invalid structured requests --------------------------------------------------
        BindingCase("structured: the body is not JSON", [json_type], b"{not json", error="JSON"),
        BindingCase("structured: the body is a JSON array", [json_type], b"[]", error="object"),
        BindingCase(
            "structured: missing type",
            [json_type],
            structured_body({k: v for k, v in required("x").items() if k != "type"}),
            error="type",
        ),
        BindingCase(
            "structured: specversion 0.1",
            [json_type],
            structured_body(required("x") | {"specversion": "0.1"}),
            error="0.1",
        ),
        BindingCase(
            "structured: specversion as a number",
            [json_type],
            structured_body(required("x") | {"specversion": 1.0}),
            error="specversion",
        ),
        BindingCase(
            "structured: id must be a String",
            [json_type],
            structured_body(required("x") | {"id": 17}),
            error="id",
        ),
        BindingCase(
            "structured: data and data_base64 together",
            [json_type],
            structured_body(required("x", data="a", data_base64="YQ==")),
            error="data_base64",
        ),
        BindingCase(
            "structured: data_base64 that is not base64",
            [json_type],
            structured_body(required("x", data_base64="not base64!")),
            error="data_base64",
        ),
        BindingCase(
            "structured: an extension value that is an object",
            [json_type],
            structured_body(required("x", tenant={"name": "acme"})),
            error="tenant",
        ),
        BindingCase(
            "structured: an Integer extension outside 32 bits",
            [json_type],
            structured_body(required("x", counter=2**31)),
            error="counter",
        ),
        BindingCase(
            "structured: an extension name longer than a-z0-9",
            [json_type],
            structured_body(required("x") | {"Tenant-Name": "acme"}),
            error="Tenant-Name",
        ),
        BindingCase(
            "structured: a non-JSON media type with non-string data",
            [json_type],
            structured_body(required("x", datacontenttype="text/plain", data={"a": 1})),
            error="data",
        ),
    ]


def _batch_cases() -> list[BindingCase]:
    cid = "batch"
    batch_type = content_type(BATCH)
    return [
        BindingCase(
            "batch: every event of the array, in order",
            [batch_type],
            structured_body(
                [
                    required(f"{cid}-1", data={"n": 1}),
                    required(f"{cid}-2", datacontenttype="text/plain", data="two"),
                    required(f"{cid}-3", data_base64=base64.b64encode(b"\x00\x01").decode()),
                ]
            ),
            [
                Expected(required(f"{cid}-1"), b'{"n":1}'),
                Expected(required(f"{cid}-2", datacontenttype="text/plain"), b"two"),
                Expected(required(f"{cid}-3"), b"\x00\x01"),
            ],
        ),
        BindingCase(
            "batch: the media type is case-insensitive",
            [content_type("application/CloudEvents-Batch+JSON; charset=utf-8")],
            structured_body([required(f"{cid}-case")]),
            [Expected(required(f"{cid}-case"))],
        ),
        BindingCase("batch: an empty array is no events", [batch_type], b"[]", events=[]),
        BindingCase(
            "batch: the body is an object, not an array",
            [batch_type],
            structured_body(required("x")),
            error="array",
        ),
        BindingCase(
            "batch: an invalid element is named by its index",
            [batch_type],
            structured_body([required("x-0"), {"specversion": "1.0", "id": "x-1"}]),
            error="event [1]: missing required attribute",
        ),
        BindingCase(
            "batch: an element that is not an object",
            [batch_type],
            structured_body([required("x-0"), "event"]),
            error="event [1]",
        ),
        BindingCase(
            "batch: events of different spec versions",
            [batch_type],
            structured_body([required("x-0"), required("x-1") | {"specversion": "0.3"}]),
            error="specversion",
        ),
    ]


CASES: list[BindingCase] = [*_binary_cases(), *_structured_cases(), *_batch_cases()]
VALID: list[BindingCase] = [case for case in CASES if case.valid]
INVALID: list[BindingCase] = [case for case in CASES if not case.valid]
