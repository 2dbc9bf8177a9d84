"""The Kafka adapter's pure parts: topic names, the record format (Kafka binding), options.

The adapter's behaviour against a real server is in ``tests/conformance/test_kafka_bus.py``
and the shared suite; these need no server.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from pathlib import Path

import pytest

from adapters.kafka import KafkaBus, KafkaOptions
from adapters.kafka.client import client_kwargs
from adapters.kafka.wire import (
    NO_DATA_HEADER,
    TYPES_HEADER,
    decode_record,
    encode_record,
    kafka_topic,
)
from broker.core.errors import BusError
from broker.core.events import CloudEvent


def typed(attributes: dict[str, str | int | bool]) -> dict[str, tuple[str, str | int | bool]]:
    return {name: (type(value).__name__, value) for name, value in attributes.items()}


# -- topic names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["cemesh.broker.default.my-broker", "cemesh.trigger.0f9a7c3e-1b2d-4e5f-8a9b-0c1d2e3f4a5b"],
)
def test_cemesh_topic_names_are_kafka_names_unchanged(topic: str) -> None:
    """cemesh's own topic names are legal Kafka names and are used as they are."""
    assert kafka_topic(topic) == topic


def test_illegal_characters_and_underscore_are_escaped_injectively() -> None:
    """Every character outside [A-Za-z0-9.-] (and ``_``) becomes ``_<hex>_``: no collisions."""
    assert kafka_topic("a/b") == "a_2f_b"
    assert kafka_topic("a_b") == "a_5f_b"
    assert kafka_topic("ü") == "_fc_"
    assert kafka_topic("a_2f_b") != kafka_topic("a/b")
    assert kafka_topic(".") != "." and kafka_topic("..") != ".."
    assert kafka_topic("") == "_"


def test_long_topic_names_fit_kafka_limit_and_stay_distinct() -> None:
    """Kafka topic names are at most 249 characters; long names keep a hash suffix."""
    first, second = kafka_topic("x" * 300 + "1"), kafka_topic("x" * 300 + "2")
    assert len(first) == len(second) == 249
    assert first != second
    assert set(first) <= set("x-0123456789abcdef")


# -- the record format -----------------------------------------------------------------------------


def full_event() -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": "e-1",
            "source": "/sources/ü",
            "type": "dev.cemesh.test",
            "datacontenttype": "application/json",
            "subject": "日本語",
            "count": 7,
            "flag": True,
            "off": False,
            "text": "true",
            "partitionkey": "k",
        },
        b'{"a": 1}',
    )


def test_binary_mode_headers_follow_the_kafka_binding_C71() -> None:
    """C71: data is the value as is; content-type holds datacontenttype; ce_<attr> UTF-8."""
    value, headers = encode_record(full_event())
    as_dict = dict(headers)
    assert value == b'{"a": 1}'
    assert as_dict["content-type"] == b"application/json"
    assert "ce_datacontenttype" not in as_dict
    assert as_dict["ce_id"] == b"e-1"
    assert as_dict["ce_specversion"] == b"1.0"
    assert as_dict["ce_source"] == "/sources/ü".encode()
    assert as_dict["ce_subject"] == "日本語".encode()
    assert as_dict["ce_count"] == b"7"
    assert as_dict["ce_flag"] == b"true"
    assert as_dict["ce_partitionkey"] == b"k"
    assert json.loads(as_dict[TYPES_HEADER]) == {
        "count": "Integer",
        "flag": "Boolean",
        "off": "Boolean",
    }
    assert NO_DATA_HEADER not in as_dict


@pytest.mark.parametrize("data", [None, b"", b"\x00\xff\r\n" + bytes(range(256))])
def test_record_round_trip_keeps_every_attribute_type_and_data_byte(data: bytes | None) -> None:
    """Events cross unaltered: ints, bools, strings that look like them, no data vs empty data."""
    event = full_event()
    event = CloudEvent(dict(event.attributes), data)
    value, headers = encode_record(event)
    back = decode_record(value, headers)
    assert typed(back.attributes) == typed(event.attributes)
    assert type(back.data) is type(data)
    assert back.data == data


def test_binary_record_of_another_producer_reads_as_strings_C71() -> None:
    """A binary-mode record without cemesh's headers: attributes are strings, value is data."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"x"),
        ("ce_source", b"/s"),
        ("ce_type", b"t"),
        ("ce_count", b"3"),
        ("content-type", b"text/plain"),
    ]
    event = decode_record(b"hello", headers)
    assert event.attributes == {
        "specversion": "1.0",
        "id": "x",
        "source": "/s",
        "type": "t",
        "count": "3",
        "datacontenttype": "text/plain",
    }
    assert event.data == b"hello"


def test_structured_record_is_read_C72() -> None:
    """C72: a structured record (content-type application/cloudevents+json) is an event too."""
    document = {
        "specversion": "1.0",
        "id": "s-1",
        "source": "/s",
        "type": "t",
        "datacontenttype": "application/json",
        "seq": 4,
        "data": {"k": "v"},
    }
    headers = [("content-type", b"application/cloudevents+json; charset=UTF-8")]
    event = decode_record(json.dumps(document).encode(), headers)
    assert event.attributes["seq"] == 4
    assert json.loads(event.data or b"") == {"k": "v"}
    binary = {**document, "datacontenttype": "application/octet-stream"}
    del binary["data"]
    binary["data_base64"] = base64.b64encode(b"\x00\x01").decode()
    assert decode_record(json.dumps(binary).encode(), headers).data == b"\x00\x01"


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"plain", []),
        (b"x", [("ce_id", b"no-specversion")]),
        (b"x", [("ce_specversion", b"1.0"), (TYPES_HEADER, b'{"id": "Float"}')]),
        (b"[1]", [("content-type", b"application/cloudevents+json")]),
    ],
)
def test_records_that_are_not_cloudevents_raise_value_error(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    with pytest.raises(ValueError):
        decode_record(value, headers)


# -- options ---------------------------------------------------------------------------------------


def test_unknown_option_is_a_terminal_bus_error_naming_it() -> None:
    with pytest.raises(BusError) as raised:
        KafkaBus({"bootstrap_servers": "h:1", "no_such_option": 1})
    assert raised.value.retryable is False
    assert "no_such_option" in str(raised.value)


@pytest.mark.parametrize(
    "options",
    [
        {"num_partitions": 0},
        {"session_timeout_ms": "10"},
        {"max_buffered": True},
        {"security_protocol": "TLS"},
        {"bootstrap_servers": 9092},
    ],
)
def test_bad_option_values_are_terminal_bus_errors(options: dict[str, object]) -> None:
    with pytest.raises(BusError) as raised:
        KafkaBus(options)
    assert raised.value.retryable is False


def test_settings_defaults_build_a_bus() -> None:
    """Every ``kafka_*`` setting of broker/core/config.py is an option the adapter knows."""
    from broker.core.config import Settings
    from broker.server.app import bus_options

    bus = KafkaBus(bus_options(Settings(), "kafka"))
    assert bus.options == KafkaOptions()


def test_heartbeat_defaults_to_a_third_of_the_session_timeout() -> None:
    assert KafkaOptions(session_timeout_ms=1500).heartbeat_ms == 500
    assert KafkaOptions(session_timeout_ms=45_000).heartbeat_ms == 3_000
    assert KafkaOptions(heartbeat_interval_ms=42).heartbeat_ms == 42


def test_sasl_options_map_to_the_client() -> None:
    kwargs = client_kwargs(
        KafkaOptions(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="u",
            sasl_password="p",
        )
    )
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("u", "p")
    assert "ssl_context" not in kwargs


def test_tls_options_build_an_ssl_context(tmp_path: Path) -> None:
    """SSL / SASL_SSL: an ssl context from ssl_cafile, ssl_certfile and ssl_keyfile."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    kwargs = client_kwargs(
        KafkaOptions(
            security_protocol="SASL_SSL",
            ssl_cafile=str(cert),
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
    )
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["sasl_mechanism"] == "PLAIN"


def test_missing_tls_file_is_a_terminal_bus_error(tmp_path: Path) -> None:
    with pytest.raises(BusError) as raised:
        KafkaBus({"security_protocol": "SSL", "ssl_cafile": str(tmp_path / "missing.pem")})
    assert raised.value.retryable is False
