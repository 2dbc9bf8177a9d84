"""Which of many Triggers' filters match one event, without testing every filter (issue 14).

With one Broker and thousands of Triggers, testing each compiled filter per event costs time in
proportion to the number of Triggers. Most real filters pin an attribute to a value
(``exact``/legacy ``filter.attributes``) or to a prefix, and such a pin is a *necessary*
condition: a filter whose pinned attribute does not hold cannot match. This module files each
Trigger under one necessary condition taken from its filter (of several, the one fewest Triggers
share):

* an exact pin ``(attribute, value)``: found by one dict lookup of the event's value;
* a prefix pin ``(attribute, prefix)``: found by looking up the event value's prefixes of the
  lengths that some pinned prefix has (a legacy ``""`` value, "attribute present", is the empty
  prefix);
* none usable (CESQL only, ``suffix``, ``any``, ``not``, derived names such as ``datamediatype``,
  or no filter at all): the Trigger is a candidate for every event.

:meth:`TriggerIndex.matching` gathers the candidates from the event's values and then runs each
candidate's full compiled predicate (skipped when the filter is nothing but its one pin, which the
lookup has just checked), so the answer is exactly the set of Triggers whose filter
matches; the index only skips Triggers that could not match (the property tests check this against
testing every filter). Pins are taken only from parts of a filter that must all hold: the
top-level ``filters`` list and ``all`` lists inside it, or the legacy attributes map; never from
inside ``any`` or ``not``.

Pure and synchronous: built once per snapshot from each Trigger's canonical filter text
(``TriggerSpec.filter_source``, from
:func:`broker.dataplane.dispatch.filters.compile_trigger_filter`) and compiled predicate. The
dispatcher builds one per Broker topic and hands it to a bus that can select the groups an event
goes to (the in-memory bus; see :mod:`broker.dataplane.dispatch.dispatcher` and
docs/trigger-index.md).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from broker.core.events import CloudEvent, EventFilter, attribute_text
from broker.dataplane.dispatch.filters import DERIVED_ATTRIBUTE_NAMES, set_dialects

__all__ = ["Pin", "Pins", "TriggerIndex", "choose_pin", "pins_of"]

Key = TypeVar("Key", bound=Hashable)
# A Trigger's key and the predicate still to run, None when its pin alone decides.
_Entry = tuple[Key, EventFilter | None]


@dataclass(frozen=True, slots=True)
class Pin:
    """A necessary condition of a filter: attribute ``name`` equals / starts with ``value``."""

    kind: str  # "exact" or "prefix"
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Pins:
    """The pins of a filter, and whether they are all of it (the filter holds exactly when
    every pin holds: no CESQL, suffix, any, not or derived name beside them)."""

    pins: tuple[Pin, ...]
    complete: bool


def _pins_of_element(element: object) -> Pins:
    """Pins that must hold for ``element`` (one entry of a ``filters`` list) to match."""
    if not isinstance(element, Mapping):
        return Pins((), complete=False)
    dialects = set_dialects(element)
    if not dialects:  # {} passes everything
        return Pins((), complete=True)
    if len(dialects) > 1:  # never passes admission
        return Pins((), complete=False)
    ((dialect, value),) = dialects.items()
    if dialect in ("exact", "prefix") and isinstance(value, Mapping):
        pins = tuple(
            Pin(dialect, name, wanted)
            for name, wanted in value.items()
            if isinstance(name, str) and isinstance(wanted, str)
            if name not in DERIVED_ATTRIBUTE_NAMES
        )
        return Pins(pins, complete=len(pins) == len(value))
    if dialect == "all" and isinstance(value, list):
        return _conjunction([_pins_of_element(nested) for nested in value])
    return Pins((), complete=False)


def _conjunction(parts: list[Pins]) -> Pins:
    return Pins(
        tuple(pin for part in parts for pin in part.pins), all(part.complete for part in parts)
    )


def pins_of(filter_source: str | Mapping[str, Any]) -> Pins:
    """Every pin of a filter (each one alone is a necessary condition; none when it has none).

    ``filter_source``: the canonical filter text (``TriggerSpec.filter_source``) or its parsed
    form.
    """
    parsed = json.loads(filter_source) if isinstance(filter_source, str) else filter_source
    if not isinstance(parsed, Mapping):
        return Pins((), complete=False)
    filters = parsed.get("filters")
    if filters:
        return _conjunction([_pins_of_element(element) for element in filters])
    attributes = (parsed.get("filter") or {}).get("attributes") or {}
    # Legacy: "" means "present with any value", which is the empty prefix.
    pins = tuple(
        Pin("exact", name, wanted) if wanted else Pin("prefix", name, "")
        for name, wanted in attributes.items()
        if isinstance(wanted, str) and name not in DERIVED_ATTRIBUTE_NAMES
    )
    return Pins(pins, complete=len(pins) == len(attributes))


def choose_pin(pins: Iterable[Pin], shared_by: Mapping[Pin, int]) -> Pin | None:
    """The pin to file a Trigger under: the one fewest Triggers share (fewest candidates per
    event), then exact over prefix (one lookup), then the longest value."""
    return min(
        pins, default=None, key=lambda pin: (shared_by[pin], pin.kind != "exact", -len(pin.value))
    )


@dataclass(slots=True)
class _PrefixTable(Generic[Key]):
    """Prefix pins of one attribute: prefix -> entries, and the lengths that occur."""

    by_prefix: dict[str, list[_Entry[Key]]] = field(default_factory=dict)
    lengths: tuple[int, ...] = ()


class TriggerIndex(Generic[Key]):
    """Triggers filed by a necessary condition of their filter; see the module docstring."""

    __slots__ = ("_exact", "_prefix", "_size", "_unpinned")

    def __init__(self, entries: Iterable[tuple[Key, str | Mapping[str, Any], EventFilter]]) -> None:
        """``entries``: (key, canonical filter text or its parsed form, compiled predicate)."""
        # attribute -> value -> entries
        self._exact: dict[str, dict[str, list[_Entry[Key]]]] = {}
        self._prefix: dict[str, _PrefixTable[Key]] = {}
        self._unpinned: list[_Entry[Key]] = []
        pinned = [(key, pins_of(source), predicate) for key, source, predicate in entries]
        self._size = len(pinned)
        # How many Triggers have each pin: a pin many share (a common source) selects little.
        shared_by: Counter[Pin] = Counter(pin for _, pins, _ in pinned for pin in set(pins.pins))
        for key, pins, predicate in pinned:
            pin = choose_pin(pins.pins, shared_by)
            # A filter that is its one pin and nothing else matches whenever the pin does.
            sure = pins.complete and len(set(pins.pins)) == 1
            entry = (key, None if sure else predicate)
            if pin is None:
                self._unpinned.append(entry)
            elif pin.kind == "exact":
                self._exact.setdefault(pin.name, {}).setdefault(pin.value, []).append(entry)
            else:
                table = self._prefix.setdefault(pin.name, _PrefixTable())
                table.by_prefix.setdefault(pin.value, []).append(entry)
        for table in self._prefix.values():
            table.lengths = tuple(sorted({len(prefix) for prefix in table.by_prefix}))

    def __len__(self) -> int:
        return self._size

    @property
    def unpinned(self) -> int:
        """How many Triggers are tested for every event (no usable pin)."""
        return len(self._unpinned)

    def candidates(self, event: CloudEvent) -> list[_Entry[Key]]:
        """The entries that may match ``event`` (a superset of those that do): (key, predicate
        still to run, or None when the Trigger's filter is its pin alone and so matches)."""
        attributes = event.attributes
        found = list(self._unpinned)
        for name, by_value in self._exact.items():
            value = attributes.get(name)
            if value is None:
                continue
            bucket = by_value.get(value if value.__class__ is str else attribute_text(value))
            if bucket:
                found.extend(bucket)
        for name, table in self._prefix.items():
            value = attributes.get(name)
            if value is None:
                continue
            text = value if value.__class__ is str else attribute_text(value)
            by_prefix = table.by_prefix
            for length in table.lengths:
                if length > len(text):
                    break
                bucket = by_prefix.get(text[:length])
                if bucket:
                    found.extend(bucket)
        return found

    def matching(self, event: CloudEvent) -> list[Key]:
        """Keys of exactly the Triggers whose filter matches ``event`` (full predicate run)."""
        return [
            key
            for key, predicate in self.candidates(event)
            if predicate is None or predicate(event)
        ]
