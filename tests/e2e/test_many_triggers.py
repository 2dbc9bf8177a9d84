"""Many Triggers on one Broker (issue 14): each gets exactly the events its filter matches.

On the in-memory bus the dispatcher hands the bus the index of the Broker's Trigger filters and
the bus queues an event only for the Triggers it matches (``SelectsGroups``). These tests run
cemesh in-process (SQLite, in-memory bus) with one real HTTP subscriber, a path per Trigger, and
check every Trigger's deliveries against what testing its filter on every event says: pinned
dialects (exact, prefix, legacy attributes) and those the index cannot pin (CESQL, suffix, any,
not, no filter), and a filter changed while cemesh runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from broker.core.events import new_event
from broker.dataplane.dispatch.filters import compile_trigger_filter
from tests.support.cemesh import running_cemesh
from tests.support.subscriber import RecordingSubscriber

BROKER = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": {"name": "b"}}

FILTERS: dict[str, dict[str, Any]] = {
    "exact-order": {"filters": [{"exact": {"type": "com.example.order"}}]},
    "exact-other": {"filters": [{"exact": {"type": "com.example.other"}}]},
    "prefix": {"filters": [{"prefix": {"type": "com.example."}}]},
    "legacy": {"filter": {"attributes": {"type": "com.example.order", "source": "/shop"}}},
    "legacy-present": {"filter": {"attributes": {"region": ""}}},
    "exact-and-cesql": {
        "filters": [{"exact": {"type": "com.example.order"}}, {"cesql": "INT(n) > 1"}]
    },
    "cesql": {"filters": [{"cesql": "source = '/test' OR type = 'com.example.other'"}]},
    "suffix": {"filters": [{"suffix": {"type": ".order"}}]},
    "any": {"filters": [{"any": [{"exact": {"source": "/test"}}, {"exact": {"region": "eu"}}]}]},
    "not": {"filters": [{"not": {"prefix": {"type": "com.example."}}}]},
    "nothing-matches": {"filters": [{"exact": {"type": "never.sent"}}]},
    "no-filter": {},
}

EVENTS: list[dict[str, str]] = [
    {"id": "1", "type": "com.example.order", "source": "/shop", "n": "1"},
    {"id": "2", "type": "com.example.order", "source": "/test", "n": "2", "region": "eu"},
    {"id": "3", "type": "com.example.other", "source": "/shop", "n": "3"},
    {"id": "4", "type": "org.elsewhere.order", "source": "/shop", "n": "4", "region": "us"},
    {"id": "5", "type": "com.example", "source": "/x", "n": "5"},
]


def trigger(name: str, subscriber: str, filter_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": "b", "subscriber": {"uri": f"{subscriber}/{name}"}, **filter_spec},
    }


def expected(filters: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """Per Trigger, the ids of EVENTS its filter matches: every filter tested on every event."""
    events = [
        new_event(
            type=e["type"],
            source=e["source"],
            id=e["id"],
            extensions={k: v for k, v in e.items() if k not in ("id", "type", "source")},
        )
        for e in EVENTS
    ]
    wanted = {}
    for name, spec in filters.items():
        predicate, _ = compile_trigger_filter(spec)
        wanted[name] = {event.id for event in events if predicate(event)}
    return wanted


def headers(event: dict[str, str]) -> dict[str, str]:
    return {"ce-specversion": "1.0", **{f"ce-{k}": v for k, v in event.items()}}


async def send_and_collect(
    mesh: Any, subscriber: RecordingSubscriber, wanted: dict[str, set[str]]
) -> dict[str, list[str]]:
    """Send EVENTS; the ids each Trigger's path received, once all wanted ones arrived."""
    before = len(subscriber.received)
    for event in EVENTS:
        response = await mesh.post_event("/default/b", headers(event))
        assert response.status_code == 202, response.text
    await subscriber.wait_for(before + sum(len(ids) for ids in wanted.values()))
    await asyncio.sleep(0.2)  # give a wrong extra delivery the chance to show up
    got: dict[str, list[str]] = {name: [] for name in wanted}
    for received in subscriber.received[before:]:
        assert received.event is not None
        got[received.path.strip("/")].append(received.event.id)
    return got


async def test_each_of_many_triggers_gets_exactly_the_events_its_filter_matches(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as subscriber:
        await mesh.apply(BROKER)
        for name, spec in FILTERS.items():
            await mesh.apply(trigger(name, subscriber.url, spec))
        wanted = expected(FILTERS)
        assert wanted["nothing-matches"] == set()
        assert wanted["no-filter"] == {"1", "2", "3", "4", "5"}
        got = await send_and_collect(mesh, subscriber, wanted)
        assert {name: sorted(ids) for name, ids in got.items()} == {
            name: sorted(ids) for name, ids in wanted.items()
        }


async def test_a_trigger_whose_filter_changes_gets_what_the_new_filter_matches(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as subscriber:
        await mesh.apply(BROKER)
        first = {"exact-order": FILTERS["exact-order"], "suffix": FILTERS["suffix"]}
        for name, spec in first.items():
            await mesh.apply(trigger(name, subscriber.url, spec))
        got = await send_and_collect(mesh, subscriber, expected(first))
        assert sorted(got["exact-order"]) == ["1", "2"]

        changed = {"exact-order": FILTERS["exact-other"], "suffix": FILTERS["suffix"]}
        await mesh.apply(trigger("exact-order", subscriber.url, changed["exact-order"]))
        got = await send_and_collect(mesh, subscriber, expected(changed))
        assert sorted(got["exact-order"]) == ["3"]
        assert sorted(got["suffix"]) == sorted(expected(changed)["suffix"])
