"""Traffic routing of a Service across its Revisions: weighted split and tags. Pure.

A Service's ``spec.traffic`` resolves (in reconcile) to :class:`TrafficTarget` rows naming a
concrete Revision each: ``latestRevision: true`` becomes the latest *ready* Revision, as in
Knative. :class:`TrafficSplit` picks the Revision of each request from those rows: a weighted
choice by ``percent`` over the untagged-or-tagged rows that carry traffic, and, for a request to a
tag's URL (``.../tags/{tag}``), the tagged row's Revision regardless of its percent (so a
``percent: 0`` tag is how a new Revision is tried before it gets traffic).

The random source is injectable (``random.Random(seed)``), so tests check the split exactly.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One resolved row of a Service's traffic."""

    revision: str
    percent: int
    tag: str | None = None
    latest: bool = False  # written as latestRevision: true


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
