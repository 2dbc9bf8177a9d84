"""The live feed behind ``cemesh tail`` (issue 15 item 3): nobody watching costs nothing and
keeps nothing; a slow reader's queue is bounded, and what does not fit is dropped for that
reader only and counted; a watcher leaves no trace once its stream ends."""

from __future__ import annotations

from broker.cli.observe import describe_text, event_line
from broker.core.events import CloudEvent, new_event
from broker.dataplane.live_feed import LiveFeed

ROUTE = ("broker", "default", "default")


def event(n: int) -> CloudEvent:
    return new_event(id=str(n), source="/t", type="com.example.t")


def test_offers_without_watchers_keep_nothing() -> None:
    feed = LiveFeed(queue_size=2)
    feed.offer(ROUTE, [event(1)])
    assert feed.watched == {} and feed.dropped == 0


def test_a_slow_reader_loses_what_does_not_fit_and_it_is_counted_for_it_alone() -> None:
    feed = LiveFeed(queue_size=2)
    with feed.watch(ROUTE) as slow, feed.watch(ROUTE) as fast:
        feed.offer(ROUTE, [event(1), event(2)])
        assert fast.queue.get_nowait().id == "1"
        assert fast.queue.get_nowait().id == "2"
        feed.offer(ROUTE, [event(3), event(4)])
        assert slow.dropped == 2 and fast.dropped == 0
        assert [slow.queue.get_nowait().id for _ in range(2)] == ["1", "2"]
        feed.offer(("broker", "default", "other"), [event(5)])  # another route: not theirs
        assert fast.queue.qsize() == 2
    assert feed.watched == {} and feed.dropped == 2


def test_an_events_readable_line_names_type_source_id_and_previews_data() -> None:
    line = event_line(
        {"id": "7", "source": "/s", "type": "t", "time": "2026-01-01T00:00:00Z", "data": {"a": 1}}
    )
    assert line == '2026-01-01T00:00:00Z  t  /s  id=7  {"a":1}'
    long = event_line({"id": "1", "source": "/s", "type": "t", "data": "x" * 500})
    assert long.endswith("...") and len(long) < 200
    assert "<3 bytes, base64>" in event_line({"id": "1", "data_base64": "AAAA"})


def test_describe_lists_conditions_and_says_when_nothing_was_delivered() -> None:
    obj = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t", "namespace": "default", "generation": 1},
        "spec": {"broker": "default"},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "False", "reason": "BrokerDoesNotExist"}],
        },
    }
    text = describe_text(obj, {})
    assert "Ready=False  BrokerDoesNotExist" in text and "none yet" in text
    assert "Deliveries" not in describe_text(obj, None)
