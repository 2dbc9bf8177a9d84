"""The nats bus adapter's pure parts: name mapping, de-duplication id, delivery count, PubAck
check, options."""

from __future__ import annotations

import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from adapters.nats.bus import check_pub_ack
from adapters.nats.names import consumer_name, dedup_id, delivery_count, stream_name, subject_of
from adapters.nats.options import NatsOptions
from broker.core.config import Settings
from broker.core.errors import BusError
from broker.core.events import BROKER_TTL, new_event
from broker.dataplane.bus.options import parse_options
from broker.server.app import bus_options

FORBIDDEN_IN_NAMES = set(" \t\r\n.*>/\\")


def test_cemesh_topics_and_groups_map_to_readable_stream_and_consumer_names() -> None:
    """Dots (not allowed in JetStream names) become underscores; nothing else changes."""
    assert stream_name("cemesh.broker.default.my-broker") == "cemesh_broker_default_my-broker"
    assert consumer_name("cemesh.trigger.0b1c-42") == "cemesh_trigger_0b1c-42"
    assert subject_of("cemesh.broker.default.my-broker") == "cemesh.broker.default.my-broker"


@pytest.mark.parametrize(
    ("one", "other"),
    [("a.b", "a_b"), ("a._b", "a_.b"), ("x y", "x_y"), ("a/b", "a_b"), ("", "~")],
)
def test_name_mapping_is_one_to_one(one: str, other: str) -> None:
    """Two different topics never share a stream (nor two groups a consumer)."""
    assert stream_name(one) != stream_name(other)
    assert consumer_name(one) != consumer_name(other)


@pytest.mark.parametrize(
    "topic", ["with space", "wild.*.card", "tail.>", "slash/and\\back", "", "ünï.cødé", "x" * 500]
)
def test_any_topic_maps_to_legal_names_and_subjects(topic: str) -> None:
    name = stream_name(topic)
    assert name and not set(name) & FORBIDDEN_IN_NAMES and len(name) <= 200
    subject = subject_of(topic)
    assert all(token and "*" not in token and ">" not in token for token in subject.split("."))
    assert subject.isascii() and not any(c.isspace() for c in subject)
    assert subject_of(topic) == subject  # stable


def test_system_subjects_are_never_used_for_topics() -> None:
    assert not subject_of("$JS.API.STREAM.CREATE.x").startswith("$")


def test_dedup_id_is_source_and_id_plus_broker_ttl() -> None:
    """Republishing an event gives the same Nats-Msg-Id; a reply with a decremented ttl does not."""
    event = new_event(type="t", source="/sources/ünï code?q=1", id="id 1")
    assert dedup_id(event) == dedup_id(event.evolve(set={"time": "2020-01-01T00:00:00Z"}))
    assert dedup_id(event) != dedup_id(event.evolve(set={"id": "id 2"}))
    with_ttl = event.evolve(set={BROKER_TTL: 255})
    assert dedup_id(with_ttl) != dedup_id(with_ttl.evolve(set={BROKER_TTL: 254}))
    msg_id = dedup_id(event)
    assert msg_id is not None and msg_id.isascii() and "\r" not in msg_id and "\n" not in msg_id
    assert dedup_id(event.evolve(remove=("id",))) is None


def test_unknown_option_is_a_terminal_bus_error_naming_it() -> None:
    with pytest.raises(BusError) as raised:
        parse_options(NatsOptions, "nats", {"url": "nats://x:4222", "ackwait": 3})
    assert raised.value.retryable is False
    assert "ackwait" in str(raised.value)


@pytest.mark.parametrize(
    "options",
    [
        {"ack_wait": 0},
        {"ack_wait": "30"},
        {"max_ack_pending": True},
        {"retention": "workqueue"},
        {"max_age": -1},
        {"tls_cert_file": "/c.pem"},  # without its key
        {"url": ""},
    ],
)
def test_bad_option_values_are_terminal_bus_errors(options: dict[str, object]) -> None:
    with pytest.raises(BusError) as raised:
        parse_options(NatsOptions, "nats", options)
    assert raised.value.retryable is False


def test_every_nats_setting_is_an_option_of_the_adapter() -> None:
    """The ``nats_*`` settings (with their defaults) are what the adapter is built from."""
    options = parse_options(NatsOptions, "nats", bus_options(Settings(), "nats"))
    assert options == NatsOptions()


@given(
    delivered=st.integers(min_value=1, max_value=10**9),
    stream_seq=st.integers(min_value=1, max_value=10**12),
    domain=st.sampled_from(["", "hub"]),
    v2=st.booleans(),
    extra_tokens=st.integers(min_value=0, max_value=2),
)
def test_delivery_count_reads_num_delivered_as_nats_py_does(
    delivered: int, stream_seq: int, domain: str, v2: bool, extra_tokens: int
) -> None:
    """The ack subject's delivery count (v1 and v2 formats) is what nats-py's metadata says."""
    stamp = 1_733_480_000_000_000_000
    if v2:
        tokens = ["$JS", "ACK", domain or "_", "ACCHASH", "stream_a", "consumer-b", str(delivered)]
        tokens += [str(stream_seq), "7", str(stamp), "3"] + ["x"] * extra_tokens
    else:
        tokens = ["$JS", "ACK", "stream_a", "consumer-b", str(delivered), str(stream_seq), "7"]
        tokens += [str(stamp), "3"]
    reply = ".".join(tokens)
    expected = Msg(None, subject="s", reply=reply, data=b"").metadata.num_delivered  # type: ignore[arg-type]
    assert delivery_count(reply) == expected == delivered


@pytest.mark.parametrize("reply", ["", "_INBOX.abc", "$JS.ACK.a.b.1", "$JS.API.a.b.c.d.e.f.g"])
def test_delivery_count_refuses_what_is_no_jetstream_ack_subject(reply: str) -> None:
    """A message that is not JetStream's has no delivery count: ValueError, not a guess."""
    with pytest.raises(ValueError):
        delivery_count(reply)


@pytest.mark.parametrize(
    "answer",
    [
        b'{"stream":"cemesh_broker_default_b","seq":7}',
        b'{"stream":"s","seq":8,"duplicate":true}',
        b'{"stream":"s","domain":"hub","seq":9}',
    ],
)
def test_check_pub_ack_passes_a_pub_ack(answer: bytes) -> None:
    """JetStream's PubAck (new or duplicate) is an accepted publish."""
    check_pub_ack(answer)


def test_check_pub_ack_raises_the_api_error_jetstream_answered() -> None:
    """An error answer is nats-py's APIError with JetStream's code and description."""
    answer = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    with pytest.raises(nats.js.errors.APIError) as raised:
        check_pub_ack(answer)
    assert raised.value.code == 503
    assert raised.value.err_code == 10077
