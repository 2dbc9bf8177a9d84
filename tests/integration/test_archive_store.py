"""The archive's SQL side (broker/controlplane/store/archive.py) on SQLite and on a real
PostgreSQL (``database_url``): appends keep an event once, windows page in (accepted time, row id)
order, retention and deleted archives/replays are forgotten, progress round-trips."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from broker.controlplane.archive_store import ReplayProgress
from broker.controlplane.store import Store
from broker.controlplane.store.archive import SqlArchive
from broker.core.events import new_event
from broker.dataplane.archive import ArchivedEvent


@pytest.fixture
async def archive(database_url: str) -> AsyncIterator[SqlArchive]:
    store = Store(database_url)
    await store.open(migrate=True)
    try:
        yield SqlArchive(store)
    finally:
        await store.close()


def item(event_id: str, accepted_us: int) -> ArchivedEvent:
    return ArchivedEvent(accepted_us, new_event(type="t", source="/s", id=event_id, data=b"\x00x"))


async def test_an_event_is_kept_once_and_read_back_unaltered_in_order(archive: SqlArchive) -> None:
    await archive.append("a", [item("1", 30), item("2", 10), item("3", 20)])
    await archive.append("a", [item("2", 10), item("4", 20)])  # "2" again: a redelivery
    await archive.append("b", [item("1", 5)])  # another archive keeps its own copy
    high = await archive.high_water("a")
    assert await archive.count("a", 0, 100, high) == 4
    assert await archive.count("a", 10, 30, high) == 3  # [10, 30)
    page = await archive.after("a", (0, 0), 100, high, limit=10)
    assert [s.event.id for s in page] == ["2", "3", "4", "1"]
    assert page[0].event.data == b"\x00x" and page[0].event.source == "/s"
    # the cursor (accepted_us, row id): what follows the second one, then a page of one
    rest = await archive.after("a", (page[1].accepted_us, page[1].row_id), 100, high, limit=1)
    assert [s.event.id for s in rest] == ["4"]
    await archive.append("a", [item("5", 15)])  # after the replay began: beyond its high water
    assert await archive.count("a", 0, 100, high) == 4


async def test_retention_and_deleted_archives_and_replays_are_forgotten(
    archive: SqlArchive,
) -> None:
    await archive.append("a", [item(str(n), n) for n in range(10)])
    await archive.append("gone", [item("x", 1)])
    assert await archive.expire("a", 4) == 4
    assert await archive.count("a", 0, 100, 10**9) == 6
    assert await archive.forget_archives({"a"}) == 1
    assert await archive.high_water("gone") == 0

    progress = ReplayProgress(high_water=9, cursor_us=5, cursor_id=6, replayed=3, total=6)
    await archive.save_progress("r", progress)
    assert await archive.progress("r") == progress
    done = ReplayProgress(9, 9, 10, 6, 6, finished=True)
    await archive.save_progress("r", done)  # overwrites
    assert await archive.progress("r") == done
    assert await archive.forget_replays({"other"}) == 1
    assert await archive.progress("r") is None
