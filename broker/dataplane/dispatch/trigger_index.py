"""Which of many Triggers' filters match one event, without testing every filter (issue 14).

With one Broker and thousands of Triggers, testing each compiled filter per event costs time in
proportion to the number of Triggers. Most real filters pin an attribute to a value
(``exact``/legacy ``filter.attributes``, or ``attr = 'text'`` in CESQL), a prefix or a suffix,
and such a pin is a *necessary* condition: a filter whose pinned attribute does not hold cannot
match. This module files each Trigger under one *cover*, a set of pins of which at least one
holds whenever the filter matches (of several, the one fewest Triggers share):

* one pin of a conjunction (a ``filters`` list, ``all``, the legacy map, CESQL ``AND``), or,
  for a filter that is nothing but exact values of several attributes, all of them at once
  (one lookup of the event's values of those attributes decides it);
* for an ``any`` whose every alternative has a cover, the union of those covers (the Trigger is
  filed under each of them, and reported once);
* none usable (``not``, other CESQL, derived names such as ``datamediatype``, or no filter at
  all): the Trigger is a candidate for every event.

Pins are found by dict lookups: an exact pin ``(attribute, value)`` by the event's value; a
prefix (suffix) pin by the event value's prefixes (suffixes) of the lengths some pinned prefix
(suffix) has (a legacy ``""`` value, "attribute present", is the empty prefix).

:meth:`TriggerIndex.matching` gathers the candidates from the event's values and then runs, for
each candidate, only what its filter asks beyond the pin the lookup has just proved (its
*residual*: the other conjuncts, compiled on their own; nothing when the filter is its pin
alone; the whole filter when the pin came from CESQL or an ``any``). Candidates of one bucket
whose residuals are equal (the same canonical text) share one predicate call, and so do unpinned
Triggers with equal filters. The answer is therefore exactly the set of Triggers whose filter
matches; the index only skips Triggers that could not match and work already done (the property
tests check this against testing every filter). Pins are never taken from inside ``not``.

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
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, TypeVar

from broker.cesql import CesqlError, ast, parse
from broker.core.events import CloudEvent, EventFilter, attribute_text
from broker.dataplane.dispatch.filters import (
    DERIVED_ATTRIBUTE_NAMES,
    canonical_text,
    compile_trigger_filter,
    set_dialects,
)

__all__ = [
    "Cover",
    "Pin",
    "Pins",
    "TriggerIndex",
    "choose_cover",
    "choose_pin",
    "pins_of",
    "residual",
]

Key = TypeVar("Key", bound=Hashable)
# A Trigger's key and the predicate still to run, None when its pin alone decides.
_Entry = tuple[Key, EventFilter | None]
# What a Trigger's filter asks beyond its pin: canonical filter text and its predicate.
_Residual = tuple[str, EventFilter]


@dataclass(frozen=True, slots=True)
class Pin:
    """A condition on one attribute: ``name`` equals / starts with / ends with ``value``."""

    kind: str  # "exact", "prefix" or "suffix"
    name: str
    value: str


# Pins of which at least one holds whenever a filter matches (one pin: that pin must hold).
Cover = tuple[Pin, ...]


@dataclass(frozen=True, slots=True)
class Pins:
    """The pins of a filter, and whether they are all of it (the filter holds exactly when
    every pin holds: no CESQL, any, not or derived name beside them).

    ``pins``: each one alone is a necessary condition. ``alternatives``: covers from ``any``
    (at least one pin of each holds), also necessary conditions.
    """

    pins: tuple[Pin, ...]
    complete: bool
    alternatives: tuple[Cover, ...] = ()

    @property
    def covers(self) -> tuple[Cover, ...]:
        """Every cover of the filter: each distinct pin alone, then each ``any``'s."""
        return tuple((pin,) for pin in dict.fromkeys(self.pins)) + self.alternatives

    @property
    def distinct(self) -> set[Pin]:
        """Every pin of every cover, once."""
        return {pin for cover in self.covers for pin in cover}


_NO_PINS = Pins((), complete=False)


def _pins_of_element(element: object) -> Pins:
    """Pins that must hold for ``element`` (one entry of a ``filters`` list) to match."""
    if not isinstance(element, Mapping):
        return _NO_PINS
    dialects = set_dialects(element)
    if not dialects:  # {} passes everything
        return Pins((), complete=True)
    if len(dialects) > 1:  # never passes admission
        return _NO_PINS
    ((dialect, value),) = dialects.items()
    if dialect in ("exact", "prefix", "suffix") and isinstance(value, Mapping):
        pins = tuple(
            Pin(dialect, name, wanted)
            for name, wanted in value.items()
            if isinstance(name, str) and isinstance(wanted, str)
            if name not in DERIVED_ATTRIBUTE_NAMES
        )
        return Pins(pins, complete=len(pins) == len(value))
    if dialect == "all" and isinstance(value, list):
        return _conjunction([_pins_of_element(nested) for nested in value])
    if dialect == "any" and isinstance(value, list):
        return Pins((), complete=False, alternatives=_disjunction(value))
    if dialect == "cesql" and isinstance(value, str):
        return Pins(_cesql_pins(value), complete=False)
    return _NO_PINS


def _disjunction(alternatives: list[Any]) -> tuple[Cover, ...]:
    """The cover of ``any`` of ``alternatives``: one cover of each, joined; none when an
    alternative has none (or there are none: ``any`` of nothing never matches, but is rare)."""
    joined: list[Pin] = []
    for alternative in alternatives:
        cover = choose_cover(_pins_of_element(alternative).covers, Counter())
        if cover is None:
            return ()
        joined.extend(cover)
    return (tuple(dict.fromkeys(joined)),) if joined else ()


def _cesql_pins(text: str) -> tuple[Pin, ...]:
    """``attribute = 'text'`` comparisons that a CESQL expression needs to be true: those
    joined by ``AND`` at its top. (The right operand's type picks the comparison, so the
    attribute's value is compared as text, as :func:`attribute_text` renders it.)"""
    try:
        root = parse(text)
    except CesqlError:
        return ()
    pins: list[Pin] = []
    pending: list[ast.Node] = [root]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Binary) and node.op == "and":
            pending += (node.left, node.right)
        elif (
            isinstance(node, ast.Binary)
            and node.op == "="
            and isinstance(node.left, ast.Identifier)
            and isinstance(node.right, ast.Literal)
            and isinstance(node.right.value, str)
            and node.left.name not in DERIVED_ATTRIBUTE_NAMES
        ):
            pins.append(Pin("exact", node.left.name, node.right.value))
    return tuple(pins)


def _conjunction(parts: list[Pins]) -> Pins:
    return Pins(
        tuple(pin for part in parts for pin in part.pins),
        all(part.complete for part in parts),
        tuple(cover for part in parts for cover in part.alternatives),
    )


def pins_of(filter_source: str | Mapping[str, Any]) -> Pins:
    """Every pin of a filter (each one alone is a necessary condition; none when it has none).

    ``filter_source``: the canonical filter text (``TriggerSpec.filter_source``) or its parsed
    form.
    """
    if isinstance(filter_source, str):
        return _pins_of_text(filter_source)
    return _pins_of_parsed(filter_source)


@lru_cache(maxsize=16_384)
def _pins_of_text(filter_source: str) -> Pins:
    # The index is rebuilt whenever a Broker's Triggers change (every apply of one more
    # Trigger): the pins of those that did not change are found here, not parsed again.
    return _pins_of_parsed(json.loads(filter_source))


def _pins_of_parsed(parsed: object) -> Pins:
    if not isinstance(parsed, Mapping):
        return _NO_PINS
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


def _conjuncts(elements: Iterable[Any]) -> list[Any]:
    """``elements`` (all of which must hold) as a flat list of conjuncts that must all hold:
    ``all`` opened, an attribute map of several names split into one map per name, ``{}``
    (always true) dropped; anything else (``any``, ``not``, CESQL) is one conjunct."""
    flat: list[Any] = []
    for element in elements:
        dialects = set_dialects(element) if isinstance(element, Mapping) else None
        if dialects is not None and len(dialects) <= 1:
            if not dialects:
                continue
            ((dialect, value),) = dialects.items()
            if dialect in ("exact", "prefix", "suffix") and isinstance(value, Mapping):
                flat += [{dialect: {name: wanted}} for name, wanted in value.items()]
                continue
            if dialect == "all" and isinstance(value, list):
                flat += _conjuncts(value)
                continue
        flat.append(element)
    return flat


def _residual_spec(parsed: Mapping[str, Any], pin: Pin) -> dict[str, Any] | None:
    """The filter (parsed canonical form) with the conjuncts that are exactly ``pin`` taken
    out, as a Trigger spec; None when no conjunct is (the pin came from CESQL or an ``any``)."""
    filters = parsed.get("filters")
    if filters:
        conjuncts = _conjuncts(filters)
        pinned = {pin.kind: {pin.name: pin.value}}
        if pin.name in DERIVED_ATTRIBUTE_NAMES or pinned not in conjuncts:
            return None
        return {"filters": [element for element in conjuncts if element != pinned]}
    attributes = dict((parsed.get("filter") or {}).get("attributes") or {})
    # Legacy: an exact pin is `name: value`; the empty prefix is `name: ""` (present).
    if (pin.kind, bool(pin.value)) not in (("exact", True), ("prefix", False)):
        return None
    if attributes.get(pin.name) != pin.value:
        return None
    del attributes[pin.name]
    return {"filter": {"attributes": attributes}}


@lru_cache(maxsize=16_384)
def residual(filter_source: str, pin: Pin) -> tuple[bool, _Residual | None]:
    """What the filter ``filter_source`` asks beyond ``pin``, once an index lookup has found
    that ``pin`` holds: ``(True, None)`` nothing (the pin decides), ``(True, (text,
    predicate))`` the rest of its conjunction, compiled, or ``(False, None)`` when the pin is no
    conjunct of its own (from CESQL, or an ``any``), so the whole filter must run.

    Triggers whose residuals are equal share one predicate call per event (:class:`_Bucket`);
    the typical one is a type pinned beside a CESQL condition many Triggers repeat.
    """
    parsed = json.loads(filter_source)
    rest = _residual_spec(parsed, pin) if isinstance(parsed, Mapping) else None
    if rest is None:
        return False, None
    predicate, text = compile_trigger_filter(rest, payload=parsed.get("payload") is True)
    return True, (None if text == "{}" else (text, predicate))


def _cost(cover: Cover, shared_by: Mapping[Pin, int]) -> tuple[int, int, int, int]:
    """Fewest Triggers sharing it (fewest candidates per event), then fewest pins, then exact
    over prefix/suffix (one lookup), then the longest values."""
    return (
        sum(shared_by.get(pin, 0) for pin in cover),
        len(cover),
        sum(pin.kind != "exact" for pin in cover),
        -sum(len(pin.value) for pin in cover),
    )


def choose_cover(covers: Iterable[Cover], shared_by: Mapping[Pin, int]) -> Cover | None:
    """The cover to file a Trigger under (see :func:`_cost`); None when it has none."""
    return min(covers, default=None, key=lambda cover: _cost(cover, shared_by))


def choose_pin(pins: Iterable[Pin], shared_by: Mapping[Pin, int]) -> Pin | None:
    """The single pin :func:`choose_cover` picks among ``pins``."""
    cover = choose_cover(((pin,) for pin in pins), shared_by)
    return None if cover is None else cover[0]


class _Bucket(Generic[Key]):
    """The Triggers filed under one pin (or, for the unpinned bucket, under none).

    ``sure``: filed here alone, and the pin is all their filter asks. ``check``: filed here
    alone, grouped by what their filter asks beyond the pin (its *residual*, canonical text ->
    predicate and the Triggers that share it), so Triggers with the same residual cost one
    predicate call per event, not one each. ``shared``: Triggers filed under several pins (an
    ``any``'s cover), with their full predicate; :meth:`TriggerIndex.matching` reports each once.
    """

    __slots__ = ("_grouping", "check", "shared", "sure")

    def __init__(self) -> None:
        self.sure: list[Key] = []
        self.check: tuple[tuple[EventFilter, tuple[Key, ...]], ...] = ()
        self.shared: list[tuple[Key, EventFilter]] = []
        self._grouping: dict[str, tuple[EventFilter, list[Key]]] | None = None

    def add(self, key: Key, residual: _Residual | None) -> None:
        """File ``key``: decided here (``residual`` None), or by ``residual``'s predicate."""
        if residual is None:
            self.sure.append(key)
            return
        text, predicate = residual
        if self._grouping is None:
            self._grouping = {}
        self._grouping.setdefault(text, (predicate, []))[1].append(key)

    def freeze(self) -> None:
        """Done adding: fix the groups (a tuple is cheaper to walk per event than a dict)."""
        if self._grouping is not None:
            self.check = tuple(
                (predicate, tuple(keys)) for predicate, keys in self._grouping.values()
            )
            self._grouping = None

    def entries(self) -> list[_Entry[Key]]:
        found: list[_Entry[Key]] = [(key, None) for key in self.sure]
        found += [(key, predicate) for predicate, keys in self.check for key in keys]
        found += self.shared
        return found


def _all_exact(pins: Pins) -> tuple[str, ...] | None:
    """The attribute names, sorted, of a filter that holds exactly when each of two or more
    attributes has one value; None for any other filter."""
    if not pins.complete or pins.alternatives or len(pins.pins) < 2:
        return None
    if any(pin.kind != "exact" for pin in pins.pins):
        return None
    distinct = set(pins.pins)
    names = {pin.name for pin in distinct}
    if len(names) != len(distinct) or len(distinct) < 2:
        return None  # one attribute with two values never matches; one pin: filed by it
    return tuple(sorted(names))


@dataclass(slots=True)
class _AffixTable(Generic[Key]):
    """Prefix (or suffix) pins of one attribute: affix -> bucket, and the lengths that occur."""

    by_affix: dict[str, _Bucket[Key]] = field(default_factory=dict)
    lengths: tuple[int, ...] = ()


class TriggerIndex(Generic[Key]):
    """Triggers filed by a necessary condition of their filter; see the module docstring."""

    __slots__ = ("_compound", "_exact", "_prefix", "_size", "_suffix", "_unpinned")

    def __init__(self, entries: Iterable[tuple[Key, str | Mapping[str, Any], EventFilter]]) -> None:
        """``entries``: (key, canonical filter text or its parsed form, compiled predicate).

        Long: one pass to count how many Triggers share each pin (to choose the least shared),
        one to file each Trigger, and a last one to freeze the buckets and affix lengths.
        """
        # attribute -> value -> bucket
        self._exact: dict[str, dict[str, _Bucket[Key]]] = {}
        # Filters that are exact values of several attributes and nothing else (the legacy
        # map with type and source, say): attribute names (sorted) -> their values -> bucket.
        self._compound: dict[tuple[str, ...], dict[tuple[str, ...], _Bucket[Key]]] = {}
        self._prefix: dict[str, _AffixTable[Key]] = {}
        self._suffix: dict[str, _AffixTable[Key]] = {}
        self._unpinned: _Bucket[Key] = _Bucket()
        pinned = [
            (key, text, pins_of(text), predicate)
            for key, text, predicate in (
                (key, _text(source), predicate) for key, source, predicate in entries
            )
        ]
        self._size = len(pinned)
        # How many Triggers have each pin: a pin many share (a common source) selects little.
        shared_by: Counter[Pin] = Counter()
        for _, _, pins, _ in pinned:
            shared_by.update(pins.distinct)
        for key, text, pins, predicate in pinned:
            names = _all_exact(pins)
            if names is not None:  # decided by one lookup of all its values at once
                values = {pin.name: pin.value for pin in pins.pins}
                by_values = self._compound.setdefault(names, {})
                _lookup(by_values, tuple(values[n] for n in names)).add(key, None)
                continue
            covers = pins.covers
            cover = covers[0] if len(covers) == 1 else choose_cover(covers, shared_by)
            if cover is None:  # tested for every event; {} (no pins, nothing else) always holds
                always = pins.complete and not pins.pins and not pins.alternatives
                self._unpinned.add(key, None if always else (text, predicate))
            elif len(cover) > 1:  # an `any`: filed under one pin of each branch
                for pin in cover:
                    self._bucket(pin).shared.append((key, predicate))
            elif pins.complete and not pins.alternatives and len(set(pins.pins)) == 1:
                self._bucket(cover[0]).add(key, None)  # the filter is its pin and nothing else
            else:
                decided, rest = residual(text, cover[0])
                self._bucket(cover[0]).add(key, rest if decided else (text, predicate))
        for bucket in self._all_buckets():
            bucket.freeze()
        for tables in (self._prefix, self._suffix):
            for table in tables.values():
                table.lengths = tuple(sorted({len(affix) for affix in table.by_affix}))

    def _all_buckets(self) -> Iterator[_Bucket[Key]]:
        yield self._unpinned
        for by_value in self._exact.values():
            yield from by_value.values()
        for by_values in self._compound.values():
            yield from by_values.values()
        for tables in (self._prefix, self._suffix):
            for table in tables.values():
                yield from table.by_affix.values()

    def _bucket(self, pin: Pin) -> _Bucket[Key]:
        if pin.kind == "exact":
            return _lookup(self._exact.setdefault(pin.name, {}), pin.value)
        tables = self._prefix if pin.kind == "prefix" else self._suffix
        table = tables.get(pin.name)
        if table is None:
            table = tables[pin.name] = _AffixTable()
        return _lookup(table.by_affix, pin.value)

    def __len__(self) -> int:
        return self._size

    @property
    def unpinned(self) -> int:
        """How many Triggers are tested for every event (no usable pin)."""
        unpinned = self._unpinned
        return len(unpinned.sure) + sum(len(keys) for _, keys in unpinned.check)

    def _buckets(self, event: CloudEvent) -> list[_Bucket[Key]]:
        """The buckets ``event`` hits, the unpinned Triggers' first."""
        attributes = event.attributes
        found = [self._unpinned]
        for name, by_value in self._exact.items():
            value = attributes.get(name)
            if value is None:
                continue
            bucket = by_value.get(value if value.__class__ is str else attribute_text(value))
            if bucket is not None:
                found.append(bucket)
        for name, table in self._prefix.items():
            value = attributes.get(name)
            if value is None:
                continue
            text = value if value.__class__ is str else attribute_text(value)
            by_affix = table.by_affix
            for length in table.lengths:
                if length > len(text):
                    break
                bucket = by_affix.get(text[:length])
                if bucket is not None:
                    found.append(bucket)
        for name, table in self._suffix.items():
            value = attributes.get(name)
            if value is None:
                continue
            text = value if value.__class__ is str else attribute_text(value)
            by_affix, size = table.by_affix, len(text)
            for length in table.lengths:
                if length > size:
                    break
                bucket = by_affix.get(text[size - length :])
                if bucket is not None:
                    found.append(bucket)
        for names, by_values in self._compound.items():
            texts = []
            for name in names:
                value = attributes.get(name)
                if value is None:
                    break
                texts.append(value if value.__class__ is str else attribute_text(value))
            else:
                bucket = by_values.get(tuple(texts))
                if bucket is not None:
                    found.append(bucket)
        return found

    def candidates(self, event: CloudEvent) -> list[_Entry[Key]]:
        """The entries that may match ``event`` (a superset of those that do, a Trigger filed
        under several pins possibly more than once): (key, predicate still to run, or None when
        the Trigger's filter is its pin alone and so matches)."""
        return [entry for bucket in self._buckets(event) for entry in bucket.entries()]

    def predicate_calls(self, event: CloudEvent) -> int:
        """How many predicates :meth:`matching` runs for ``event`` (at most; fewer when a
        Trigger filed under several pins is decided at its first)."""
        return sum(len(bucket.check) + len(bucket.shared) for bucket in self._buckets(event))

    def matching(self, event: CloudEvent) -> list[Key]:
        """Keys of exactly the Triggers whose filter matches ``event``, each once."""
        keys: list[Key] = []
        shared: dict[Key, bool] | None = None
        for bucket in self._buckets(event):
            keys += bucket.sure
            for predicate, group in bucket.check:
                if predicate(event):
                    keys += group
            if bucket.shared:
                if shared is None:
                    shared = {}
                for key, predicate in bucket.shared:
                    if key not in shared:
                        shared[key] = predicate(event)
        if shared:
            keys += [key for key, matched in shared.items() if matched]
        return keys


def _lookup(buckets: dict[Any, _Bucket[Key]], at: Any) -> _Bucket[Key]:
    """The bucket of ``buckets`` at ``at``, made when there is none yet."""
    bucket = buckets.get(at)
    if bucket is None:
        bucket = buckets[at] = _Bucket()
    return bucket


def _text(source: str | Mapping[str, Any]) -> str:
    """The canonical text of a filter given as text or in parsed form."""
    if isinstance(source, str):
        return source
    return canonical_text(source)
