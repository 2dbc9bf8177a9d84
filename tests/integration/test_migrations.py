"""Store migrations: every Alembic revision goes up, down and up again on SQLite and on a real
PostgreSQL, and the schema at head is exactly what the ORM models describe.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

import migrations
from broker.controlplane.store import Store
from broker.controlplane.store.engine import make_engine
from broker.controlplane.store.migrate import alembic_config, at_head, downgrade, upgrade
from broker.controlplane.store.models import Base
from broker.core.errors import StoreError

T = TypeVar("T")
STORE_TABLES = {"resources", "revision", "leases"}


def revisions_in_order() -> list[tuple[str, str]]:
    """(revision, the revision below it or "base"), from the first migration to head."""
    script = ScriptDirectory.from_config(alembic_config())
    walked = list(script.walk_revisions("base", "heads"))
    assert len(script.get_heads()) == 1, "migrations must form one line"
    return [(rev.revision, rev.down_revision or "base") for rev in reversed(walked)]  # type: ignore[misc]


async def on_connection(database_url: str, fn: Callable[[Connection], T]) -> T:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def schema_diffs(conn: Connection) -> list[Any]:
    return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_migrations_form_one_line_starting_at_0001() -> None:
    revisions = revisions_in_order()
    assert revisions[0] == ("0001", "base")
    for (_, down), (previous, _) in zip(revisions[1:], revisions, strict=False):
        assert down == previous


def test_the_head_constant_names_alembics_head() -> None:
    """``migrations.HEAD`` lets a start at head skip Alembic: it must be the newest revision."""
    assert revisions_in_order()[-1][0] == migrations.HEAD, "update migrations.HEAD"


async def test_store_open_upgrades_a_schema_below_head_and_sees_it_at_head_after(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        assert not await at_head(engine)  # no version table yet
        below = revisions_in_order()[-1][1]
        await upgrade(database_url, below)
        assert not await at_head(engine)
        store = Store(database_url)
        await store.open()
        await store.close()
        assert await at_head(engine)
        assert await on_connection(database_url, current_revision) == migrations.HEAD
        await store.open()  # at head: opens without migrating
        await store.close()
    finally:
        await engine.dispose()


async def test_every_migration_goes_up_down_and_up_again(database_url: str) -> None:
    for revision, below in revisions_in_order():
        await upgrade(database_url, revision)
        assert await on_connection(database_url, current_revision) == revision
        await downgrade(database_url, below)
        expected = None if below == "base" else below
        assert await on_connection(database_url, current_revision) == expected
        await upgrade(database_url, revision)
        assert await on_connection(database_url, current_revision) == revision
    assert await on_connection(database_url, tables) >= STORE_TABLES
    await downgrade(database_url, "base")
    assert await on_connection(database_url, tables) & STORE_TABLES == set()


async def test_schema_at_head_matches_the_orm_models(database_url: str) -> None:
    await upgrade(database_url)
    assert await on_connection(database_url, schema_diffs) == []


async def test_upgrade_starts_the_revision_counter_at_zero(database_url: str) -> None:
    await upgrade(database_url)
    store = Store(database_url)
    await store.open(migrate=False)
    try:
        assert await store.revision() == 0
    finally:
        await store.close()


async def test_upgrade_is_idempotent_and_safe_when_replicas_start_together(
    database_url: str,
) -> None:
    await asyncio.gather(*(upgrade(database_url) for _ in range(3)))
    await upgrade(database_url)
    head = revisions_in_order()[-1][0]
    assert await on_connection(database_url, current_revision) == head


_MIGRATOR = """
import asyncio, sys
from broker.controlplane.store.migrate import upgrade

print("ready", flush=True)
sys.stdin.readline()
asyncio.run(upgrade(sys.argv[1]))
"""


async def test_replicas_migrating_at_once_from_two_processes_both_succeed(
    database_url: str,
) -> None:
    """Replicas run ``Store.open()`` together; the database lock makes them take turns."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _MIGRATOR,
        database_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert await process.stdout.readline() == b"ready\n"  # imported: race from here
            process.stdin.write(b"go\n")
            await process.stdin.drain()
            await upgrade(database_url)
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert await on_connection(database_url, schema_diffs) == []


async def test_store_open_migrates_and_data_survives_an_upgrade(database_url: str) -> None:
    store = Store(database_url)
    await store.open()
    try:
        created = await store.create(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {}}
        )
    finally:
        await store.close()
    await upgrade(database_url)
    store = Store(database_url)
    await store.open()
    try:
        assert await store.get("", "Secret", "default", "s") == created
    finally:
        await store.close()


async def test_an_unknown_revision_is_a_terminal_store_error(database_url: str) -> None:
    with pytest.raises(StoreError) as raised:
        await upgrade(database_url, "nonexistent")
    assert raised.value.retryable is False


@pytest.mark.postgres
async def test_postgres_fixture_is_a_real_postgresql_server(postgres_url: str) -> None:
    version = await on_connection(
        postgres_url, lambda conn: conn.execute(text("SELECT version()")).scalar_one()
    )
    assert version.startswith("PostgreSQL ")
    assert (
        postgres_url.startswith("postgresql+asyncpg://127.0.0.1:") or "@127.0.0.1:" in postgres_url
    )
