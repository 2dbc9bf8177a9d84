"""Engines for the store's database, and the one place driver errors become cemesh errors.

SQLite (the embedded default) and PostgreSQL are both served. For SQLite several processes may
share one file: WAL lets readers run beside a writer, a busy timeout makes a writer wait for the
lock instead of failing, and write transactions start with ``BEGIN IMMEDIATE`` so that two
writers queue at BEGIN rather than deadlocking when both upgrade a read lock (which SQLite
reports at once as "database is locked", without waiting). Reads are single statements, each
atomic on its own, and run without a BEGIN (:func:`reader`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker.core.errors import Conflict, StoreError

# Execution option naming how a transaction begins on SQLite (ignored elsewhere); empty: no
# BEGIN, each statement its own transaction.
SQLITE_BEGIN = "cemesh_sqlite_begin"
BEGIN_WRITE = "BEGIN IMMEDIATE"
NO_BEGIN = ""

SQLITE_BUSY_TIMEOUT_MS = 10_000

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}

_MISSING_SCHEMA_HINT = "the store's tables are missing; run `cemesh db upgrade` first"


def async_url(database_url: str) -> URL:
    """The URL with an asyncio driver: ``postgresql://`` and ``sqlite://`` get asyncpg/aiosqlite."""
    try:
        url = make_url(database_url)
    except exc.ArgumentError as error:
        raise StoreError(f"invalid database URL: {error}", retryable=False) from error
    driver = _ASYNC_DRIVERS.get(url.drivername)
    return url.set(drivername=driver) if driver else url


def make_engine(database_url: str) -> AsyncEngine:
    """An async engine for ``database_url``, with the SQLite settings described above."""
    url = async_url(database_url)
    options: dict[str, Any] = {
        "json_serializer": lambda value: orjson.dumps(value).decode(),
        "json_deserializer": orjson.loads,
    }
    if url.get_backend_name() == "postgresql":
        # A replica outlives database restarts; check pooled connections before use.
        options["pool_pre_ping"] = True
    try:
        engine = create_async_engine(url, **options)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise StoreError(f"cannot use database URL {url!r}: {error}", retryable=False) from error
    if url.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it skips it before SELECT and DDL) and emit
        # it ourselves in _on_begin, so every transaction is a real one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # Durable at each checkpoint, and safe against corruption, in WAL mode.
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        begin = connection.get_execution_options().get(SQLITE_BEGIN, "BEGIN")
        if begin:
            connection.exec_driver_sql(begin)


def reader(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) for connections that run ONE read statement each: on SQLite
    without a BEGIN, since a single SELECT is atomic by itself and aiosqlite makes every
    statement a round trip to its thread (a BEGIN made a read of one object about twice as
    dear, measured in ``cemesh apply``, issue 14). A read of several statements that must agree
    needs a transaction: use the plain engine."""
    return engine.execution_options(**{SQLITE_BEGIN: NO_BEGIN})


def writer(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) whose transactions take the write lock at BEGIN on SQLite."""
    return engine.execution_options(**{SQLITE_BEGIN: BEGIN_WRITE})


@contextmanager
def translated(conflict: str | None = None) -> Iterator[None]:
    """Map SQLAlchemy and driver errors raised inside to broker.core.errors, keeping the cause.

    ``conflict`` is the message of the Conflict that a unique-constraint violation becomes.
    """
    try:
        yield
    except exc.IntegrityError as error:
        raise Conflict(conflict or f"conflicting write: {_reason(error)}") from error
    except exc.DBAPIError as error:
        reason = _reason(error)
        if _is_missing_schema(reason):
            raise StoreError(f"{_MISSING_SCHEMA_HINT} ({reason})", retryable=False) from error
        retryable = isinstance(error, exc.OperationalError | exc.InterfaceError) or bool(
            error.connection_invalidated
        )
        raise StoreError(f"database error: {reason}", retryable=retryable) from error
    except (exc.TimeoutError, exc.DisconnectionError) as error:
        raise StoreError(f"database unavailable: {error}", retryable=True) from error
    except exc.SQLAlchemyError as error:
        raise StoreError(f"database error: {error}", retryable=False) from error
    except OSError as error:
        # asyncpg raises these itself (TimeoutError included) when it cannot reach the server.
        raise StoreError(f"database unreachable: {error!r}", retryable=True) from error


def _reason(error: exc.DBAPIError) -> str:
    """The driver's message, without SQLAlchemy's statement dump and links."""
    return str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)


def _is_missing_schema(reason: str) -> bool:
    lowered = reason.lower()
    return "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered)
