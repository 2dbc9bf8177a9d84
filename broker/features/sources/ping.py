"""PingSource (``sources.knative.dev/v1``): a fixed event sent to a sink on a cron schedule.

Knative's fields and event, unchanged (K194-K196): ``schedule`` (cron, default ``* * * * *``,
descriptors such as ``@hourly``, a ``CRON_TZ=`` or ``TZ=`` prefix), ``timezone`` (an IANA name),
``contentType``, ``data`` or ``dataBase64`` (mutually exclusive), ``sink``, ``ceOverrides``. Each
tick sends ``type: dev.knative.sources.ping`` from ``/apis/v1/namespaces/<ns>/pingsources/<name>``
with the data as given.

cemesh additions, both documented in the README:

- a 6-field schedule has a **seconds** field first (``*/5 * * * * *``: every 5 seconds), as
  Quartz and robfig/cron's ``WithSeconds`` (Knative's docs mention Quartz's seconds field; its
  validation parses 5 fields);
- the time zone defaults to UTC (Knative: the adapter's zone, UTC in its image), so that every
  replica computes the same ticks.

Scheduling is the pure :func:`next_fire`; waiting goes through a :class:`Clock` (the module-level
:data:`CLOCK`, swapped by tests) so no test sleeps a minute. Every replica runs every PingSource;
a claim in the store (:mod:`broker.features.sources.lease`) lets exactly one of them fire each tick.
The event's ``id`` is a UUID derived from (source uid, tick), its ``time`` the tick, so a
receiver can de-duplicate on ``source`` + ``id`` (K12).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import CroniterBadDateError, croniter

# The module, not its names: importing broker.features.sources.lease first imports this module back.
from broker.controlplane.resource_store import new_holder
from broker.core.errors import CemeshError, InvalidResource
from broker.core.events import CloudEvent, new_event
from broker.features.sources import lease
from broker.features.sources.base import PrepareContext, Source, SourceKind, SourceNotReady
from broker.features.sources.kinds import PING_SOURCE

PING_EVENT_TYPE = "dev.knative.sources.ping"
DEFAULT_SCHEDULE = "* * * * *"
# robfig/cron's descriptors (Knative parses with it); "@every" is refused by Knative too.
DESCRIPTORS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
# A tick found this late (the process was suspended, the loop was blocked) is skipped rather than
# fired late; later ticks go on as scheduled.
MAX_LATENESS = timedelta(minutes=1)
# A schedule with no tick within this many years never fires (February 30th); the longest real
# gap is February 29th across a non-leap century year: 8 years.
MAX_YEARS_BETWEEN_TICKS = 10
_NEVER_PROBE_START = datetime(2000, 1, 1, tzinfo=UTC)
MAX_ZONE_NAME = 64  # characters; the longest IANA name has 32
_TICK_ID_NAMESPACE = uuid.UUID("6f1c3a52-8d1e-4c7a-9b0e-2f7d5c1a9e44")


# --- the schedule (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule: the cron expression and the zone its fields are read in."""

    expression: str  # without the CRON_TZ= prefix
    zone: str  # IANA name; "UTC" by default
    seconds: bool  # 6 fields: the first is seconds

    @property
    def tz(self) -> tzinfo:
        return UTC if self.zone == "UTC" else ZoneInfo(self.zone)


def _zone(name: str, field: str) -> str:
    unknown = f"unknown time zone {name[:80]!r}: use an IANA name such as Europe/Berlin"
    if len(name) > MAX_ZONE_NAME:
        raise InvalidResource(field, f"{unknown} (at most {MAX_ZONE_NAME} characters)")
    try:
        ZoneInfo(name)
    # ZoneInfo reads a file named by the zone: odd names fail as files do (too long, NUL, ...).
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidResource(field, unknown) from exc
    return name


def parse_schedule(schedule: str, timezone: str | None = None) -> Schedule:
    """Parse ``spec.schedule`` (and ``spec.timezone``); InvalidResource naming the bad field."""
    text = " ".join(schedule.split())
    zone = "UTC"
    if text.startswith(("CRON_TZ=", "TZ=")):
        prefix, _, text = text.partition(" ")
        if timezone:
            raise InvalidResource(
                "spec.timezone", f"conflicts with the {prefix} prefix of spec.schedule; keep one"
            )
        zone = _zone(prefix.partition("=")[2], "spec.schedule")
    elif timezone:
        zone = _zone(timezone, "spec.timezone")
    if text.startswith("@"):
        if text not in DESCRIPTORS:
            raise InvalidResource(
                "spec.schedule",
                f"unsupported descriptor {text!r}; use one of {', '.join(sorted(DESCRIPTORS))} "
                "or a cron expression",
            )
        return Schedule(text, zone, seconds=False)
    fields = text.split()
    if len(fields) not in (5, 6):
        raise InvalidResource(
            "spec.schedule",
            f"{schedule!r} has {len(fields)} fields: use 5 (minute hour day-of-month month "
            "day-of-week), or 6 with seconds first",
        )
    seconds = len(fields) == 6
    if not croniter.is_valid(text, second_at_beginning=seconds):
        raise InvalidResource("spec.schedule", f"{schedule!r} is not a valid cron expression")
    parsed = Schedule(text, zone, seconds)
    try:  # from a fixed day: whether a cron expression can fire does not depend on when
        next_fire(parsed, None, _NEVER_PROBE_START)
    except CroniterBadDateError as exc:
        raise InvalidResource(
            "spec.schedule",
            f"{schedule!r} never fires: no tick within {MAX_YEARS_BETWEEN_TICKS} years "
            "(a date that no month has, such as February 30th?)",
        ) from exc
    return parsed


def next_fire(schedule: str | Schedule, tz: str | None, after: datetime) -> datetime:
    """The first tick of ``schedule`` strictly after ``after`` (naive = UTC), in the zone.

    ``tz`` is ``spec.timezone`` (ignored when ``schedule`` is already a :class:`Schedule`).
    """
    parsed = schedule if isinstance(schedule, Schedule) else parse_schedule(schedule, tz)
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    start = after.astimezone(parsed.tz)
    fire: datetime = croniter(
        parsed.expression,
        start,
        second_at_beginning=parsed.seconds,
        max_years_between_matches=MAX_YEARS_BETWEEN_TICKS,
    ).get_next(datetime)
    return fire


def ping_source_uri(namespace: str, name: str) -> str:
    """The ``source`` of a PingSource's events, as Knative's (K194)."""
    return f"/apis/v1/namespaces/{namespace}/pingsources/{name}"


def ping_data(spec: Mapping[str, Any]) -> bytes | None:
    """The event body: ``data`` as UTF-8, or ``dataBase64`` decoded, or none."""
    if spec.get("dataBase64"):
        return base64.b64decode(spec["dataBase64"])
    if spec.get("data"):
        return str(spec["data"]).encode()
    return None


def ping_event(
    namespace: str, name: str, uid: str, spec: Mapping[str, Any], tick: datetime
) -> CloudEvent:
    """The event one tick sends (before ceOverrides, which the sender applies)."""
    utc = tick.astimezone(UTC)
    return new_event(
        type=PING_EVENT_TYPE,
        source=ping_source_uri(namespace, name),
        id=str(uuid.uuid5(_TICK_ID_NAMESPACE, f"{uid}/{utc.isoformat()}")),
        time=utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        data=ping_data(spec),
        datacontenttype=spec.get("contentType") or None,
    )


# --- admission and reconcile ---------------------------------------------------------------------


def _optional_string(spec: Mapping[str, Any], key: str) -> str:
    value = spec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidResource(f"spec.{key}", f"must be a string, got {value!r}")
    return value


def _check(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    spec = obj["spec"]
    if spec.get("schedule") in (None, ""):
        spec["schedule"] = DEFAULT_SCHEDULE  # Knative's default
    schedule = _optional_string(spec, "schedule")
    if "@every" in schedule:
        raise InvalidResource("spec.schedule", "the @every descriptor is not supported")
    parse_schedule(schedule, _optional_string(spec, "timezone") or None)
    content_type = _optional_string(spec, "contentType")
    data = _optional_string(spec, "data")
    data_base64 = _optional_string(spec, "dataBase64")
    if data and data_base64:
        raise InvalidResource("spec.dataBase64", "spec.data and spec.dataBase64 exclude each other")
    body = data.encode()
    if data_base64:
        try:
            body = base64.b64decode(data_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidResource("spec.dataBase64", "is not valid base64") from exc
    if (data or data_base64) and content_type.split(";")[0].strip() == "application/json":
        try:
            orjson.loads(body)  # orjson: bounded depth, never a RecursionError
        except ValueError as exc:
            field = "spec.dataBase64" if data_base64 else "spec.data"
            raise InvalidResource(field, f"is not valid JSON (contentType is JSON): {exc}") from exc


def _prepare(obj: Mapping[str, Any], context: PrepareContext) -> Mapping[str, Any]:
    spec = obj.get("spec") or {}
    metadata = obj["metadata"]
    try:  # admitted, but an object stored by an older cemesh may not parse any more
        schedule = parse_schedule(
            str(spec.get("schedule") or DEFAULT_SCHEDULE), spec.get("timezone") or None
        )
    except InvalidResource as exc:
        raise SourceNotReady("InvalidSchedule", exc.message) from exc
    return {
        "source": ping_source_uri(metadata["namespace"], metadata["name"]),
        "schedule": schedule,
    }


# --- running -------------------------------------------------------------------------------------


class Clock(Protocol):
    """Where a PingSource reads the time and waits; tests swap :data:`CLOCK` for their own."""

    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime) -> None: ...


class SystemClock:
    """The wall clock. Sleeps in slices so a wall-clock step (NTP) delays a tick by <= 30 s."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        # Not an Event: nothing sets the time; the wall clock is read again after each slice.
        while (remaining := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(remaining, 30.0))


CLOCK: Clock = SystemClock()


class PingSource(Source):
    """Fires the source's event at every tick of its schedule that this replica claims."""

    clock: Clock | None = None  # None: the module's CLOCK, looked up when run starts

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holder = new_holder()
        self.fired = 0  # ticks this replica claimed and sent (tests, logs)
        self.skipped = 0  # ticks another replica claimed

    async def run(self) -> None:
        clock = self.clock or CLOCK
        schedule = self.spec.resolved.get("schedule")
        if not isinstance(schedule, Schedule):
            schedule = parse_schedule(
                str(self.spec.spec.get("schedule") or DEFAULT_SCHEDULE),
                self.spec.spec.get("timezone") or None,
            )
        tick = next_fire(schedule, None, clock.now())
        while True:
            await clock.sleep_until(tick)
            now = clock.now()
            if now - tick <= MAX_LATENESS:
                await self._fire(tick)
            else:
                self.log.warning("skipped a tick found too late", extra={"tick": tick.isoformat()})
            tick = next_fire(schedule, None, max(tick, now - MAX_LATENESS))

    async def _fire(self, tick: datetime) -> None:
        try:
            won = await lease.try_claim_tick(self.context.store, self.spec.uid, tick, self.holder)
        except CemeshError as exc:
            # Without the claim this replica cannot know whether another one fires: skipping
            # keeps "once per tick" at the cost of a missed tick while the store is down.
            self.log.error("tick not fired: the store did not answer", extra={"error": str(exc)})
            return
        if not won:
            self.skipped += 1
            return
        event = ping_event(self.spec.namespace, self.spec.name, self.spec.uid, self.spec.spec, tick)
        try:
            await self.sink.send(event)
        except CemeshError as exc:  # the sender retried; this tick is lost, the next ones go on
            self.log.error("tick not delivered", extra={"error": str(exc)})
            return
        self.fired += 1


PING_SOURCE_KIND = SourceKind(
    resource=PING_SOURCE,
    runner=PingSource,
    check=_check,
    prepare=_prepare,
    event_types=lambda obj: [PING_EVENT_TYPE],
)
