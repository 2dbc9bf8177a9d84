"""The resource store's whole API, on SQLite and on a real PostgreSQL (``database_url``).

Kubernetes API semantics the control plane relies on: server-assigned uid, generation,
resourceVersion and creationTimestamp; generation counts spec changes only, so that
``status.observedGeneration`` (K163) tells whether the latest spec has been acted on;
optimistic concurrency through resourceVersion; a global revision replicas poll for changes.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from broker.controlplane.resource_store import StatusChange
from broker.controlplane.store import Store
from broker.core.errors import Conflict, InvalidResource, NotFound, StoreError

EVENTING = "eventing.knative.dev"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def broker(name: str = "default", namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{EVENTING}/v1",
        "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "a"}},
        "spec": dict(spec),
    }


def secret(name: str = "token", namespace: str = "ns", **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": dict(data),
    }


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# -- create / get ------------------------------------------------------------------------------


async def test_create_assigns_uid_generation_resource_version_and_timestamp(store: Store) -> None:
    created = await store.create(broker(config={"x": 1}))
    meta = created["metadata"]
    assert UUID.match(meta["uid"])
    assert meta["generation"] == 1
    assert meta["resourceVersion"] == str(await store.revision())
    assert TIMESTAMP.match(meta["creationTimestamp"])
    assert meta["labels"] == {"team": "a"}
    assert created["spec"] == {"config": {"x": 1}}
    assert created["status"] == {}


async def test_create_keeps_given_status_and_defaults_namespace(store: Store) -> None:
    obj = broker()
    del obj["metadata"]["namespace"]
    obj["status"] = {"observedGeneration": 0}
    created = await store.create(obj)
    assert created["metadata"]["namespace"] == "default"
    assert created["status"] == {"observedGeneration": 0}


async def test_create_neither_mutates_input_nor_shares_it(store: Store) -> None:
    obj = broker(config={"x": 1})
    created = await store.create(obj)
    assert "uid" not in obj["metadata"]
    obj["spec"]["config"]["x"] = 2
    created["spec"]["config"]["x"] = 3
    assert (await store.get(EVENTING, "Broker", "ns", "default"))["spec"] == {"config": {"x": 1}}


async def test_get_returns_the_object_as_created(store: Store) -> None:
    created = await store.create(secret(key="dmFsdWU="))
    assert await store.get("", "Secret", "ns", "token") == created


async def test_create_of_an_existing_key_is_a_conflict_naming_the_object(store: Store) -> None:
    await store.create(broker())
    with pytest.raises(Conflict) as raised:
        await store.create(broker(other=True))
    assert raised.value.message == 'brokers.eventing.knative.dev "default" already exists'
    assert isinstance(raised.value.__cause__, sa_exc.IntegrityError)
    with pytest.raises(Conflict, match=r'^secrets "token" already exists$'):
        await store.create(secret())
        await store.create(secret())


async def test_key_is_group_kind_namespace_name_without_version(store: Store) -> None:
    await store.create(broker())
    await store.create(broker(namespace="other"))
    await store.create({**broker(), "kind": "Trigger"})
    await store.create({**broker(), "apiVersion": "messaging.knative.dev/v1"})
    with pytest.raises(Conflict):
        await store.create({**broker(), "apiVersion": f"{EVENTING}/v1beta1"})
    assert len(await store.list()) == 4


async def test_get_of_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r'^brokers.eventing.knative.dev "nope" not found$'):
        await store.get(EVENTING, "Broker", "ns", "nope")


async def test_create_rejects_objects_without_a_name_or_kind(store: Store) -> None:
    nameless = broker()
    del nameless["metadata"]["name"]
    with pytest.raises(InvalidResource) as raised:
        await store.create(nameless)
    assert raised.value.field == "metadata.name"
    with pytest.raises(InvalidResource):
        await store.create({"apiVersion": "v1", "metadata": {"name": "x"}})


# -- list --------------------------------------------------------------------------------------


async def test_list_filters_by_group_kind_namespace_and_sorts_by_namespace_then_name(
    store: Store,
) -> None:
    for namespace, name in [("b", "y"), ("a", "z"), ("b", "x"), ("a", "a")]:
        await store.create(broker(name, namespace))
    await store.create(secret("s", "a"))

    def keys(objs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return [(o["metadata"]["namespace"], o["metadata"]["name"], o["kind"]) for o in objs]

    assert keys(await store.list()) == [
        ("a", "a", "Broker"),
        ("a", "s", "Secret"),
        ("a", "z", "Broker"),
        ("b", "x", "Broker"),
        ("b", "y", "Broker"),
    ]
    assert keys(await store.list(EVENTING, "Broker", "b")) == [
        ("b", "x", "Broker"),
        ("b", "y", "Broker"),
    ]
    assert keys(await store.list(api_group="")) == [("a", "s", "Secret")]
    assert keys(await store.list(kind="Secret", namespace="b")) == []


# -- replace -----------------------------------------------------------------------------------


async def test_replace_of_spec_bumps_generation_for_observed_generation_K163(store: Store) -> None:
    created = await store.create(broker(config={"x": 1}))
    changed = {**created, "spec": {"config": {"x": 2}}}
    replaced = await store.replace(changed)
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )
    assert await store.get(EVENTING, "Broker", "ns", "default") == replaced


async def test_replace_of_metadata_only_keeps_generation_K163(store: Store) -> None:
    created = await store.create(broker(config={"x": 1}))
    relabelled = json.loads(json.dumps(created))
    relabelled["metadata"]["labels"] = {"team": "b"}
    relabelled["metadata"]["annotations"] = {"note": "hi"}
    replaced = await store.replace(relabelled)
    assert replaced["metadata"]["generation"] == 1
    assert replaced["metadata"]["labels"] == {"team": "b"}
    assert replaced["metadata"]["annotations"] == {"note": "hi"}
    assert replaced["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]


async def test_replace_of_secret_data_bumps_generation(store: Store) -> None:
    created = await store.create(secret(key="YQ=="))
    same = await store.replace(secret(key="YQ=="))
    assert same["metadata"]["generation"] == 1
    changed = await store.replace(secret(key="Yg=="))
    assert changed["metadata"]["generation"] == 2
    assert changed["data"] == {"key": "Yg=="}
    assert changed["metadata"]["uid"] == created["metadata"]["uid"]


async def test_replace_keeps_uid_creation_timestamp_and_the_stored_status(store: Store) -> None:
    created = await store.create(broker())
    await store.update_status(EVENTING, "Broker", "ns", "default", {"observedGeneration": 1})
    forged = broker(config={"y": 1})
    forged["metadata"].update(uid="forged", creationTimestamp="2000-01-01T00:00:00Z")
    forged["status"] = {"observedGeneration": 99}
    replaced = await store.replace(forged)
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert replaced["status"] == {"observedGeneration": 1}


async def test_replace_with_a_stale_resource_version_is_a_conflict(store: Store) -> None:
    created = await store.create(broker())
    first = await store.replace({**created, "spec": {"a": 1}})  # carries the current version
    revision = await store.revision()
    with pytest.raises(Conflict, match="the object has been modified"):
        await store.replace({**created, "spec": {"b": 2}})  # carries the old version
    assert await store.revision() == revision  # a failed write leaves no trace
    assert await store.get(EVENTING, "Broker", "ns", "default") == first
    unconditional = broker(c=3)  # no resourceVersion: last write wins
    assert (await store.replace(unconditional))["spec"] == {"c": 3}


async def test_replace_of_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.replace(broker())
    assert await store.revision() == 0


# -- update_status -----------------------------------------------------------------------------


async def test_update_status_writes_status_only_without_generation_bump(store: Store) -> None:
    created = await store.create(broker(config={"x": 1}))
    status = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
    updated = await store.update_status(EVENTING, "Broker", "ns", "default", status)
    assert updated["status"] == status
    assert updated["spec"] == created["spec"]
    assert updated["metadata"]["generation"] == 1
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert await store.get(EVENTING, "Broker", "ns", "default") == updated


async def test_update_status_with_the_same_status_changes_nothing(store: Store) -> None:
    await store.create(broker())
    first = await store.update_status(EVENTING, "Broker", "ns", "default", {"ready": True})
    revision = await store.revision()
    again = await store.update_status(EVENTING, "Broker", "ns", "default", {"ready": True})
    assert again == first
    assert await store.revision() == revision


async def test_update_statuses_writes_the_changed_ones_in_one_go_each_its_own_version(
    store: Store,
) -> None:
    for name in ("a", "b", "c"):
        await store.create(broker(name))
    await store.update_status(EVENTING, "Broker", "ns", "c", {"ready": True})
    revision = await store.revision()
    written = await store.update_statuses(
        [
            StatusChange(EVENTING, "Broker", "ns", "c", {"ready": True}),  # unchanged
            StatusChange(EVENTING, "Broker", "ns", "gone", {"ready": True}),  # deleted meanwhile
            StatusChange(EVENTING, "Broker", "ns", "a", {"ready": True}),
            StatusChange(EVENTING, "Broker", "ns", "b", {"ready": False}),
        ]
    )
    assert written == 2
    # The revision moves by what was written (one bump may be left over: at most one more).
    assert revision + 2 <= await store.revision() <= revision + 3
    a = await store.get(EVENTING, "Broker", "ns", "a")
    b = await store.get(EVENTING, "Broker", "ns", "b")
    assert (a["status"], b["status"]) == ({"ready": True}, {"ready": False})
    versions = {a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]}
    assert len(versions) == 2 and all(int(v) > revision for v in versions)
    assert a["metadata"]["generation"] == 1


async def test_update_statuses_with_nothing_changed_moves_no_revision(store: Store) -> None:
    await store.create(broker())
    await store.update_status(EVENTING, "Broker", "ns", "default", {"ready": True})
    revision = await store.revision()
    same = [StatusChange(EVENTING, "Broker", "ns", "default", {"ready": True})]
    assert await store.update_statuses(same) == 0
    assert await store.update_statuses([]) == 0
    assert await store.revision() == revision


async def test_update_statuses_refuses_a_status_that_is_not_json(store: Store) -> None:
    await store.create(broker())
    with pytest.raises(InvalidResource):
        await store.update_statuses(
            [StatusChange(EVENTING, "Broker", "ns", "default", {"bad": {1, 2}})]
        )
    assert (await store.get(EVENTING, "Broker", "ns", "default")).get("status") in (None, {})


async def test_update_status_of_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_status(EVENTING, "Broker", "ns", "nope", {"ready": True})


# -- delete ------------------------------------------------------------------------------------


async def test_delete_returns_the_object_and_removes_it(store: Store) -> None:
    await store.create(broker())
    current = await store.update_status(EVENTING, "Broker", "ns", "default", {"ready": True})
    assert await store.delete(EVENTING, "Broker", "ns", "default") == current
    with pytest.raises(NotFound):
        await store.get(EVENTING, "Broker", "ns", "default")
    with pytest.raises(NotFound):
        await store.delete(EVENTING, "Broker", "ns", "default")
    recreated = await store.create(broker())
    assert recreated["metadata"]["uid"] != current["metadata"]["uid"]


# -- revision ----------------------------------------------------------------------------------


async def test_revision_moves_on_every_write_and_only_on_writes(store: Store) -> None:
    seen = [await store.revision()]

    async def moved() -> None:
        seen.append(await store.revision())
        assert seen[-1] > seen[-2]

    created = await store.create(broker())
    await moved()
    assert created["metadata"]["resourceVersion"] == str(seen[-1])
    await store.replace({**created, "spec": {"a": 1}})
    await moved()
    await store.update_status(EVENTING, "Broker", "ns", "default", {"ready": True})
    await moved()
    await store.delete(EVENTING, "Broker", "ns", "default")
    await moved()
    await store.list()
    with pytest.raises(NotFound):
        await store.get(EVENTING, "Broker", "ns", "default")
    with pytest.raises(NotFound):
        await store.delete(EVENTING, "Broker", "ns", "default")
    assert await store.revision() == seen[-1]


# -- several stores / processes on one database ------------------------------------------------


async def test_two_stores_on_one_database_see_each_others_writes(
    store: Store, database_url: str
) -> None:
    other = Store(database_url)
    await other.open()
    try:
        created = await store.create(broker())
        assert await other.get(EVENTING, "Broker", "ns", "default") == created
        assert await other.revision() == await store.revision()
        replaced = await other.replace({**created, "spec": {"a": 1}})
        assert await store.get(EVENTING, "Broker", "ns", "default") == replaced
        with pytest.raises(Conflict):
            await store.replace({**created, "spec": {"b": 1}})
        await other.delete(EVENTING, "Broker", "ns", "default")
        assert await store.list() == []
    finally:
        await other.close()


async def test_concurrent_creates_of_one_key_give_one_success_and_conflicts(
    store: Store, database_url: str
) -> None:
    others = [Store(database_url) for _ in range(3)]
    for other in others:
        await other.open(migrate=False)
    try:
        attempts = [s.create(broker(config={"by": i})) for i, s in enumerate([store, *others] * 2)]
        results = await asyncio.gather(*attempts, return_exceptions=True)
    finally:
        for other in others:
            await other.close()
    created = [r for r in results if isinstance(r, dict)]
    assert len(created) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, dict)), results
    assert await store.get(EVENTING, "Broker", "ns", "default") == created[0]
    assert await store.revision() == 1


async def test_concurrent_replaces_at_one_resource_version_give_one_winner(
    store: Store, database_url: str
) -> None:
    created = await store.create(broker())
    other = Store(database_url)
    await other.open(migrate=False)
    try:
        results = await asyncio.gather(
            *[s.replace({**created, "spec": {"by": i}}) for i, s in enumerate([store, other] * 3)],
            return_exceptions=True,
        )
    finally:
        await other.close()
    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, dict)), results


_WORKER = """
import asyncio, json, sys
from broker.core.errors import Conflict
from broker.controlplane.resource_store import StatusChange
from broker.controlplane.store import Store

async def main(url, count):
    store = Store(url)
    await store.open(migrate=False)
    await store.revision()  # connected: now wait for the signal so both processes race
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    outcomes = []
    for i in range(count):
        obj = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": f"b{i}", "namespace": "race"}, "spec": {}}
        try:
            await store.create(obj)
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")
    await store.close()
    print(json.dumps(outcomes), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_creates_racing_from_two_processes_give_conflicts_not_errors(
    store: Store, database_url: str
) -> None:
    """Two replicas sharing one database (SQLite file in WAL mode, or PostgreSQL): this test
    process and a worker process create the same objects at the same time."""
    count = 40
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WORKER,
        database_url,
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    ours: list[str] = []
    try:
        async with asyncio.timeout(30):
            line = await worker.stdout.readline()
            assert line == b"ready\n", (await worker.communicate())[1].decode()
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
            for i in range(count):
                try:
                    await store.create(broker(f"b{i}", "race"))
                    ours.append("created")
                except Conflict:
                    ours.append("conflict")
            stdout, stderr = await worker.communicate()
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 0, stderr.decode()
    theirs = json.loads(stdout.decode().strip().splitlines()[-1])
    for i in range(count):
        assert sorted([ours[i], theirs[i]]) == ["conflict", "created"], i
    assert len(await store.list(namespace="race")) == count
    assert await store.revision() == count


# -- lifecycle and failures --------------------------------------------------------------------


async def test_using_a_store_that_is_not_open_is_a_store_error(database_url: str) -> None:
    store = Store(database_url)
    with pytest.raises(StoreError, match="not open"):
        await store.get(EVENTING, "Broker", "ns", "default")
    await store.open()
    await store.open()  # idempotent
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.create(broker())


async def test_an_unmigrated_database_says_to_run_db_upgrade(database_url: str) -> None:
    store = Store(database_url)
    await store.open(migrate=False)
    try:
        with pytest.raises(StoreError, match="cemesh db upgrade") as raised:
            await store.list()
        assert raised.value.retryable is False
        assert isinstance(raised.value.__cause__, sa_exc.DBAPIError)
    finally:
        await store.close()


@pytest.mark.postgres
async def test_an_unreachable_postgres_is_a_retryable_store_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = Store(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
    with pytest.raises(StoreError) as raised:
        await store.open()
    assert raised.value.retryable is True
    assert raised.value.__cause__ is not None
