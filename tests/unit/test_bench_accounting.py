"""The benchmarks count lost and duplicated events by id, never by count (issue 11, item 8):
``accepted - unique`` cannot see a lost event when a stray id (a probe, an event of an earlier
phase) takes its place in the count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.subscriber import account


def test_a_lost_event_is_seen_even_when_a_stray_id_fills_its_place_in_the_count() -> None:
    ids = [b"r2-1", b"r2-2", b"probe-7", b"r2-4"]  # r2-3 lost, a probe arrived instead
    result = account(ids, b"r2", sent=4)
    assert (result["missing"], result["duplicated"], result["foreign"]) == (1, 0, 1)
    assert result["missing_sample"] == ["r2-3"]
    assert len(set(ids)) == 4  # what the count-based check saw: "nothing lost"


def test_duplicates_are_deliveries_beyond_the_first_of_each_id() -> None:
    result = account([b"r1-1", b"r1-1", b"r1-2", b"r1-1"], b"r1", sent=2)
    assert (result["missing"], result["duplicated"]) == (0, 2)


def test_ids_past_what_wrk_completed_are_counted_apart() -> None:
    result = account([b"r1-1", b"r1-2", b"r1-3"], b"r1", sent=2)
    assert (result["missing"], result["beyond"]) == (0, 1)


@given(
    sent=st.integers(0, 200),
    dropped=st.sets(st.integers(1, 200)),
    doubled=st.sets(st.integers(1, 200)),
)
def test_account_finds_exactly_the_ids_dropped_and_doubled(
    sent: int, dropped: set[int], doubled: set[int]
) -> None:
    delivered = [n for n in range(1, sent + 1) if n not in dropped]
    delivered += [n for n in doubled if n <= sent and n not in dropped]
    result = account([f"t-{n}".encode() for n in delivered], b"t", sent=sent)
    assert result["missing"] == len({n for n in dropped if n <= sent})
    assert result["duplicated"] == len({n for n in doubled if n <= sent and n not in dropped})
