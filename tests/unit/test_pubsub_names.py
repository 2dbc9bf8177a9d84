"""The pubsub bus adapter's pure parts: the name mapping and the settings it is built from."""

from __future__ import annotations

import itertools
import re

import pytest

from adapters.pubsub.names import subscription_id, topic_id
from broker.core.config import Settings
from broker.server.app import bus_options

# Pub/Sub's rule for topic and subscription IDs.
VALID_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")

ODD_NAMES = [
    "",
    "a",
    "ab",
    "abc",
    "1topic",
    "-x",
    "%41bc",
    "Abc",
    "x%%abc",
    "h%%abc",
    "x~abc",
    "h~abc",
    "a~b",
    "~",
    "goog-topic",
    "GOOGle",
    "a b",
    "a/b",
    "a%b",
    "a%25b",
    "ünïcødé",
    "日本語",
    "🚀",
    "a\x00b",
    "x" * 255,
    "x" * 256,
    "é" * 200,
    "y" * 300 + "1",
    "y" * 300 + "2",
]


def test_cemesh_names_are_kept_as_they_are() -> None:
    """cemesh's topic and group names are already valid Pub/Sub IDs: readable as they are."""
    assert topic_id("cemesh.broker.default.my-broker") == "cemesh.broker.default.my-broker"
    assert topic_id("cemesh.channel.ns.orders_v2") == "cemesh.channel.ns.orders_v2"
    assert (
        subscription_id("cemesh.broker.default.b", "cemesh.trigger.0b1c-42")
        == "cemesh.trigger.0b1c-42~cemesh.broker.default.b"
    )


@pytest.mark.parametrize("name", ODD_NAMES)
def test_every_name_maps_to_a_valid_id(name: str) -> None:
    """Letters, digits, ``-_.~+%``, a letter first, not ``goog``, 3-255 characters."""
    for mapped in (topic_id(name), subscription_id(name, name), subscription_id("t", name)):
        assert VALID_ID.fullmatch(mapped), mapped
        assert not mapped.lower().startswith("goog")


def test_topic_mapping_is_one_to_one() -> None:
    """Two different topics never share a Pub/Sub topic."""
    mapped = [topic_id(name) for name in ODD_NAMES]
    assert len(set(mapped)) == len(ODD_NAMES)


def test_subscription_mapping_is_one_to_one_over_topic_and_group() -> None:
    """A group is a group of one topic: (topic, group) pairs never share a subscription."""
    names = [*ODD_NAMES, "a%%b", "b", "a%", "a~", "~b", "x", "h"]
    pairs = list(itertools.product(names, repeat=2))
    mapped = {subscription_id(topic, group) for topic, group in pairs}
    assert len(mapped) == len(pairs)
    # A separator inside the names cannot make two pairs meet.
    assert subscription_id("b~c", "a") != subscription_id("c", "a~b")
    assert subscription_id("b", "a\x00") != subscription_id("\x00b", "a")


def test_pubsub_settings_become_adapter_options() -> None:
    """``pubsub_<option>`` settings reach the adapter as ``option`` (unset ones are left out)."""
    options = bus_options(
        Settings(pubsub_emulator_host="127.0.0.1:8085", pubsub_pull_streams=2), "pubsub"
    )
    assert options["emulator_host"] == "127.0.0.1:8085"
    assert options["pull_streams"] == 2
    assert options["project"] == "cemesh"
    assert options["ack_deadline"] == 60
    assert "credentials_file" not in options
