"""PingSource through a real cemesh: fires on schedule, once per tick across replicas.

K194 type and source, K195 schedule and timezone, K196 data and contentType; issue 4: "fires on
time (a controllable clock or a per-second schedule), two replicas fire once per tick".
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.controlplane.store import Store
from broker.features.sources import ping
from broker.features.sources.lease import try_claim_tick
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber


class ManualClock:
    """A clock that moves only when the test says; sleepers wake when it passes their time."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._changed = asyncio.Condition()
        self.sleepers = 0

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        async with self._changed:
            self.sleepers += 1
            self._changed.notify_all()
            try:
                await self._changed.wait_for(lambda: self._now >= when)
            finally:
                self.sleepers -= 1

    async def advance(self, to: datetime) -> None:
        async with self._changed:
            self._now = to
            self._changed.notify_all()

    async def wait_for_sleeper(self) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: self.sleepers > 0)


@pytest.fixture
def manual_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    clock = ManualClock(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC))
    monkeypatch.setattr(ping, "CLOCK", clock)
    return clock


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait until ``check()`` holds (state inside the app has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
"""


def trigger(subscriber: str) -> str:
    return f"""
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: pings
spec:
  broker: default
  filter:
    attributes:
      type: dev.knative.sources.ping
  subscriber:
    uri: {subscriber}
"""


def ping_source(schedule: str, sink: str, extra: str = "", name: str = "tick") -> str:
    return f"""
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata:
  name: {name}
spec:
  schedule: "{schedule}"
{extra}
  sink:
{sink}
"""


BROKER_SINK = """    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default"""


def running_source(mesh: RunningCemesh, uid: str) -> ping.PingSource | None:
    source = mesh.runtime.component("sources").source(uid)
    return source if isinstance(source, ping.PingSource) else None


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_ping_per_second_schedule_reaches_a_trigger(tmp_path: Path) -> None:
    """A 6-field (seconds first) schedule fires every second; the Trigger on
    dev.knative.sources.ping gets Knative's event: source /apis/v1/namespaces/<ns>/pingsources/
    <name>, data as given, datacontenttype = contentType, time = the tick (K194-K196)."""
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        await mesh.apply(BROKER)
        await mesh.apply(trigger(sub.url))
        [source] = await mesh.apply(
            ping_source(
                "* * * * * *",
                BROKER_SINK,
                '  contentType: application/json\n  data: \'{"message": "Hello world!"}\'',
            )
        )
        received = await sub.wait_for(2)
        events = [r.event for r in received[:2]]
        assert all(e is not None for e in events)
        for event in events:
            assert event is not None
            assert event.type == "dev.knative.sources.ping"
            assert event.source == "/apis/v1/namespaces/default/pingsources/tick"
            assert event.datacontenttype == "application/json"
            assert event.data == b'{"message": "Hello world!"}'
        times = sorted(parse_time(str(e.attributes["time"])) for e in events if e is not None)
        assert all(t.microsecond == 0 for t in times)
        assert times[1] - times[0] == timedelta(seconds=1)
        assert events[0] is not None and events[1] is not None
        assert events[0].id != events[1].id

        status = (
            await mesh.client.get(
                "/apis/sources.knative.dev/v1/namespaces/default/pingsources/tick"
            )
        ).json()["status"]
        assert status["sinkUri"].endswith("/default/default")
        assert status["ceAttributes"] == [
            {
                "type": "dev.knative.sources.ping",
                "source": "/apis/v1/namespaces/default/pingsources/tick",
            }
        ]
        assert source["metadata"]["uid"]


async def test_ping_every_minute_fires_on_the_minute_with_a_manual_clock(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    """``*/1 * * * *`` in a time zone fires at each minute of the clock, not before; a tick found
    far too late is skipped; dataBase64 is decoded (K195, K196)."""
    start = manual_clock.now()
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sink:
        payload = base64.b64encode(b"\x00\x01binary").decode()
        await mesh.apply(
            ping_source(
                "*/1 * * * *",
                f"    uri: {sink.url}",
                f"  timezone: Asia/Kolkata\n  dataBase64: {payload}\n"
                "  contentType: application/octet-stream",
            )
        )
        await manual_clock.wait_for_sleeper()
        assert sink.received == []

        first = start.replace(second=0) + timedelta(minutes=1)  # 00:01:00 UTC
        await manual_clock.advance(first - timedelta(seconds=1))
        await manual_clock.advance(first)
        [got] = await sink.wait_for(1)
        assert got.event is not None
        assert got.event.attributes["time"] == "2030-01-01T00:01:00.000000Z"
        assert got.event.data == b"\x00\x01binary"
        assert got.event.datacontenttype == "application/octet-stream"

        await manual_clock.advance(first + timedelta(minutes=1))
        received = await sink.wait_for(2)
        assert received[1].event is not None
        assert received[1].event.attributes["time"] == "2030-01-01T00:02:00.000000Z"

        # Suspended for ten minutes: the missed ticks are not replayed; the latest one fires.
        await manual_clock.advance(first + timedelta(minutes=10, seconds=30))
        received = await sink.wait_for(3)
        assert received[2].event is not None
        assert received[2].event.attributes["time"] == "2030-01-01T00:11:00.000000Z"
        await manual_clock.wait_for_sleeper()
        assert len(sink.received) == 3


async def test_ping_two_replicas_sharing_one_store_fire_each_tick_once(tmp_path: Path) -> None:
    """Two cemesh apps on ONE SQLite file both run the PingSource; the tick claim in the store
    lets exactly one of them send each tick (issue 4)."""
    async with (
        running_cemesh(tmp_path, resync_interval=0.05) as first,
        running_cemesh(tmp_path, resync_interval=0.05) as second,
        RecordingSubscriber() as sink,
    ):
        [source] = await first.apply(ping_source("* * * * * *", f"    uri: {sink.url}"))
        uid = source["metadata"]["uid"]
        await eventually(
            lambda: (
                running_source(first, uid) is not None and running_source(second, uid) is not None
            )
        )
        both_running = datetime.now(UTC)
        sources = [running_source(first, uid), running_source(second, uid)]

        def ticks_after_both() -> list[datetime]:
            return [
                parse_time(str(r.event.attributes["time"]))
                for r in sink.received
                if r.event is not None
                and parse_time(str(r.event.attributes["time"])) > both_running
            ]

        await eventually(lambda: len(ticks_after_both()) >= 4)
        # A duplicate would be sent within the same second as the original: let the next tick
        # arrive too, so that every tick counted has had its chance to be sent twice.
        counted = sorted(ticks_after_both())[:4]
        await eventually(lambda: len(ticks_after_both()) >= 5)
        ticks = ticks_after_both()
        for tick in counted:
            assert ticks.count(tick) == 1, f"tick {tick} delivered {ticks.count(tick)} times"
        assert counted == [counted[0] + timedelta(seconds=i) for i in range(4)]
        lost = sum(s.skipped for s in sources if s is not None)
        assert lost >= 4, "both replicas tried each tick; the losers sent nothing"
        ids = [r.event.id for r in sink.received if r.event is not None]
        assert len(ids) == len(set(ids))


async def test_tick_claim_succeeds_once_across_stores(database_url: str) -> None:
    """The lease: many concurrent claims of one tick from two stores (two connection pools, as
    two replicas have) on one SQLite file or PostgreSQL database -> exactly one wins."""
    stores = [Store(database_url), Store(database_url)]
    for store in stores:
        await store.open(migrate=True)
    try:
        tick = datetime(2030, 1, 1, tzinfo=UTC)
        results = await asyncio.gather(
            *(try_claim_tick(stores[i % 2], "uid-1", tick, f"holder-{i}") for i in range(10))
        )
        assert sorted(results) == [False] * 9 + [True]
        assert await try_claim_tick(stores[0], "uid-2", tick, "holder-0")
        assert await try_claim_tick(stores[1], "uid-1", tick + timedelta(seconds=1), "h")
    finally:
        for store in stores:
            await store.close()
