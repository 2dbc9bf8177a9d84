"""The Archive and Replay kinds (``eventing.cemesh.dev/v1alpha1``) and their admission.

Archive ``spec``: ``broker`` (the Broker of the namespace whose accepted events it keeps),
``retention`` (an ISO-8601 duration, default ``P7D``), and optionally ``filter``/``filters`` in
the Trigger filter dialects (checked by :mod:`broker.dataplane.dispatch.filters`): only matching
events are kept.

Replay ``spec``: ``archive`` (an Archive of the namespace), ``startTime`` and ``endTime`` (RFC 3339;
the events the Broker accepted in [start, end) are replayed), ``trigger`` (optional: one Trigger of
the archive's Broker; all of them when absent) and ``rate`` (events per second at most, default
100). A Replay's spec cannot change (create another one); on create through the API, its archive
and trigger must exist and belong together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.controlplane.catalog import Lookup, check_subdomain_name
from broker.controlplane.resources import BROKER, TRIGGER, Admission, ResourceType
from broker.controlplane.shapes import require_string, type_name
from broker.core.durations import parse_duration
from broker.core.errors import InvalidResource
from broker.dataplane.dispatch.filters import validate_trigger_filters
from broker.features.archive.policy import parse_instant

CEMESH_EVENTING = "eventing.cemesh.dev"
ARCHIVE = ResourceType(CEMESH_EVENTING, ("v1alpha1",), "Archive", "archives", ("archive",))
REPLAY = ResourceType(CEMESH_EVENTING, ("v1alpha1",), "Replay", "replays", ("replay",))

DEFAULT_RETENTION = "P7D"
DEFAULT_RATE = 100
MAX_RATE = 100_000  # events per second: beyond, "bounded" means nothing


def _name(spec: Mapping[str, Any], key: str, what: str) -> str:
    name = require_string(spec.get(key), f"spec.{key}", what)
    check_subdomain_name(name, f"spec.{key}")
    return name


def _admit_archive(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    _name(spec, "broker", "the name of a Broker in the Archive's namespace")
    spec.setdefault("retention", DEFAULT_RETENTION)
    if parse_duration(spec["retention"], "spec.retention") <= 0:
        raise InvalidResource("spec.retention", "must be longer than zero")
    validate_trigger_filters(spec)


def replay_rate(value: object) -> float:
    """A Replay's ``spec.rate``: a number of events per second, above 0 and at most MAX_RATE."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidResource(
            "spec.rate", f"must be a number of events per second, got {type_name(value)}"
        )
    if not 0 < value <= MAX_RATE:
        raise InvalidResource(
            "spec.rate", f"must be above 0 and at most {MAX_RATE} events per second, got {value}"
        )
    return float(value)


def _admit_replay(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    _name(spec, "archive", "the name of an Archive in the Replay's namespace")
    start = parse_instant(spec.get("startTime"), "spec.startTime")
    end = parse_instant(spec.get("endTime"), "spec.endTime")
    if end <= start:
        raise InvalidResource(
            "spec.endTime",
            f"{spec['endTime']!r} must be after spec.startTime {spec['startTime']!r}",
        )
    if spec.get("trigger") is not None:
        _name(spec, "trigger", "the name of a Trigger of the archive's Broker")
    spec.setdefault("rate", DEFAULT_RATE)
    replay_rate(spec["rate"])
    if old is not None and old.get("spec") != spec:
        raise InvalidResource(
            "spec", "a Replay cannot be changed once created: delete it or create another one"
        )


async def check_replay_references(obj: Mapping[str, Any], lookup: Lookup) -> None:
    """The Replay's archive exists, and its trigger (when named) is one of that archive's
    Broker's Triggers; InvalidResource naming the field otherwise."""
    namespace = obj["metadata"]["namespace"]
    spec = obj["spec"]
    archive = await lookup(ARCHIVE.group, ARCHIVE.kind, namespace, spec["archive"])
    if archive is None:
        raise InvalidResource(
            "spec.archive", f"Archive {spec['archive']!r} does not exist in namespace {namespace!r}"
        )
    broker = str((archive.get("spec") or {}).get("broker", ""))
    if await lookup(BROKER.group, BROKER.kind, namespace, broker) is None:
        raise InvalidResource(
            "spec.archive",
            f"the Broker {broker!r} of Archive {spec['archive']!r} does not exist in namespace "
            f"{namespace!r}",
        )
    name = spec.get("trigger")
    if name is None:
        return
    trigger = await lookup(TRIGGER.group, TRIGGER.kind, namespace, name)
    if trigger is None:
        raise InvalidResource(
            "spec.trigger", f"Trigger {name!r} does not exist in namespace {namespace!r}"
        )
    if (trigger.get("spec") or {}).get("broker") != broker:
        raise InvalidResource(
            "spec.trigger",
            f"Trigger {name!r} belongs to Broker {(trigger.get('spec') or {}).get('broker')!r}, "
            f"not to {broker!r} whose events Archive {spec['archive']!r} keeps",
        )


ARCHIVE_KINDS: dict[ResourceType, Admission] = {
    ARCHIVE: Admission(_admit_archive),
    REPLAY: Admission(_admit_replay, check_references=check_replay_references),
}
