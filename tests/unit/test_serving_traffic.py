"""Traffic split and tags of a Service (issue 5: 90/10 split, tags get their own path)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from broker.features.serving.service_http import parse_service_path
from broker.features.serving.traffic import (
    RouteProblem,
    TrafficSplit,
    TrafficTarget,
    latest_ready_revision,
    resolve_traffic,
)


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


# --- resolve_traffic: what a Service's spec.traffic routes to (Knative's route) ------------------


LATEST = {"latestRevision": True, "percent": 100}


def test_latest_ready_is_the_newest_ready_revision_else_the_previous_one() -> None:
    ready = {"fn-1": True, "fn-2": False, "fn-3": None}
    assert latest_ready_revision(["fn-1", "fn-2", "fn-3"], ready, None) == "fn-1"
    assert latest_ready_revision(["fn-1", "fn-2"], {"fn-1": False, "fn-2": False}, "fn-1") == (
        "fn-1"
    )
    assert latest_ready_revision(["fn-2"], {"fn-2": False}, "fn-1") is None  # fn-1 is gone
    assert latest_ready_revision([], {}, None) is None


def test_every_row_resolving_serves_the_new_rows() -> None:
    resolved = resolve_traffic(
        [LATEST, {"revisionName": "fn-1", "percent": 0, "tag": "old"}],
        ready={"fn-1": True, "fn-2": True},
        latest_ready="fn-2",
        latest_problem=None,
        last_good=[TrafficTarget("fn-1", 100, None, True)],
    )
    assert resolved.problem is None
    assert (
        resolved.serving
        == resolved.targets
        == (
            TrafficTarget("fn-2", 100, None, True),
            TrafficTarget("fn-1", 0, "old", False),
        )
    )


def test_an_unknown_revision_keeps_the_last_good_rows_tags_included() -> None:
    last_good = [TrafficTarget("fn-1", 100, "current", True), TrafficTarget("fn-0", 0, "old")]
    resolved = resolve_traffic(
        [
            {"latestRevision": True, "percent": 50, "tag": "current"},
            {"revisionName": "fn-9", "percent": 50},
        ],
        ready={"fn-0": True, "fn-1": True},
        latest_ready="fn-1",
        latest_problem=None,
        last_good=last_good,
    )
    assert resolved.problem is not None
    assert (resolved.problem.status, resolved.problem.reason) == ("False", "RevisionMissing")
    assert "fn-9" in resolved.problem.message
    assert resolved.serving == tuple(last_good)


def test_a_not_ready_named_revision_is_not_routed_until_it_is_ready() -> None:
    rows = [{"revisionName": "fn-2", "percent": 100}]
    last_good = [TrafficTarget("fn-1", 100)]
    resolved = resolve_traffic(
        rows,
        ready={"fn-1": True, "fn-2": None},
        latest_ready="fn-1",
        latest_problem=None,
        last_good=last_good,
    )
    assert resolved.problem is not None and resolved.problem.reason == "RevisionNotReady"
    assert resolved.serving == tuple(last_good)
    resolved = resolve_traffic(
        rows,
        ready={"fn-1": True, "fn-2": True},
        latest_ready="fn-2",
        latest_problem=None,
        last_good=last_good,
    )
    assert resolved.problem is None and resolved.serving == (TrafficTarget("fn-2", 100),)


def test_no_ready_revision_yet_serves_nothing_with_the_configurations_reason() -> None:
    why = RouteProblem("False", "RevisionMissing", "no Revision is Ready yet: ExitCode")
    resolved = resolve_traffic(
        [LATEST], ready={"fn-1": False}, latest_ready=None, latest_problem=why, last_good=[]
    )
    assert resolved.problem == why
    assert resolved.serving == ()


def test_last_good_rows_of_deleted_revisions_are_dropped_and_latest_rows_follow_latest() -> None:
    resolved = resolve_traffic(
        [LATEST, {"revisionName": "fn-9", "percent": 0, "tag": "x"}],
        ready={"fn-2": True, "fn-3": True},
        latest_ready="fn-3",
        latest_problem=None,
        last_good=[TrafficTarget("fn-2", 100, None, True), TrafficTarget("fn-1", 0, "gone")],
    )
    assert resolved.serving == (TrafficTarget("fn-3", 100, None, True),)


@given(
    st.lists(
        st.tuples(st.sampled_from(["fn-1", "fn-2", "fn-3", None]), st.integers(0, 100)),
        min_size=1,
        max_size=4,
    ),
    st.dictionaries(
        st.sampled_from(["fn-1", "fn-2", "fn-3"]), st.sampled_from([True, False, None])
    ),
)
def test_the_route_only_ever_serves_existing_revisions(
    rows: list[tuple[str | None, int]], ready: dict[str, bool | None]
) -> None:
    spec_rows = [
        {"latestRevision": True, "percent": p}
        if name is None
        else {"revisionName": name, "percent": p}
        for name, p in rows
    ]
    latest = latest_ready_revision(sorted(ready), ready, "fn-1")
    resolved = resolve_traffic(
        spec_rows,
        ready=ready,
        latest_ready=latest,
        latest_problem=None,
        last_good=[TrafficTarget("fn-1", 100, None, True), TrafficTarget("fn-2", 0, "t")],
    )
    assert all(t.revision in ready for t in resolved.serving)
    if resolved.problem is None:
        assert all(ready[t.revision] for t in resolved.serving)
