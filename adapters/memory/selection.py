"""The in-memory bus's group selection: which of a topic's groups get an event.

The dispatcher may give a topic a selector (its Triggers' filters, indexed: see
:class:`~broker.dataplane.bus.SelectsGroups`) and the groups it covers; :class:`GroupSelection`
answers, per event, the live groups that get it: every group it does not cover, and the covered
ones the selector names.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from broker.core.events import CloudEvent
from broker.dataplane.bus import GroupSelector


class _Subscribed(Protocol):
    @property
    def subscriptions(self) -> object: ...


G = TypeVar("G", bound=_Subscribed)


class GroupSelection(Generic[G]):
    """A topic's group selector (:meth:`MemoryBus.select_groups`) and the groups it leaves
    alone, found again only when the bus's groups changed (not per event)."""

    __slots__ = ("_seen", "_uncovered", "covered", "selector")

    def __init__(self, selector: GroupSelector, covered: frozenset[str]) -> None:
        self.selector = selector
        self.covered = covered
        self._uncovered: list[G] = []
        self._seen = -1  # the bus's group version _uncovered was found at

    def targets(self, groups: dict[str, G], version: int, event: CloudEvent) -> list[G]:
        """The live groups of ``groups`` that get ``event``: the uncovered ones, and the
        covered ones the selector names."""
        if self._seen != version:
            self._uncovered = [g for name, g in groups.items() if name not in self.covered]
            self._seen = version
        uncovered = self._uncovered
        # Usually every group of a Broker topic is covered: no list to filter then.
        found = [group for group in uncovered if group.subscriptions] if uncovered else []
        covered = self.covered
        for name in self.selector(event):
            group = groups.get(name)
            if group is not None and group.subscriptions and name in covered:
                found.append(group)
        return found


def live_targets(
    groups: dict[str, G] | None,
    selection: GroupSelection[G] | None,
    version: int,
    event: CloudEvent,
) -> list[G]:
    """The live groups of a topic's ``groups`` that get ``event``: every one of them when the
    topic has no ``selection`` (``version``: the bus's group version, see
    :meth:`GroupSelection.targets`)."""
    if not groups:
        return []
    if selection is None:
        return [group for group in groups.values() if group.subscriptions]
    return selection.targets(groups, version, event)


def selected_by(selection: GroupSelection[Any] | None, group: str) -> GroupSelector | None:
    """What a message for ``group`` carries (``Message.selected_by``): the topic's selector,
    when it is what decides which events the group gets."""
    if selection is None or group not in selection.covered:
        return None
    return selection.selector
