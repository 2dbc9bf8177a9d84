"""broker.core.binding.to_binary's fast path agrees with encoding each value on its own (C36).

to_binary checks all of an event's values at once and encodes them one by one only when that
check fails; whatever the values, the headers must be exactly those of the per-value rule.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.binding import decode_header_value, encode_header_value, to_binary
from broker.core.errors import BindingError
from broker.core.events import AttributeValue, CloudEvent, attribute_text

# Mostly header-safe text, with the characters that need encoding mixed in now and then.
_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("abcXYZ09/:-._~!#$&'()*+,;=@[]"),
        st.sampled_from(' "%\t\x7f\x85é€😀'),
    ),
    max_size=20,
)
_VALUE: st.SearchStrategy[AttributeValue] = st.one_of(
    _TEXT, st.integers(-(2**31), 2**31 - 1), st.booleans()
)
_EXTENSIONS = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).filter(
        lambda name: name not in ("specversion", "id", "source", "type", "datacontenttype")
    ),
    _VALUE,
    max_size=4,
)


def _one_by_one(event: CloudEvent) -> list[tuple[str, str]]:
    """The headers by the per-value rule: every value encoded on its own."""
    headers = [
        ("ce-" + name, encode_header_value(attribute_text(value)))
        for name, value in event.attributes.items()
        if name != "datacontenttype"
    ]
    content_type = event.attributes.get("datacontenttype")
    if content_type is not None:
        headers.append(("content-type", attribute_text(content_type)))
    return headers


@given(
    event_id=_TEXT.filter(bool),
    source=_TEXT.filter(bool),
    extensions=_EXTENSIONS,
    content_type=st.one_of(st.none(), st.sampled_from(["application/json", "text/plain; x=y"])),
)
def test_to_binary_headers_are_each_value_encoded_on_its_own_c36(
    event_id: str, source: str, extensions: dict[str, AttributeValue], content_type: str | None
) -> None:
    attributes: dict[str, AttributeValue] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": "t",
        **extensions,
    }
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    event = CloudEvent(attributes, b"data")
    headers, body = to_binary(event)
    assert headers == _one_by_one(event)
    assert body == b"data"
    for name, value in headers:
        if name.startswith("ce-"):
            assert decode_header_value(value.encode("ascii")) == attribute_text(
                attributes[name[3:]]
            )


def test_to_binary_refuses_an_unpaired_surrogate_in_any_value_c14() -> None:
    event = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t\ud800"})
    with pytest.raises(BindingError, match="unpaired surrogate"):
        to_binary(event)
