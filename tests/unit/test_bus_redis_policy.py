"""The pure parts of the redis bus adapter: names, options, redelivery timing, trimming floor,
which driver errors are worth retrying."""

from __future__ import annotations

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError, TimeoutError

from adapters.redis_streams.options import RedisOptions
from adapters.redis_streams.policy import (
    group_name,
    release_idle_ms,
    retryable,
    stream_key,
    successor,
    trim_floor,
)
from broker.core.errors import BusError
from broker.dataplane.bus.options import parse_options


def test_topic_and_group_names_are_used_unchanged() -> None:
    """Redis keys and group names are binary-safe: no mapping, so no collisions."""
    assert stream_key("cemesh.broker.default.my-broker") == "cemesh.broker.default.my-broker"
    assert group_name("cemesh.trigger.1b4e-ü") == "cemesh.trigger.1b4e-ü"


def test_options_default_and_all_settings_accepted() -> None:
    assert parse_options(RedisOptions, "redis", None) == RedisOptions()
    parsed = parse_options(
        RedisOptions,
        "redis",
        {
            "url": "redis://user:pw@10.0.0.1:6380/2",
            "maxlen": 1000,
            "visibility_timeout": 5,
            "block_ms": 50,
            "claim_interval": 0.2,
            "trim_interval": 0,
            "socket_timeout": 1.0,
            "connect_timeout": 1.0,
        },
    )
    assert parsed.visibility_ms == 5000 and parsed.maxlen == 1000 and parsed.trim_interval == 0


def test_unknown_option_is_a_terminal_bus_error_naming_the_key() -> None:
    with pytest.raises(BusError, match="ack_wait") as raised:
        parse_options(RedisOptions, "redis", {"url": "redis://127.0.0.1:6379/0", "ack_wait": 3})
    assert raised.value.retryable is False


@pytest.mark.parametrize(
    "options",
    [
        {"url": "http://127.0.0.1:6379"},
        {"maxlen": 0},
        {"maxlen": True},
        {"visibility_timeout": 0},
        {"visibility_timeout": "30"},
        {"block_ms": 0},  # BLOCK 0 blocks forever: close would hang
        {"claim_interval": 0},
        {"trim_interval": -1},
        {"socket_timeout": 0.1, "block_ms": 200},  # a blocking read would time out
    ],
)
def test_bad_option_values_are_terminal_bus_errors(options: dict[str, object]) -> None:
    with pytest.raises(BusError) as raised:
        parse_options(RedisOptions, "redis", options)
    assert raised.value.retryable is False


def test_release_idle_makes_the_entry_claimable_exactly_after_the_delay() -> None:
    """NACK_DELAY: XAUTOCLAIM takes entries idle >= visibility; releasing with IDLE =
    visibility - delay (delay rounded up, never early) makes that happen after the delay."""
    assert release_idle_ms(30_000, 0.0) == 30_000  # at once
    assert release_idle_ms(30_000, 0.5) == 29_500
    assert release_idle_ms(30_000, 0.0004) == 29_999
    assert release_idle_ms(30_000, 30.0) == 0
    assert release_idle_ms(30_000, 30.001) is None  # longer: held locally first
    assert release_idle_ms(30_000, -1.0) == 30_000


def test_successor_is_the_next_stream_id() -> None:
    assert successor(b"1700000000000-7") == "1700000000000-8"
    assert successor("0-0") == "0-1"


def test_trim_floor_keeps_what_any_group_still_needs() -> None:
    """Each group needs its oldest pending entry, or else everything after its last delivered
    one; the floor is the smallest of those (ids compare as numbers, not text)."""
    groups = [
        (b"900-0", None),  # all acked up to 900-0
        (b"1000-3", b"95-1"),  # an old entry still pending
    ]
    assert trim_floor(b"1000-3", groups) == "95-1"
    assert trim_floor(b"1000-3", [(b"900-0", None), (b"1000-3", None)]) == "900-1"
    assert trim_floor(b"1000-3", [(b"0-0", None)]) == "0-1"  # a new group of an old stream
    assert trim_floor(b"1000-3", []) == "1000-4"  # no group: nobody needs anything


def test_connection_trouble_is_retryable_and_bad_commands_are_not() -> None:
    assert retryable(ConnectionError("Connection refused"))
    assert retryable(TimeoutError("Timeout reading from socket"))
    assert retryable(ResponseError("OOM command not allowed when used memory > 'maxmemory'."))
    assert retryable(ResponseError("READONLY You can't write against a read only replica."))
    assert retryable(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert not retryable(
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    )
    assert not retryable(AuthenticationError("invalid username-password pair"))
