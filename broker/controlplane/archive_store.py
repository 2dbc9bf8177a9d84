"""The control plane's seam to archived events and replay progress: :class:`ArchiveStore`.

Archives (:mod:`broker.features.archive`) keep the events a Broker accepted outside the resources:
they are many, written by the data plane's archive writer
(:class:`~broker.dataplane.archive.ArchiveSink` is the part of this Protocol it sees), read by
replays and deleted by retention, and none of that moves the store's revision. Its one
implementation is the SQL store's (:mod:`broker.controlplane.store.archive`).

Events of one archive are ordered by (accepted time, row id): the row id breaks ties and is a
cursor that survives restarts. A replay only replays rows up to the ``high_water`` row id it saw
when it began, so events archived while it runs are not part of it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.core.events import CloudEvent
from broker.dataplane.archive import ArchivedEvent


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One archived event as read back: its row id, when it was accepted, and the event."""

    row_id: int
    accepted_us: int
    event: CloudEvent


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """How far a Replay got. The cursor is the (accepted_us, row_id) of the last event done."""

    high_water: int
    cursor_us: int
    cursor_id: int
    replayed: int
    total: int
    finished: bool = False


class ArchiveStore(Protocol):
    """Archived events by archive uid, and replay progress by replay uid."""

    async def append(self, archive_uid: str, events: Sequence[ArchivedEvent]) -> None:
        """Keep ``events`` (an event with a source and id already kept is skipped)."""
        ...

    async def high_water(self, archive_uid: str) -> int:
        """The largest row id of the archive now (0 when it holds nothing)."""
        ...

    async def count(self, archive_uid: str, start_us: int, end_us: int, high_water: int) -> int:
        """Events accepted in [start_us, end_us) with a row id up to ``high_water``."""
        ...

    async def after(
        self, archive_uid: str, cursor: tuple[int, int], end_us: int, high_water: int, limit: int
    ) -> list[StoredEvent]:
        """Up to ``limit`` events after ``cursor`` (accepted_us, row_id), accepted before
        ``end_us``, row id up to ``high_water``, in (accepted_us, row_id) order."""
        ...

    async def expire(self, archive_uid: str, before_us: int) -> int:
        """Delete the archive's events accepted before ``before_us``; how many."""
        ...

    async def forget_archives(self, keep: Collection[str]) -> int:
        """Delete the events of every archive not in ``keep`` (deleted Archives); how many."""
        ...

    async def progress(self, replay_uid: str) -> ReplayProgress | None:
        """The saved progress of a replay, None when it never began."""
        ...

    async def save_progress(self, replay_uid: str, progress: ReplayProgress) -> None:
        """Save (insert or overwrite) a replay's progress."""
        ...

    async def forget_replays(self, keep: Collection[str]) -> int:
        """Delete the progress of every replay not in ``keep`` (deleted Replays); how many."""
        ...
