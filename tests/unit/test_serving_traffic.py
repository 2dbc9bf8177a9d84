"""Traffic split and tags of a Service (issue 5: 90/10 split, tags get their own path)."""

from __future__ import annotations

import random
from collections import Counter

from broker.serving.invoker import parse_service_path
from broker.serving.traffic import TrafficSplit, TrafficTarget


def test_a_90_10_split_sends_about_90_and_10_percent_of_1000_requests() -> None:
    split = TrafficSplit(
        [TrafficTarget("fn-00001", 90), TrafficTarget("fn-00002", 10, latest=True)],
        random.Random(7),
    )
    counts = Counter(split.choose() for _ in range(1000))
    assert set(counts) == {"fn-00001", "fn-00002"}
    assert 860 <= counts["fn-00001"] <= 940, counts
    assert 60 <= counts["fn-00002"] <= 140, counts


def test_the_split_is_seedable() -> None:
    targets = [TrafficTarget("a", 50), TrafficTarget("b", 50)]
    first = [TrafficSplit(targets, random.Random(3)).choose() for _ in range(1)]
    again = [TrafficSplit(targets, random.Random(3)).choose() for _ in range(1)]
    assert first == again
    one, two = TrafficSplit(targets, random.Random(3)), TrafficSplit(targets, random.Random(3))
    assert [one.choose() for _ in range(200)] == [two.choose() for _ in range(200)]


def test_a_single_target_takes_everything_and_rows_of_one_revision_add_up() -> None:
    assert {TrafficSplit([TrafficTarget("a", 100)]).choose() for _ in range(50)} == {"a"}
    split = TrafficSplit(
        [TrafficTarget("a", 50), TrafficTarget("a", 50, tag="current")], random.Random(1)
    )
    assert {split.choose() for _ in range(50)} == {"a"}


def test_a_tag_routes_to_its_revision_even_at_zero_percent() -> None:
    split = TrafficSplit(
        [TrafficTarget("fn-00001", 100, tag="stable"), TrafficTarget("fn-00002", 0, tag="next")],
        random.Random(1),
    )
    assert {split.choose() for _ in range(200)} == {"fn-00001"}  # 0 %: no untagged traffic
    assert split.for_tag("next") == "fn-00002"
    assert split.for_tag("stable") == "fn-00001"
    assert split.for_tag("missing") is None
    assert split.revisions == {"fn-00001", "fn-00002"}


def test_nothing_to_choose_when_no_row_has_traffic() -> None:
    assert TrafficSplit([TrafficTarget("a", 0, tag="t")]).choose() is None


def test_service_paths_keep_the_suffix_and_query_and_name_tags() -> None:
    assert parse_service_path("ns/fn") == ("ns", "fn", None, "/")
    assert parse_service_path("ns/fn/") == ("ns", "fn", None, "/")
    assert parse_service_path("ns/fn/a/b?x=1") == ("ns", "fn", None, "/a/b?x=1")
    assert parse_service_path("ns/fn?x=1") == ("ns", "fn", None, "/?x=1")
    assert parse_service_path("ns/fn/tags/next") == ("ns", "fn", "next", "/")
    assert parse_service_path("ns/fn/tags/next/deep/path") == ("ns", "fn", "next", "/deep/path")
    assert parse_service_path("ns") is None
    assert parse_service_path("ns/") is None
    assert parse_service_path("ns/fn/tags/") is None
