"""Schema migrations of the store: Alembic, driven in-process with the store's own engine.

The Alembic environment lives in the ``migrations`` package (shipped in the wheel). Its Config
is built here in code, and the live connection is handed to ``migrations/env.py`` through
``config.attributes["connection"]``, so the async URL works and SQLite gets the same settings
as the store. All migrations run in one transaction; on PostgreSQL an advisory lock inside it
makes replicas that start together migrate one after the other (on SQLite the write lock taken
at BEGIN does the same).

Alembic is imported only when a migration runs: importing it costs a fifth of a second (its DDL
modules pull in every dialect), and most starts find the schema already at
:data:`migrations.HEAD`, which one read of the version table tells (:func:`at_head`), so
``cemesh serve`` skips Alembic then (issue 14: restart time).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import exc, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from broker.controlplane.store.engine import make_engine, translated, writer
from broker.core.errors import StoreError

if TYPE_CHECKING:  # a type only: Alembic is imported when a migration runs (module docstring)
    from alembic.config import Config

# __path__ rather than __file__: an editable install made before migrations/__init__.py
# existed maps the package as a namespace package, which has no __file__.
MIGRATIONS_DIR = Path(next(iter(migrations.__path__))).resolve()

# pg_advisory_xact_lock key for "a cemesh migration is running" ("cemesh" in ASCII).
_MIGRATION_LOCK_KEY = 0x63656D657368

Action = Literal["upgrade", "downgrade"]


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config for the cemesh migrations (no alembic.ini needed)."""
    from alembic.config import Config  # deferred: see the module docstring

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url is not None:
        # ConfigParser interpolates "%": URL-encoded passwords must be escaped.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema of ``database_url`` to ``revision`` (``cemesh db upgrade``)."""
    await _with_engine(database_url, "upgrade", revision)


async def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the schema of ``database_url`` to ``revision`` ("base" removes everything)."""
    await _with_engine(database_url, "downgrade", revision)


async def _with_engine(database_url: str, action: Action, revision: str) -> None:
    engine = make_engine(database_url)
    try:
        await migrate_engine(engine, action, revision)
    finally:
        await engine.dispose()


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the schema behind ``engine`` is at :data:`migrations.HEAD` (one read; False when
    there is no version table yet). Migrations commit in one transaction, so a schema seen at
    head is complete."""
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except exc.DBAPIError:  # no version table: never migrated
        return False
    return [row[0] for row in versions] == [migrations.HEAD]


async def migrate_engine(engine: AsyncEngine, action: Action, revision: str) -> None:
    """Run ``alembic upgrade|downgrade revision`` on ``engine`` in one transaction.

    An upgrade to ``head`` of a schema already there reads the version only (:func:`at_head`).
    """
    if action == "upgrade" and revision == "head":
        with translated():
            if await at_head(engine):
                return
    # Alembic keeps its running context in module globals (alembic.context, alembic.op), and
    # run_sync yields to the event loop at every statement: two migrations interleaved in one
    # process would overwrite each other's context. Other processes are kept out by the
    # database lock taken in _run_alembic.
    async with _in_process_lock(), _sqlite_file_lock(engine):
        with translated():
            async with writer(engine).connect() as conn:
                await conn.run_sync(_run_alembic, action, revision)
                await conn.commit()


@contextlib.asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """On a SQLite file, an exclusive lock on ``<file>.migrate.lock`` while migrating.

    SQLite's own write lock does not keep two processes' migrations apart: alembic reads the
    schema version before its first write, so the second replica can act on a version the first
    is changing. PostgreSQL has the advisory lock (_run_alembic); a lock file is SQLite's.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    # Opening a local lock file does not block the loop measurably; waiting for the lock would.
    with open(f"{database}.migrate.lock", "a+b") as lock_file:  # noqa: ASYNC230
        await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _in_process_lock() -> asyncio.Lock:
    # One lock per event loop: an asyncio.Lock must not be shared between loops.
    return _LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def _run_alembic(connection: Connection, action: Action, revision: str) -> None:
    from alembic import command  # deferred: see the module docstring
    from alembic.util.exc import CommandError

    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
    config = alembic_config()
    config.attributes["connection"] = connection
    try:
        if action == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)
    except CommandError as exc:
        raise StoreError(
            f"cannot {action} the schema to {revision!r}: {exc}", retryable=False
        ) from exc
