"""The ingress's memo tables stay small whatever clients send (issue 11, item 3)."""

from __future__ import annotations

import orjson

from broker.core import binding, binding_attributes, binding_json
from broker.core.memo import remember
from broker.dataplane import routes

MEGABYTE = 1024 * 1024


def _key_bytes(*tables: dict) -> int:
    return sum(len(key) for table in tables for key in table)


def _tables() -> list[dict]:
    return [
        binding._HEADER_ATTRIBUTE,
        binding_json._EXTENSION_NAMES,
        binding._MODE_BY_CONTENT_TYPE,
        binding_attributes._JSON_MEDIA_TYPE,
        binding._HEADER_ROLE,
        routes._ROUTES,
    ]


def test_a_memo_keeps_neither_long_keys_nor_more_than_its_entries() -> None:
    memo: dict[str, int] = {}
    remember(memo, "abcd", 1, max_key_length=3, max_entries=2)
    assert "abcd" not in memo
    for value, key in enumerate("abc", start=1):
        remember(memo, key, value, max_key_length=3, max_entries=2)
    assert memo == {"a": 1, "b": 2}


def test_huge_names_content_types_and_paths_are_checked_but_never_remembered() -> None:
    before = _key_bytes(*_tables())
    for index in range(20):
        huge = "x" * MEGABYTE + "abcdefghijklmnopqrst"[index]  # a valid name, a megabyte long
        document = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", huge: 1}
        [structured] = binding.parse_request(
            [(b"content-type", b"application/cloudevents+json")], orjson.dumps(document)
        )
        assert structured.attributes[huge] == 1  # checked and accepted, not remembered
        headers = [
            (b"ce-specversion", b"1.0"),
            (b"ce-id", b"1"),
            (b"ce-source", b"/s"),
            (b"ce-type", b"t"),
            (b"ce-" + huge.encode(), b"v"),
            (b"content-type", b"text/plain; p=" + huge.encode()),
            (b"x-" + huge.encode(), b"v"),
        ]
        [binary] = binding.parse_request(headers, b"data")
        assert binary.attributes[huge] == "v"
        assert routes.match_route("/" + huge + "/broker") == ("broker", huge, "broker")
    grown = _key_bytes(*_tables()) - before
    assert grown < 100 * 1024, grown  # 20 rounds of megabyte keys added (almost) nothing
