"""The archive and replay rules (broker/features/archive/policy.py, broker/cli/replay.py,
broker/dataplane/archive.py): pure functions, checked alone and with hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.cli.failures import CliError
from broker.cli.replay import parse_moment, pick_archive, progress_line, replay_object
from broker.controlplane.archive_store import StoredEvent
from broker.core.errors import InvalidResource
from broker.core.events import new_event
from broker.dataplane.archive import accepted_micros
from broker.features.archive.kinds import replay_rate
from broker.features.archive.policy import (
    PERSIST_EVERY_EVENTS,
    advance,
    begin,
    finish,
    pace_delay,
    parse_instant,
    persist_due,
    retention_cutoff,
    sweep_interval,
)

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


@given(
    st.floats(min_value=0.1, max_value=10_000),
    st.integers(min_value=0, max_value=100_000),
    st.floats(min_value=0, max_value=1_000),
)
def test_pacing_never_lets_more_than_rate_events_out_per_second(
    rate: float, sent: int, elapsed: float
) -> None:
    """Event n leaves no earlier than n / rate after the start, and never waits longer."""
    delay = pace_delay(100.0, sent, rate, 100.0 + elapsed)
    assert delay >= 0
    leaves = elapsed + delay
    assert leaves >= sent / rate - 1e-6
    assert delay == 0 or abs(leaves - sent / rate) < 1e-6


def test_the_cursor_advances_past_each_event_done_and_counts_it() -> None:
    event = new_event(type="t", source="/s")
    progress = begin(start_us=1_000, high_water=7, total=2)
    assert (progress.cursor_us, progress.cursor_id, progress.replayed) == (1_000, 0, 0)
    progress = advance(progress, StoredEvent(3, 1_500, event))
    assert (progress.cursor_us, progress.cursor_id, progress.replayed) == (1_500, 3, 1)
    progress = advance(progress, StoredEvent(5, 1_500, event))
    assert (progress.cursor_us, progress.cursor_id, progress.replayed) == (1_500, 5, 2)
    assert not progress.finished and finish(progress).finished
    # total was counted at the start; more done than counted raises it rather than show 3/2
    assert advance(progress, StoredEvent(6, 1_600, event)).total == 3


def test_progress_is_saved_every_few_events_or_half_a_second() -> None:
    assert not persist_due(0, 10.0)
    assert not persist_due(1, 0.1)
    assert persist_due(1, 0.5)
    assert persist_due(PERSIST_EVERY_EVENTS, 0.0)


@given(st.floats(min_value=0.001, max_value=3.2e9))
def test_retention_cutoff_is_retention_before_now(retention: float) -> None:
    now_us = 1_800_000_000_000_000
    assert abs((now_us - retention_cutoff(now_us, retention)) - retention * 1e6) <= 1


def test_retention_is_swept_at_a_quarter_of_the_shortest_within_bounds() -> None:
    assert sweep_interval([]) == 60.0
    assert sweep_interval([2.0, 86400.0]) == 0.5
    assert sweep_interval([40.0]) == 10.0
    assert sweep_interval([0.1]) == 0.5


def test_replay_times_are_rfc3339_with_a_zone() -> None:
    assert parse_instant("1970-01-01T00:00:01Z", "f") == 1_000_000
    assert parse_instant("1970-01-01T01:00:01+01:00", "f") == 1_000_000
    for bad, words in [
        ("2026-01-01T00:00:00", "no time zone"),
        ("tomorrow", "not an RFC 3339"),
        (None, "must be an RFC 3339"),
    ]:
        with pytest.raises(InvalidResource) as caught:
            parse_instant(bad, "spec.startTime")
        assert caught.value.field == "spec.startTime" and words in caught.value.message


@pytest.mark.parametrize("rate", [0, -1, 100_001, "10", True, None, float("nan")])
def test_a_replay_rate_must_be_a_positive_bounded_number(rate: object) -> None:
    with pytest.raises(InvalidResource) as caught:
        replay_rate(rate)
    assert caught.value.field == "spec.rate"


def test_an_event_is_archived_at_the_time_the_broker_accepted_it() -> None:
    event = new_event(
        type="t", source="/s", extensions={"knativearrivaltime": "1970-01-01T00:00:02Z"}
    )
    assert accepted_micros(event, now_us=5) == 2_000_000
    assert accepted_micros(new_event(type="t", source="/s"), now_us=5) == 5
    odd = new_event(type="t", source="/s", extensions={"knativearrivaltime": "soon"})
    assert accepted_micros(odd, now_us=5) == 5


def test_cli_times_are_now_ago_or_rfc3339() -> None:
    assert parse_moment("now", NOW, "--to") == NOW
    assert parse_moment("1h", NOW, "--from") == NOW - timedelta(hours=1)
    assert parse_moment("90s", NOW, "--from") == NOW - timedelta(seconds=90)
    assert parse_moment("2026-12-06T07:00:00Z", NOW, "--from") == NOW - timedelta(hours=1)
    for bad in ("yesterday", "2026-12-06T07:00:00", "-1h"):
        with pytest.raises(click.BadParameter):
            parse_moment(bad, NOW, "--from")


def test_cli_builds_the_replay_and_picks_the_brokers_one_archive() -> None:
    obj = replay_object("r", "a", NOW - timedelta(hours=1), NOW, "orders", 50)
    assert obj["spec"] == {
        "archive": "a",
        "startTime": "2026-12-06T07:00:00.000000Z",
        "endTime": "2026-12-06T08:00:00.000000Z",
        "rate": 50,
        "trigger": "orders",
    }
    archives = [
        {"metadata": {"name": "x"}, "spec": {"broker": "other"}},
        {"metadata": {"name": "keep"}, "spec": {"broker": "default"}},
    ]
    assert pick_archive("default", archives, None) == "keep"
    with pytest.raises(CliError, match="has no archive"):
        pick_archive("nobody", archives, None)
    with pytest.raises(CliError, match="several archives"):
        pick_archive(
            "default", [*archives, {"metadata": {"name": "b"}, "spec": {"broker": "default"}}], None
        )
    with pytest.raises(CliError, match="no archive 'x'"):
        pick_archive("default", archives, "x")


def test_cli_progress_lines_say_how_far_or_why_it_waits_and_done_only_once_succeeded() -> None:
    assert progress_line("r", {"replayed": 120, "total": 1000}) == "replay r: 120/1000 events (12%)"
    done = {
        "replayed": 0,
        "total": 0,
        "completedAt": "t",
        "conditions": [{"type": "Succeeded", "status": "True"}],
    }
    assert progress_line("r", done) == "replay r: 0/0 events (100%) done"
    # The replayer wrote completedAt; the controller has not derived Succeeded yet: not done.
    completed = {"replayed": 5, "total": 5, "completedAt": "t"}
    assert progress_line("r", completed) == "replay r: 5/5 events (100%)"
    waiting = {"conditions": [{"type": "Ready", "message": 'Trigger "x" is not Ready'}]}
    assert progress_line("r", waiting) == 'replay r: waiting: Trigger "x" is not Ready'


def test_replay_slots_are_consecutive_leases_that_outlive_their_slot() -> None:
    from broker.features.archive.ownership import (
        SLOT_SECONDS,
        lease_expiry,
        lease_name,
        lease_prefix,
        slot_of,
        slot_start,
    )

    slot = slot_of(1_000_000.0)
    assert slot_start(slot) <= 1_000_000.0 < slot_start(slot + 1)
    assert slot_start(slot + 1) - slot_start(slot) == SLOT_SECONDS
    assert lease_name("u", slot).startswith(lease_prefix("u"))
    assert lease_name("u", slot) != lease_name("u", slot + 1)
    assert lease_expiry(slot).timestamp() == slot_start(slot + 2)
