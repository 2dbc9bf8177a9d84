"""Archive and replay (issue 15 item 5): a Broker's accepted events kept in the store, replayed
to one Trigger or all, marked ``cemeshreplay``, at a bounded rate, resumable across a restart,
expired by retention; bad Replays refused with a precise 4xx. cemesh runs in-process on a loopback
port (SQLite store; the in-memory bus, and Redis Streams as a durable bus); subscribers are real
HTTP servers."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis

from broker.core.errors import StoreError
from broker.core.spec import broker_topic, trigger_group
from broker.dataplane.archive import REPLAY_EXTENSION, archive_group
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.servers.nats import NatsServer
from tests.support.servers.redis import RedisServer
from tests.support.subscriber import Received, RecordingSubscriber

ARCHIVES = "/apis/eventing.cemesh.dev/v1alpha1/namespaces/default/archives"
REPLAYS = "/apis/eventing.cemesh.dev/v1alpha1/namespaces/default/replays"
TRIGGERS = "/apis/eventing.knative.dev/v1/namespaces/default/triggers"


def mesh_manifest(subscribers: dict[str, str], retention: str = "PT1H", extra: str = "") -> str:
    triggers = "".join(
        f"""---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
spec:
  broker: default
  subscriber:
    uri: {url}
{extra if name == "orders" else ""}"""
        for name, url in subscribers.items()
    )
    return f"""
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
---
apiVersion: eventing.cemesh.dev/v1alpha1
kind: Archive
metadata:
  name: everything
spec:
  broker: default
  retention: {retention}
{triggers}"""


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def the_hour() -> tuple[str, str]:
    now = datetime.now(UTC)
    return rfc3339(now - timedelta(hours=1)), rfc3339(now + timedelta(seconds=1))


def replay(name: str, rate: float = 1000, trigger: str | None = None) -> dict[str, Any]:
    start, end = the_hour()
    spec: dict[str, Any] = {"archive": "everything", "startTime": start, "endTime": end}
    spec["rate"] = rate
    if trigger:
        spec["trigger"] = trigger
    return {
        "apiVersion": "eventing.cemesh.dev/v1alpha1",
        "kind": "Replay",
        "metadata": {"name": name},
        "spec": spec,
    }


async def send_events(mesh: RunningCemesh, count: int, prefix: str = "e") -> None:
    """``count`` events to Broker default/default, in batches of 100."""
    for first in range(0, count, 100):
        batch = [
            {
                "specversion": "1.0",
                "id": f"{prefix}-{i}",
                "source": "/archive-test",
                "type": "com.example.order" if i % 2 == 0 else "com.example.refund",
                "data": {"n": i},
            }
            for i in range(first, min(first + 100, count))
        ]
        response = await mesh.post_event(
            "/default/default",
            {"content-type": "application/cloudevents-batch+json"},
            orjson.dumps(batch),
        )
        assert response.status_code == 202, response.text


async def archived(mesh: RunningCemesh, count: int, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait until the archive writer kept ``count`` events."""
    writer = mesh.runtime.component("archive").writer
    async with asyncio.timeout(timeout):
        while writer.archived < count:  # noqa: ASYNC110 (a counter, polled with a timeout)
            await asyncio.sleep(0.05)


async def finished(mesh: RunningCemesh, name: str, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109
    """The Replay's status once ``completedAt`` is set and Succeeded is True."""
    async with asyncio.timeout(timeout):
        while True:
            status = (await mesh.client.get(f"{REPLAYS}/{name}")).json().get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            if (
                status.get("completedAt")
                and conditions.get("Succeeded", {}).get("status") == "True"
            ):
                return status
            await asyncio.sleep(0.1)


def replayed(received: list[Received], name: str) -> list[str]:
    return [
        r.event.id
        for r in received
        if r.event is not None and r.event.attributes.get(REPLAY_EXTENSION) == name
    ]


async def check_the_hour_is_replayed(mesh: RunningCemesh, sub: RecordingSubscriber) -> None:
    await mesh.apply(mesh_manifest({"orders": sub.url}))
    await send_events(mesh, 1000)
    await sub.wait_for(1000, timeout=60)
    await archived(mesh, 1000)
    sub.received.clear()  # the subscriber lost its copies
    created = await mesh.client.post(REPLAYS, json=replay("the-hour"))
    assert created.status_code == 201, created.text
    started = time.monotonic()
    status = await finished(mesh, "the-hour")
    print(f"1,000 events replayed in {time.monotonic() - started:.2f} s (rate bound 1,000/s)")
    assert (status["replayed"], status["total"]) == (1000, 1000)
    received = await sub.wait_for(1000, timeout=30)
    ids = replayed(received, "the-hour")
    assert sorted(ids) == sorted(f"e-{i}" for i in range(1000))
    assert ids == [f"e-{i}" for i in range(1000)]  # in the order the Broker accepted them


async def test_replaying_the_hour_redelivers_all_1000_archived_events_marked_as_replayed(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        await check_the_hour_is_replayed(mesh, sub)


async def test_replaying_the_hour_on_a_durable_bus_redelivers_all_1000(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        running_cemesh(
            tmp_path,
            default_channel="RedisStreamChannel",
            redis_url=redis_server.url,
            redis_visibility_timeout=2.0,
        ) as mesh,
        RecordingSubscriber() as sub,
    ):
        await check_the_hour_is_replayed(mesh, sub)


async def test_replaying_the_hour_on_nats_jetstream_redelivers_all_1000(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        running_cemesh(
            tmp_path, default_channel="NatsJetStreamChannel", nats_url=nats_server.url
        ) as mesh,
        RecordingSubscriber() as sub,
    ):
        await check_the_hour_is_replayed(mesh, sub)


class FailingFirst:
    """The real archive store, whose first ``failures`` appends fail as a store outage would."""

    def __init__(self, real: Any, failures: int) -> None:
        self.real, self.failures, self.calls = real, failures, 0

    async def append(self, archive_uid: str, events: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError("database unavailable (injected)", retryable=True)
        await self.real.append(archive_uid, events)


async def test_an_archive_write_that_fails_is_redelivered_by_the_bus_and_kept_once(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        await mesh.apply(mesh_manifest({"orders": sub.url}))
        writer = mesh.runtime.component("archive").writer
        flaky = writer._sink = FailingFirst(writer._sink, failures=2)
        await send_events(mesh, 100)
        await sub.wait_for(100)  # the Trigger never noticed
        await archived(mesh, 100)
        assert flaky.calls > 2
        archive = (await mesh.client.get(f"{ARCHIVES}/everything")).json()
        assert await flaky.real.count(archive["metadata"]["uid"], 0, 2**62, 2**62) == 100


async def test_replay_to_one_trigger_reaches_only_it_and_its_filter_still_applies(
    tmp_path: Path,
) -> None:
    only_orders = "  filter:\n    attributes:\n      type: com.example.order\n"
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber() as orders,
        RecordingSubscriber() as audit,
    ):
        await mesh.apply(
            mesh_manifest({"orders": orders.url, "audit": audit.url}, extra=only_orders)
        )
        await send_events(mesh, 40)
        await orders.wait_for(20)
        await audit.wait_for(40)
        await archived(mesh, 40)
        orders.received.clear()
        audit.received.clear()
        created = await mesh.client.post(REPLAYS, json=replay("orders-only", trigger="orders"))
        assert created.status_code == 201, created.text
        status = await finished(mesh, "orders-only")
        assert status["replayed"] == 40
        received = await orders.wait_for(20)
        assert replayed(received, "orders-only") == [f"e-{i}" for i in range(0, 40, 2)]
        assert all(r.event and r.event.type == "com.example.order" for r in received)
        assert audit.received == []  # the other Trigger got nothing


async def test_replay_never_exceeds_its_rate(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        await mesh.apply(mesh_manifest({"orders": sub.url}))
        await send_events(mesh, 60)
        await sub.wait_for(60)
        await archived(mesh, 60)
        sub.received.clear()
        started = time.monotonic()
        created = await mesh.client.post(REPLAYS, json=replay("slowly", rate=20))
        assert created.status_code == 201, created.text
        await sub.wait_for(60, timeout=30)
        took = time.monotonic() - started
        # 60 events at 20/s: the last may leave no earlier than 59/20 = 2.95 s after the first.
        assert took >= 2.9, f"60 events at 20/s took {took:.2f} s"


async def test_replay_resumes_after_a_restart_without_resending_what_was_done(
    tmp_path: Path,
) -> None:
    async with RecordingSubscriber() as sub:
        async with running_cemesh(tmp_path) as mesh:
            await mesh.apply(mesh_manifest({"orders": sub.url}))
            await send_events(mesh, 300)
            await sub.wait_for(300)
            await archived(mesh, 300)
            sub.received.clear()
            created = await mesh.client.post(REPLAYS, json=replay("resumed", rate=100))
            assert created.status_code == 201, created.text
            await sub.wait_for(100, timeout=30)  # a third done, then cemesh stops
        before_restart = len(replayed(sub.received, "resumed"))
        assert before_restart < 300
        async with running_cemesh(tmp_path) as mesh:
            status = await finished(mesh, "resumed")
            ids = replayed(sub.received, "resumed")
            assert set(ids) == {f"e-{i}" for i in range(300)}
            duplicates = sum(n - 1 for n in Counter(ids).values())
            print(f"replay resumed: {before_restart} before the restart, {duplicates} sent twice")
            assert duplicates <= 2, f"{duplicates} events sent again after the restart"
            assert status["replayed"] == status["total"] == 300


async def test_retention_deletes_archived_events_once_they_are_older(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        await mesh.apply(mesh_manifest({"orders": sub.url}, retention="PT2S"))
        await send_events(mesh, 10)
        await archived(mesh, 10)
        store = mesh.runtime.component("archive")._context.archive
        archive = (await mesh.client.get(f"{ARCHIVES}/everything")).json()
        uid = archive["metadata"]["uid"]
        assert await store.count(uid, 0, 2**62, 2**62) == 10
        async with asyncio.timeout(20):
            while await store.count(uid, 0, 2**62, 2**62):  # noqa: ASYNC110 (rows in SQL)
                await asyncio.sleep(0.2)
        # A Replay of the hour then has nothing to replay, and says so.
        created = await mesh.client.post(REPLAYS, json=replay("too-late"))
        assert created.status_code == 201, created.text
        status = await finished(mesh, "too-late")
        assert (status["replayed"], status["total"]) == (0, 0)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"endTime": "2020-01-01T00:00:00Z"}, "spec.endTime", "must be after spec.startTime"),
        ({"startTime": "yesterday"}, "spec.startTime", "not an RFC 3339 time"),
        ({"startTime": "2026-01-01T00:00:00"}, "spec.startTime", "no time zone"),
        ({"rate": 0}, "spec.rate", "above 0"),
        ({"rate": "fast"}, "spec.rate", "must be a number"),
        ({"archive": "nope"}, "spec.archive", "Archive 'nope' does not exist"),
        ({"trigger": "nope"}, "spec.trigger", "Trigger 'nope' does not exist"),
        ({"trigger": "elsewhere"}, "spec.trigger", "belongs to Broker 'other'"),
    ],
)
async def test_a_bad_replay_is_refused_naming_the_field(
    tmp_path: Path, change: dict[str, Any], field: str, words: str
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(mesh_manifest({"orders": "http://127.0.0.1:9/"}))
        await mesh.apply(
            """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: other
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: elsewhere
spec:
  broker: other
  subscriber:
    uri: http://127.0.0.1:9/
"""
        )
        body = replay("bad")
        body["spec"].update(change)
        response = await mesh.client.post(REPLAYS, json=body)
        assert response.status_code == 422, response.text
        message = response.json()["message"]
        assert field in message and words in message, message
        assert (await mesh.client.get(f"{REPLAYS}/bad")).status_code == 404


async def test_a_replay_cannot_be_changed_and_a_bad_archive_is_refused(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(mesh_manifest({"orders": "http://127.0.0.1:9/"}))
        created = (await mesh.client.post(REPLAYS, json=replay("fixed"))).json()
        changed = replay("fixed", rate=5)
        changed["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        response = await mesh.client.put(f"{REPLAYS}/fixed", json=changed)
        assert response.status_code == 422 and "cannot be changed" in response.text
        for spec, field in [
            ({"broker": "default", "retention": "PT0S"}, "spec.retention"),
            ({"broker": "default", "retention": "soon"}, "spec.retention"),
            ({"retention": "P1D"}, "spec.broker"),
            ({"broker": "default", "filters": [{"cesql": "type ="}]}, "spec.filters"),
        ]:
            body = {"apiVersion": "eventing.cemesh.dev/v1alpha1", "kind": "Archive"}
            body |= {"metadata": {"name": "bad"}, "spec": spec}
            response = await mesh.client.post(ARCHIVES, json=body)
            assert response.status_code == 422, response.text
            assert field in response.json()["message"], response.text


async def run_cli(mesh: RunningCemesh, *args: str) -> tuple[int, str, str]:
    """The real ``cemesh`` console script as a child process (stdout a pipe: plain lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEMESH_")}
    env |= {"CEMESH_URL": mesh.url, "CEMESH_TOKEN": mesh.token}
    child = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "cemesh"),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return child.returncode or 0, out.decode(), err.decode()


async def test_cemesh_replay_creates_the_replay_and_shows_progress_until_done(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        await mesh.apply(mesh_manifest({"orders": sub.url, "audit": "http://127.0.0.1:9/"}))
        await send_events(mesh, 50)
        await sub.wait_for(50)
        await archived(mesh, 50)
        sub.received.clear()
        code, out, err = await run_cli(
            mesh, "replay", "broker/default", "--from", "1h", "--trigger", "orders",
            "--rate", "100", "--name", "from-cli",
        )  # fmt: skip
        assert code == 0, err
        assert "replay.eventing.cemesh.dev/from-cli created" in err
        assert out.splitlines()[-1] == "replay from-cli: 50/50 events (100%) done", out
        assert sorted(replayed(sub.received, "from-cli")) == sorted(f"e-{i}" for i in range(50))
        code, out, _ = await run_cli(mesh, "get", "replays")
        header, row = out.splitlines()
        assert header.split()[:6] == [
            "NAME",
            "ARCHIVE",
            "TRIGGER",
            "REPLAYED",
            "SUCCEEDED",
            "REASON",
        ]
        assert row.split()[:5] == ["from-cli", "everything", "orders", "50/50", "True"]

        for args, words in [
            (("--from", "1h", "--to", "2h"), "is not after --from"),
            (("--from", "yesterday"), "neither 'now', a time ago"),
            (("--from", "1h", "--rate", "0"), "--rate"),
        ]:
            code, _, err = await run_cli(mesh, "replay", "broker/default", *args)
            assert code == 2 and words in err, err
        for target, args, words in [
            ("broker/nope", (), "error: broker 'nope' does not exist in namespace 'default'"),
            ("broker/default", ("--trigger", "nope"), "spec.trigger"),
            ("broker/default", ("--archive", "nope"), "has no archive 'nope'"),
        ]:
            code, _, err = await run_cli(mesh, "replay", target, "--from", "1h", *args)
            assert code == 1 and words in err and "Traceback" not in err, err


async def test_cemesh_apply_wait_counts_ready_objects_and_names_those_that_are_not(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sub:
        manifest = tmp_path / "mesh.yaml"
        manifest.write_text(mesh_manifest({"orders": sub.url}))
        code, out, err = await run_cli(mesh, "apply", "-f", str(manifest), "--wait")
        assert code == 0, err
        assert len(out.splitlines()) == 3 and err.splitlines()[-1] == "Ready: 3/3", err

        lost = tmp_path / "lost.yaml"
        lost.write_text(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: lost\n"
            f"spec:\n  broker: missing\n  subscriber:\n    uri: {sub.url}\n"
        )
        code, _, err = await run_cli(mesh, "apply", "-f", str(lost), "--wait", "1")
        assert code == 1, err
        assert "Ready: 0/1" in err and "error: 1 of 1 not Ready after 1 s: trigger/lost:" in err
        assert "missing" in err.splitlines()[-1], err


async def test_two_replicas_on_one_store_replay_each_event_once(tmp_path: Path) -> None:
    """Both replicas serve the Trigger and see the Replay; the slot lease lets one run it."""
    async with RecordingSubscriber() as sub, running_cemesh(tmp_path, resync_interval=0.2) as a:
        await a.apply(mesh_manifest({"orders": sub.url}))
        await send_events(a, 200)
        await sub.wait_for(200)
        await archived(a, 200)
        sub.received.clear()
        async with running_cemesh(tmp_path, resync_interval=0.2) as b:
            trigger = (await a.client.get(TRIGGERS + "/orders")).json()["metadata"]["uid"]
            async with asyncio.timeout(20):
                while trigger not in b.runtime.dispatcher.live:  # noqa: ASYNC110 (b's own sync)
                    await asyncio.sleep(0.05)
            created = await b.client.post(REPLAYS, json=replay("once", rate=200))
            assert created.status_code == 201, created.text
            status = await finished(a, "once")
            await sub.wait_for(200)
            ids = replayed(sub.received, "once")
            assert Counter(ids) == Counter(f"e-{i}" for i in range(200)), Counter(ids).most_common(
                3
            )
            assert status["replayed"] == 200


async def test_a_deleted_archives_group_is_deleted_on_a_durable_bus(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    topic = broker_topic("default", "default")
    raw = redis.Redis.from_url(redis_server.url)
    try:
        async with (
            running_cemesh(
                tmp_path, default_channel="RedisStreamChannel", redis_url=redis_server.url
            ) as mesh,
            RecordingSubscriber() as sub,
        ):
            await mesh.apply(mesh_manifest({"orders": sub.url}))
            archive = (await mesh.client.get(f"{ARCHIVES}/everything")).json()
            group = archive_group(archive["metadata"]["uid"])
            groups = {g["name"].decode() for g in await raw.xinfo_groups(topic)}
            trigger = (await mesh.client.get(TRIGGERS + "/orders")).json()["metadata"]["uid"]
            assert {group, trigger_group(trigger)} <= groups  # (the server is shared by tests)
            assert (await mesh.client.delete(f"{ARCHIVES}/everything")).status_code == 200
            left = {g["name"].decode() for g in await raw.xinfo_groups(topic)}
            assert left == groups - {group}  # the Trigger's stays
    finally:
        await raw.aclose()
