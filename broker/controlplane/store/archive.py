"""The SQL side of :class:`~broker.controlplane.archive_store.ArchiveStore`: archived events and
replay progress in the store's database (tables ``archived_events`` and ``replay_progress``).

Appends skip events the archive already holds (same source and id: the CloudEvents identity),
with the dialect's ``ON CONFLICT DO NOTHING``, so a redelivery by the bus keeps one copy. Reads
walk the (archive_uid, accepted_us, id) index. None of these writes moves the store's revision.

The dialect's module is imported on the first write, not with this module: SQLAlchemy's
PostgreSQL dialect costs a start on SQLite ~0.05 s (issue 14: the restart time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.controlplane.archive_store import ReplayProgress, StoredEvent
from broker.controlplane.store.engine import translated
from broker.controlplane.store.models import ArchivedEventRow, ReplayProgressRow
from broker.controlplane.store.repository import Store
from broker.core.events import decode_envelope, encode_envelope
from broker.dataplane.archive import ArchivedEvent

_EVENTS = ArchivedEventRow.__table__
_PROGRESS = ReplayProgressRow.__table__


def event_key(source: str, event_id: str) -> str:
    """The digest an archive dedupes by: source and id identify a CloudEvent."""
    return hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()


class SqlArchive:
    """Archived events and replay progress, kept in ``store``'s database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _reader(self) -> AsyncEngine:
        return self._store._reader()

    def _writer(self) -> AsyncEngine:
        return self._store._writing()

    def _insert(self, table: Any) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing``/``_do_update``."""
        if self._writer().dialect.name == "postgresql":
            from sqlalchemy.dialects import postgresql  # deferred: see the module docstring

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    async def append(self, archive_uid: str, events: Sequence[ArchivedEvent]) -> None:
        if not events:
            return
        rows = [
            {
                "archive_uid": archive_uid,
                "accepted_us": item.accepted_us,
                "event_key": event_key(item.event.source, item.event.id),
                "envelope": encode_envelope(item.event),
            }
            for item in events
        ]
        statement = self._insert(_EVENTS).on_conflict_do_nothing(
            index_elements=["archive_uid", "event_key"]
        )
        with translated():
            async with self._writer().begin() as conn:
                await conn.execute(statement, rows)

    async def high_water(self, archive_uid: str) -> int:
        query = select(func.max(ArchivedEventRow.id)).where(
            ArchivedEventRow.archive_uid == archive_uid
        )
        with translated():
            async with self._reader().connect() as conn:
                value = (await conn.execute(query)).scalar()
        return int(value or 0)

    async def count(self, archive_uid: str, start_us: int, end_us: int, high_water: int) -> int:
        query = select(func.count()).where(
            ArchivedEventRow.archive_uid == archive_uid,
            ArchivedEventRow.accepted_us >= start_us,
            ArchivedEventRow.accepted_us < end_us,
            ArchivedEventRow.id <= high_water,
        )
        with translated():
            async with self._reader().connect() as conn:
                return int((await conn.execute(query)).scalar() or 0)

    async def after(
        self, archive_uid: str, cursor: tuple[int, int], end_us: int, high_water: int, limit: int
    ) -> list[StoredEvent]:
        cursor_us, cursor_id = cursor
        query = (
            select(ArchivedEventRow.id, ArchivedEventRow.accepted_us, ArchivedEventRow.envelope)
            .where(
                ArchivedEventRow.archive_uid == archive_uid,
                # (accepted_us, id) > cursor, spelled out: row values are not on every dialect.
                or_(
                    ArchivedEventRow.accepted_us > cursor_us,
                    and_(
                        ArchivedEventRow.accepted_us == cursor_us, ArchivedEventRow.id > cursor_id
                    ),
                ),
                ArchivedEventRow.accepted_us < end_us,
                ArchivedEventRow.id <= high_water,
            )
            .order_by(ArchivedEventRow.accepted_us, ArchivedEventRow.id)
            .limit(limit)
        )
        with translated():
            async with self._reader().connect() as conn:
                rows = (await conn.execute(query)).all()
        return [StoredEvent(row.id, row.accepted_us, decode_envelope(row.envelope)) for row in rows]

    async def expire(self, archive_uid: str, before_us: int) -> int:
        statement = delete(ArchivedEventRow).where(
            ArchivedEventRow.archive_uid == archive_uid, ArchivedEventRow.accepted_us < before_us
        )
        with translated():
            async with self._writer().begin() as conn:
                return int((await conn.execute(statement)).rowcount or 0)

    async def forget_archives(self, keep: Collection[str]) -> int:
        statement = delete(ArchivedEventRow).where(ArchivedEventRow.archive_uid.not_in(list(keep)))
        with translated():
            async with self._writer().begin() as conn:
                return int((await conn.execute(statement)).rowcount or 0)

    async def progress(self, replay_uid: str) -> ReplayProgress | None:
        query = select(ReplayProgressRow).where(ReplayProgressRow.replay_uid == replay_uid)
        with translated():
            async with self._reader().connect() as conn:
                row = (await conn.execute(query)).first()
        if row is None:
            return None
        return ReplayProgress(
            high_water=row.high_water,
            cursor_us=row.cursor_us,
            cursor_id=row.cursor_id,
            replayed=row.replayed,
            total=row.total,
            finished=bool(row.finished),
        )

    async def save_progress(self, replay_uid: str, progress: ReplayProgress) -> None:
        values = {
            "high_water": progress.high_water,
            "cursor_us": progress.cursor_us,
            "cursor_id": progress.cursor_id,
            "replayed": progress.replayed,
            "total": progress.total,
            "finished": progress.finished,
        }
        statement = (
            self._insert(_PROGRESS)
            .values(replay_uid=replay_uid, **values)
            .on_conflict_do_update(index_elements=["replay_uid"], set_=values)
        )
        with translated():
            async with self._writer().begin() as conn:
                await conn.execute(statement)

    async def forget_replays(self, keep: Collection[str]) -> int:
        statement = delete(ReplayProgressRow).where(ReplayProgressRow.replay_uid.not_in(list(keep)))
        with translated():
            async with self._writer().begin() as conn:
                return int((await conn.execute(statement)).rowcount or 0)
