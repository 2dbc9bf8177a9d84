"""The archive and replay rules, as pure functions: what the runtime parts do is decided here.

- :func:`parse_instant`: an RFC 3339 time (a Replay's ``startTime``/``endTime``) in microseconds;
- :func:`begin`, :func:`advance`, :func:`finish`: a replay's progress (cursor and counts) from
  the window it replays, and after each event;
- :func:`pace_delay`: how long to wait before the next event so that a replay never exceeds its
  rate (events per second, measured from when it (re)started);
- :func:`persist_due`: when progress is saved (a restart re-sends at most what was done since);
- :func:`retention_cutoff` and :func:`sweep_interval`: which archived events have expired, and
  how often to look.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from broker.controlplane.archive_store import ReplayProgress, StoredEvent
from broker.core.errors import InvalidResource

# Progress is saved after this many events, or this many seconds, whichever comes first.
PERSIST_EVERY_EVENTS = 20
PERSIST_EVERY_SECONDS = 0.5
# Retention is enforced at least this often, and at most as often as the shortest retention / 4.
LONGEST_SWEEP_INTERVAL = 60.0
SHORTEST_SWEEP_INTERVAL = 0.5


def parse_instant(text: object, field: str) -> int:
    """Microseconds since the epoch of an RFC 3339 time with an offset; InvalidResource else."""
    if not isinstance(text, str) or not text:
        raise InvalidResource(
            field, f"must be an RFC 3339 time such as 2026-12-06T08:00:00Z, got {text!r}"
        )
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidResource(
            field, f"{text!r} is not an RFC 3339 time (such as 2026-12-06T08:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise InvalidResource(
            field, f"{text!r} has no time zone: add Z or an offset such as +01:00"
        )
    return int(moment.timestamp() * 1_000_000)


def begin(start_us: int, high_water: int, total: int) -> ReplayProgress:
    """The progress of a replay about to start at ``start_us``: nothing done, cursor just before
    the window (row ids start at 1, so (start_us, 0) precedes every event accepted then)."""
    return ReplayProgress(
        high_water=high_water, cursor_us=start_us, cursor_id=0, replayed=0, total=total
    )


def advance(progress: ReplayProgress, done: StoredEvent) -> ReplayProgress:
    """The progress once ``done`` (the event after the cursor) was re-delivered."""
    return replace(
        progress,
        cursor_us=done.accepted_us,
        cursor_id=done.row_id,
        replayed=progress.replayed + 1,
        # total was counted when the replay began; never show more done than there are.
        total=max(progress.total, progress.replayed + 1),
    )


def finish(progress: ReplayProgress) -> ReplayProgress:
    """The progress once the window holds nothing after the cursor."""
    return replace(progress, finished=True)


def pace_delay(started: float, sent: int, rate: float, now: float) -> float:
    """Seconds to wait before sending event number ``sent`` (0 first) of a run that began at
    ``started``, so that no more than ``rate`` events per second go out: event n leaves no
    earlier than ``started + n / rate``."""
    return max(0.0, started + sent / rate - now)


def persist_due(unsaved: int, since_saved: float) -> bool:
    """Whether to save progress now, with ``unsaved`` events done ``since_saved`` seconds after
    the last save."""
    return unsaved >= PERSIST_EVERY_EVENTS or (unsaved > 0 and since_saved >= PERSIST_EVERY_SECONDS)


def retention_cutoff(now_us: int, retention: float) -> int:
    """Events accepted before this (microseconds) have outlived ``retention`` seconds."""
    return now_us - int(retention * 1_000_000)


def sweep_interval(retentions: Iterable[float]) -> float:
    """How often to enforce retention: a quarter of the shortest retention, within bounds."""
    shortest = min(retentions, default=LONGEST_SWEEP_INTERVAL * 4)
    return min(LONGEST_SWEEP_INTERVAL, max(SHORTEST_SWEEP_INTERVAL, shortest / 4))
