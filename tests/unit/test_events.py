"""The event envelope that opaque-payload buses carry: every attribute and data byte survive."""

from __future__ import annotations

import pytest

from broker.core.events import CloudEvent, decode_envelope, encode_envelope, new_event


@pytest.mark.parametrize(
    "event",
    [
        new_event(type="t", source="/s"),
        new_event(type="t", source="/s", data=b""),
        new_event(type="t", source="/s", data=b"\n\x00\xff{not json", datacontenttype="x/y"),
        new_event(type="t", source="/s", extensions={"count": 7, "flag": True, "text": "é\n"}),
        CloudEvent({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}, b"x"),
    ],
)
def test_envelope_round_trips_every_attribute_and_data_byte(event: CloudEvent) -> None:
    """Events cross the bus unaltered (architecture: bus contract), typed extensions included."""
    assert decode_envelope(encode_envelope(event)) == event


@pytest.mark.parametrize("payload", [b"", b"\x02{}\n", b"\x00{}", b"\x01[1]\n"])
def test_decoding_something_else_is_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_envelope(payload)
