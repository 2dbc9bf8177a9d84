"""PingSource's pure parts: the schedule (K195), the event (K194, K196) and admission (issue 4:
a bad cron or time zone is refused naming spec.schedule / spec.timezone)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.core.errors import InvalidResource
from broker.features.sources.ping import (
    PING_EVENT_TYPE,
    Schedule,
    next_fire,
    parse_schedule,
    ping_event,
)
from broker.server.features import admit

T0 = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "tz", "after", "expected"),
    [
        ("* * * * *", None, T0, utc(2030, 1, 1, 0, 1)),
        ("*/1 * * * *", None, utc(2030, 1, 1, 0, 1), utc(2030, 1, 1, 0, 2)),  # strictly after
        ("*/15 * * * *", None, T0, utc(2030, 1, 1, 0, 15)),
        ("0 9 * * *", "Europe/Berlin", T0, utc(2030, 1, 1, 8, 0)),  # 09:00 CET = 08:00 UTC
        ("CRON_TZ=Europe/Berlin 0 9 * * *", None, T0, utc(2030, 1, 1, 8, 0)),
        ("TZ=America/New_York 0 0 * * *", None, T0, utc(2030, 1, 1, 5, 0)),
        ("0 12 * * 1", None, T0, utc(2030, 1, 7, 12, 0)),  # 2030-01-07 is a Monday
        ("@hourly", None, T0, utc(2030, 1, 1, 1, 0)),
        ("@daily", "Asia/Tokyo", T0, utc(2030, 1, 1, 15, 0)),  # midnight JST
        ("* * * * * *", None, T0, utc(2030, 1, 1, 0, 0, 31)),  # seconds first (cemesh)
        ("*/10 * * * * *", None, T0, utc(2030, 1, 1, 0, 0, 40)),
        ("0 30 * * * *", None, T0, utc(2030, 1, 1, 0, 30)),  # second 0 of minute 30
    ],
)
def test_next_fire_is_the_first_tick_strictly_after(
    schedule: str, tz: str | None, after: datetime, expected: datetime
) -> None:
    """K195: 5-field cron, CRON_TZ=/TZ= prefix, timezone, descriptors; cemesh's seconds field."""
    assert next_fire(schedule, tz, after) == expected


def test_next_fire_spring_forward_and_naive_input() -> None:
    """A local time that does not exist (DST gap) fires at the first instant after the gap;
    a naive ``after`` is read as UTC."""
    fire = next_fire("30 2 * * *", "America/New_York", utc(2030, 3, 10, 5, 0))
    assert fire.astimezone(UTC) == utc(2030, 3, 10, 7, 0)  # 03:00 EDT
    assert next_fire("* * * * *", None, datetime(2030, 1, 1, 0, 0, 30)) == utc(2030, 1, 1, 0, 1)


def test_parse_schedule_keeps_zone_and_seconds() -> None:
    assert parse_schedule("  0  9 * * * ") == Schedule("0 9 * * *", "UTC", seconds=False)
    assert parse_schedule("CRON_TZ=Asia/Tokyo */5 * * * * *") == Schedule(
        "*/5 * * * * *", "Asia/Tokyo", seconds=True
    )


@pytest.mark.parametrize(
    ("schedule", "tz", "field"),
    [
        ("* * *", None, "spec.schedule"),
        ("61 * * * *", None, "spec.schedule"),
        ("not a cron", None, "spec.schedule"),
        ("* * * * * * *", None, "spec.schedule"),
        ("@reboot", None, "spec.schedule"),
        ("* * * * *", "Mars/Olympus", "spec.timezone"),
        ("CRON_TZ=Nowhere/Land * * * * *", None, "spec.schedule"),
        ("CRON_TZ=UTC * * * * *", "Europe/Berlin", "spec.timezone"),
    ],
)
def test_bad_schedule_names_the_field(schedule: str, tz: str | None, field: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_schedule(schedule, tz)
    assert caught.value.field == field


def test_ping_event_is_knatives_with_a_stable_id() -> None:
    """K194 type and source; K196 data as given, datacontenttype = contentType; time = tick;
    the id is the same for the same (source, tick) on every replica."""
    tick = utc(2030, 1, 1, 0, 1)
    spec = {"data": '{"hello": "world"}', "contentType": "application/json"}
    event = ping_event("ns", "beat", "uid-1", spec, tick)
    assert event.type == PING_EVENT_TYPE == "dev.knative.sources.ping"
    assert event.source == "/apis/v1/namespaces/ns/pingsources/beat"
    assert event.data == b'{"hello": "world"}'
    assert event.datacontenttype == "application/json"
    assert event.attributes["time"] == "2030-01-01T00:01:00.000000Z"
    assert event.id == ping_event("ns", "beat", "uid-1", spec, tick).id
    assert event.id != ping_event("ns", "beat", "uid-1", spec, utc(2030, 1, 1, 0, 2)).id
    assert event.id != ping_event("ns", "beat", "uid-2", spec, tick).id

    binary = ping_event("ns", "beat", "u", {"dataBase64": base64.b64encode(b"\xff").decode()}, tick)
    assert binary.data == b"\xff"
    assert binary.datacontenttype is None
    assert ping_event("ns", "beat", "u", {}, tick).data is None


def ping_source(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": "beat", "namespace": "default"},
        "spec": {"sink": {"uri": "http://sink.example.com/"}, **spec},
    }


def test_admission_defaults_the_schedule_like_knative() -> None:
    assert admit(ping_source())["spec"]["schedule"] == "* * * * *"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"schedule": "bad cron"}, "spec.schedule"),
        ({"schedule": "@every 1m"}, "spec.schedule"),
        ({"schedule": 5}, "spec.schedule"),
        ({"timezone": "Nowhere"}, "spec.timezone"),
        ({"data": "x", "dataBase64": "eA=="}, "spec.dataBase64"),
        ({"dataBase64": "not base64!"}, "spec.dataBase64"),
        ({"data": "{not json", "contentType": "application/json"}, "spec.data"),
        ({"dataBase64": "e25vdA==", "contentType": "application/json"}, "spec.dataBase64"),
        ({"sink": None}, "spec.sink"),
        ({"ceOverrides": {"extensions": {"Bad-Name": "x"}}}, "spec.ceOverrides.extensions"),
    ],
)
def test_admission_refuses_bad_specs_naming_the_field(spec: dict[str, Any], field: str) -> None:
    """Issue 4: every statically checkable mistake is refused at apply time, naming the field."""
    with pytest.raises(InvalidResource) as caught:
        admit(ping_source(**spec))
    assert caught.value.field == field
