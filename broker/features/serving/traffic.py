"""Traffic routing of a Service across its Revisions: what traffic resolves to, and the split. Pure.

:func:`resolve_traffic` turns a Service's ``spec.traffic`` into :class:`TrafficTarget` rows
naming a concrete Revision each, as Knative's route does:

- ``latestRevision: true`` is the latest *Ready* Revision (:func:`latest_ready_revision`: the
  newest Ready one, else the one that was latest Ready before, as Knative's
  ``latestReadyRevisionName`` never goes back to none), so a new Revision that never comes up
  leaves traffic where it was;
- a row naming a Revision that does not exist, or that is not Ready, makes the route not Ready
  (:class:`RouteProblem`), and then the route keeps serving what it served last (the last good
  rows, as long as their Revisions exist) instead of nothing: one bad row never takes the
  Service's other rows, or its tags, down.

:class:`TrafficSplit` picks the Revision of each request from those rows: a weighted
choice by ``percent`` over the untagged-or-tagged rows that carry traffic, and, for a request to a
tag's URL (``.../tags/{tag}``), the tagged row's Revision regardless of its percent (so a
``percent: 0`` tag is how a new Revision is tried before it gets traffic).

The random source is injectable (``random.Random(seed)``), so tests check the split exactly.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One resolved row of a Service's traffic."""

    revision: str
    percent: int
    tag: str | None = None
    latest: bool = False  # written as latestRevision: true


@dataclass(frozen=True, slots=True)
class RouteProblem:
    """Why a Service's traffic does not resolve: its RoutesReady condition."""

    status: Literal["False", "Unknown"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ResolvedTraffic:
    """The outcome of :func:`resolve_traffic`.

    ``serving`` is what the route sends requests to: ``targets`` when every row resolved, else
    the last good rows (possibly none: then the Service answers 503 until a row resolves).
    """

    targets: tuple[TrafficTarget, ...]
    serving: tuple[TrafficTarget, ...]
    problem: RouteProblem | None


def latest_ready_revision(
    newest_last: Sequence[str], ready: Mapping[str, bool | None], previous: str | None
) -> str | None:
    """The Revision ``latestRevision: true`` means: the newest Ready one of ``newest_last``;
    when none is Ready now, ``previous`` (the latest Ready one before) if it still exists."""
    for name in reversed(newest_last):
        if ready.get(name):
            return name
    return previous if previous in ready else None


def resolve_traffic(
    rows: Iterable[Mapping[str, Any]],
    *,
    ready: Mapping[str, bool | None],
    latest_ready: str | None,
    latest_problem: RouteProblem | None,
    last_good: Iterable[TrafficTarget],
) -> ResolvedTraffic:
    """Resolve ``spec.traffic`` rows (module docstring).

    ``ready`` maps every existing Revision of the Service to its readiness; ``latest_problem``
    says why no Revision is Ready yet (used when ``latest_ready`` is None); ``last_good`` is
    what the route served before.
    """
    targets: list[TrafficTarget] = []
    problem: RouteProblem | None = None
    for row in rows:
        latest = bool(row.get("latestRevision"))
        name = latest_ready if latest else row.get("revisionName")
        tag = row.get("tag") or None
        percent = int(row.get("percent") or 0)
        if name is None:
            problem = (
                problem
                or latest_problem
                or RouteProblem(
                    "Unknown", "RevisionMissing", "no Revision is Ready yet for latestRevision"
                )
            )
            continue
        if name not in ready:
            problem = problem or RouteProblem(
                "False", "RevisionMissing", f'Revision "{name}" referenced in traffic not found'
            )
            continue
        if not ready[name]:
            problem = problem or RouteProblem(
                "False", "RevisionNotReady", f'Revision "{name}" referenced in traffic is not Ready'
            )
        targets.append(TrafficTarget(str(name), percent, tag, latest))
    if problem is None:
        return ResolvedTraffic(tuple(targets), tuple(targets), None)
    kept = tuple(t for t in last_good if t.revision in ready)
    # A latest row keeps following the latest Ready Revision, even on the last good route.
    if latest_ready is not None:
        kept = tuple(
            TrafficTarget(latest_ready, t.percent, t.tag, True) if t.latest else t for t in kept
        )
    return ResolvedTraffic(tuple(targets), kept, problem)


class TrafficSplit:
    """Chooses a Revision per request from resolved :class:`TrafficTarget` rows."""

    __slots__ = ("_bounds", "_only", "_random", "_revisions", "_tags", "targets")

    def __init__(self, targets: Iterable[TrafficTarget], rng: random.Random | None = None) -> None:
        self.targets = tuple(targets)
        self._random = (rng or random.Random()).random
        # Rows with the same revision add up; cumulative bounds over 0..total for bisect.
        weights: dict[str, int] = {}
        for target in self.targets:
            if target.percent > 0:
                weights[target.revision] = weights.get(target.revision, 0) + target.percent
        self._revisions = list(weights)
        self._bounds: list[float] = []
        total = 0
        for revision in self._revisions:
            total += weights[revision]
            self._bounds.append(total)
        self._bounds = [bound / total for bound in self._bounds] if total else []
        # One revision takes everything (the common case): no random number needed.
        self._only = self._revisions[0] if len(self._revisions) == 1 else None
        self._tags = {t.tag: t.revision for t in self.targets if t.tag}

    def choose(self) -> str | None:
        """The Revision for a request to the Service's own URL; None when nothing has traffic."""
        if self._only is not None:
            return self._only
        if not self._revisions:
            return None
        index = bisect.bisect_right(self._bounds, self._random())
        return self._revisions[min(index, len(self._revisions) - 1)]

    def for_tag(self, tag: str) -> str | None:
        """The Revision behind ``tag``, or None when no row has that tag."""
        return self._tags.get(tag)

    @property
    def revisions(self) -> frozenset[str]:
        """Every Revision some row names (with traffic or only a tag)."""
        return frozenset(t.revision for t in self.targets)
