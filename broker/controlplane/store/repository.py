"""The resource store: Kubernetes-shaped resource dicts kept in SQL, with versions.

Every write is one transaction that first bumps the global revision counter (one row). That row
lock is the first lock every writer takes, so writers are serialised, cannot deadlock, and hand
out revisions in commit order; a replica polling :meth:`Store.revision` and seeing it move knows
there is something new. ``metadata.resourceVersion`` of an object is the revision of its last
write. Failed writes roll back, counter included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, exc, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from broker.controlplane.resource_store import StatusChange
from broker.controlplane.store import objects
from broker.controlplane.store.engine import make_engine, reader, translated, writer
from broker.controlplane.store.migrate import migrate_engine
from broker.controlplane.store.models import REVISION_ROW_ID, LeaseRow, ResourceRow, RevisionRow
from broker.controlplane.store.objects import Key
from broker.core.errors import Conflict, NotFound, StoreError


class Store:
    """Resources by (group, kind, namespace, name). Safe for concurrent use by many tasks.

    The SQL implementation of :class:`broker.controlplane.resource_store.ResourceStore`.
    """

    def __init__(self, database_url: str, *, plural_of: objects.PluralOf | None = None) -> None:
        self._database_url = database_url
        self._plural_of = plural_of  # names objects in errors as the API does (the catalog's)
        self._engine: AsyncEngine | None = None
        self._reading: AsyncEngine | None = None  # single-statement reads (engine.reader)
        self._writer: AsyncEngine | None = None
        self._local_writers: asyncio.Lock | None = None  # SQLite: see _write_connection

    async def open(self, *, migrate: bool = True) -> None:
        """Connect (lazily, through a pool); with ``migrate``, upgrade the schema to head first."""
        if self._engine is not None:
            return
        engine = make_engine(self._database_url)
        try:
            if migrate:
                await migrate_engine(engine, "upgrade", "head")
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._reading, self._writer = engine, reader(engine), writer(engine)
        sqlite = engine.url.get_backend_name() == "sqlite"
        self._local_writers = asyncio.Lock() if sqlite else None

    async def close(self) -> None:
        """Close every pooled connection. Idempotent."""
        engine, self._engine, self._reading, self._writer = self._engine, None, None, None
        if engine is not None:
            await engine.dispose()

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, api_group: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """The stored object; NotFound if there is none."""
        key = Key(api_group, kind, namespace, name)
        with translated():
            async with self._reader().connect() as conn:
                return await _fetch(conn, key, self._plural_of)

    async def list(
        self, api_group: str | None = None, kind: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored objects matching every given filter, sorted by namespace then name."""
        conditions: list[ColumnElement[bool]] = []
        if api_group is not None:
            conditions.append(ResourceRow.api_group == api_group)
        if kind is not None:
            conditions.append(ResourceRow.kind == kind)
        if namespace is not None:
            conditions.append(ResourceRow.namespace == namespace)
        query = (
            select(ResourceRow.body)
            .where(*conditions)
            .order_by(
                ResourceRow.namespace, ResourceRow.name, ResourceRow.api_group, ResourceRow.kind
            )
        )
        with translated():
            async with self._reader().connect() as conn:
                return list((await conn.execute(query)).scalars())

    async def revision(self) -> int:
        """The global revision: it moves on every create, replace, status change and delete."""
        query = select(RevisionRow.value).where(RevisionRow.id == REVISION_ROW_ID)
        with translated():
            async with self._reader().connect() as conn:
                value = (await conn.execute(query)).scalar_one_or_none()
        if value is None:
            raise StoreError("the revision counter row is missing", retryable=False)
        return int(value)

    async def next_revision(self, since: int, within: float) -> int:
        """The revision after ``within`` seconds. A row that other replicas move tells no one
        that it moved, so the SQL store is polled: once per ``within`` (the controller's
        resync interval); ``since`` only matters to stores that are told (Kubernetes')."""
        await asyncio.sleep(within)
        return await self.revision()

    # -- writes --------------------------------------------------------------------------------

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object: uid, generation 1, resourceVersion, creationTimestamp assigned.

        Conflict if an object with the same key exists (also when another process races us).
        """
        body = objects.normalized(obj)
        key = objects.key_of(body)
        with translated(conflict=f"{key.describe(self._plural_of)} already exists"):
            async with self._write_connection() as conn:
                revision = await _bump(conn)
                objects.prepare_new(body, revision)
                await conn.execute(_INSERT, _row(key, body, revision))
                await conn.commit()
        return body

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an object's content and metadata; its status is kept (see update_status).

        NotFound if absent; Conflict if ``metadata.resourceVersion`` is given and stale. The
        generation moves only when the content (``spec``, or ``data`` of a Secret) changed.
        """
        body = objects.normalized(obj)
        key = objects.key_of(body)
        with translated():
            async with self._write_connection() as conn:
                revision = await _bump(conn)
                stored = await _fetch(conn, key, self._plural_of)
                if objects.is_stale(body, stored):
                    name = key.describe(self._plural_of)
                    raise Conflict(
                        f"Operation cannot be fulfilled on {name}: the object has been modified; "
                        "please apply your changes to the latest version and try again"
                    )
                objects.prepare_replacement(stored, body, revision)
                await _overwrite(conn, key, body, revision)
                await conn.commit()
        return body

    async def update_status(
        self, api_group: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Set an object's status. No generation bump; a new resourceVersion only on change."""
        status = objects.json_copy(status, "status")
        key = Key(api_group, kind, namespace, name)
        with translated():
            # Reconcilers write the same status over and over: answer those without a write
            # transaction (which would take the global write lock).
            async with self._reader().connect() as conn:
                stored = await _fetch(conn, key, self._plural_of)
            if stored.get("status") == status:
                return stored
            async with self._write_connection() as conn:
                revision = await _bump(conn)
                stored = await _fetch(conn, key, self._plural_of)
                if stored.get("status") == status:
                    return stored  # raced with an identical write; rolls back the bump
                stored["status"] = status
                stored["metadata"]["resourceVersion"] = str(revision)
                await _overwrite(conn, key, stored, revision)
                await conn.commit()
        return stored

    async def update_statuses(self, changes: Sequence[StatusChange]) -> int:
        """Set several objects' statuses in one write transaction; how many changed.

        As :meth:`update_status` for each, but one transaction and one commit for all: a
        commit per object made a start with 2,000 Triggers take ~20 s more (issue 14). Each
        changed object gets a revision of its own (so the revision moves by the number
        written); unchanged and absent ones (deleted meanwhile) are skipped.
        """
        if not changes:
            return 0
        with translated():
            async with self._write_connection() as conn:
                # The first bump takes the global write lock, as every write does, before
                # anything is read; the objects of the batch are then read in one query and
                # the changed ones written in one executemany, with the revisions the bumps
                # hand out (one each). Statement by statement, a status cost three round trips
                # to the database: most of a start with 10,000 Triggers (issue 14).
                first = await _bump(conn)
                stored_by_key = await _fetch_many(
                    conn, [Key(c.api_group, c.kind, c.namespace, c.name) for c in changes]
                )
                writes: list[tuple[Key, dict[str, Any]]] = []
                for change in changes:
                    key = Key(change.api_group, change.kind, change.namespace, change.name)
                    stored = stored_by_key.get(key)
                    if stored is None:
                        continue  # deleted meanwhile
                    status = objects.json_copy(change.status, "status")
                    if stored.get("status") == status:
                        continue
                    stored["status"] = status
                    writes.append((key, stored))
                if not writes:
                    return 0  # nothing changed: the bump rolls back
                if len(writes) > 1:
                    await _bump(conn, len(writes) - 1)
                for offset, (_, stored) in enumerate(writes):
                    stored["metadata"]["resourceVersion"] = str(first + offset)
                await _overwrite_many(conn, writes, first)
                await conn.commit()
        return len(writes)

    async def delete(self, api_group: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Remove an object and return it as it was; NotFound if absent."""
        key = Key(api_group, kind, namespace, name)
        with translated():
            async with self._write_connection() as conn:
                await _bump(conn)
                result = await conn.execute(_DELETE, _key_params(key))
                body = result.scalar_one_or_none()
                if body is None:
                    raise NotFound(f"{key.describe(self._plural_of)} not found")
                await conn.commit()
        return body

    # -- leases --------------------------------------------------------------------------------

    async def claim_lease(
        self, name: str, holder: str, expires_at: datetime, *, prune_prefix: str = ""
    ) -> bool:
        """Take lease ``name`` for ``holder``: the primary key lets exactly one INSERT succeed
        across processes, on SQLite and PostgreSQL alike. Leases are not resources: claiming
        one does not move the revision (else every replica would resync on every claim)."""
        now = datetime.now(UTC)
        # The pooled writer engine: on SQLite its transactions take the write lock at BEGIN, so
        # concurrent claims queue instead of failing with "database is locked".
        with translated():
            async with self._write_connection() as conn:
                try:
                    await conn.execute(
                        insert(LeaseRow).values(name=name, holder=holder, expires_at=expires_at)
                    )
                except exc.IntegrityError:
                    await conn.rollback()
                    return False  # another claimant (or an earlier run of this one) has it
                if prune_prefix:  # old leases (of deleted owners too) are removed by winners
                    await conn.execute(
                        delete(LeaseRow).where(
                            LeaseRow.name.startswith(prune_prefix), LeaseRow.expires_at < now
                        )
                    )
                await conn.commit()
        return True

    # -- plumbing ------------------------------------------------------------------------------

    def _reader(self) -> AsyncEngine:
        """The engine for connections that run one read statement each (see engine.reader)."""
        if self._reading is None:
            raise StoreError("the store is not open", retryable=False)
        return self._reading

    def _writing(self) -> AsyncEngine:
        if self._writer is None:
            raise StoreError("the store is not open", retryable=False)
        return self._writer

    @contextlib.asynccontextmanager
    async def _write_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one write transaction. On SQLite this process's writers take
        turns here first: SQLite lets one writer in at a time and has the others poll its lock
        with growing sleeps (busy_timeout), so 64 concurrent API writes each waited out sleeps
        of up to 100 ms (issue 14). Other processes still queue through busy_timeout."""
        engine = self._writing()
        async with self._local_writers or contextlib.nullcontext(), engine.connect() as conn:
            yield conn


# The statements of the hot paths, built once with named parameters: built per call (with the
# cache key SQLAlchemy derives from each new statement), they were a third of the CPU of reading
# one object (issue 14).
_BY_KEY = (
    ResourceRow.api_group == bindparam("key_group"),
    ResourceRow.kind == bindparam("key_kind"),
    ResourceRow.namespace == bindparam("key_namespace"),
    ResourceRow.name == bindparam("key_name"),
)
_SELECT_BODY = select(ResourceRow.body).where(*_BY_KEY)
_INSERT = insert(ResourceRow)
_OVERWRITE = (
    update(ResourceRow)
    .where(*_BY_KEY)
    .values(resource_version=bindparam("new_version"), body=bindparam("new_body"))
)
_DELETE = delete(ResourceRow).where(*_BY_KEY).returning(ResourceRow.body)
_BUMP = (
    update(RevisionRow)
    .where(RevisionRow.id == REVISION_ROW_ID)
    .values(value=RevisionRow.value + bindparam("by"))
    .returning(RevisionRow.value)
)


def _key_params(key: Key) -> dict[str, Any]:
    """The parameters of :data:`_BY_KEY` for ``key``."""
    return {
        "key_group": key.api_group,
        "key_kind": key.kind,
        "key_namespace": key.namespace,
        "key_name": key.name,
    }


def _row(key: Key, body: dict[str, Any], revision: int) -> dict[str, Any]:
    return {
        "api_group": key.api_group,
        "kind": key.kind,
        "namespace": key.namespace,
        "name": key.name,
        "uid": body["metadata"]["uid"],
        "resource_version": revision,
        "body": body,
    }


async def _bump(conn: AsyncConnection, by: int = 1) -> int:
    """Take the global write lock by moving the revision counter (``by`` revisions at once);
    the new revision."""
    result = await conn.execute(_BUMP, {"by": by})
    value = result.scalar_one_or_none()
    if value is None:
        raise StoreError("the revision counter row is missing", retryable=False)
    return int(value)


async def _fetch(
    conn: AsyncConnection, key: Key, plural_of: objects.PluralOf | None = None
) -> dict[str, Any]:
    result = await conn.execute(_SELECT_BODY, _key_params(key))
    body = result.scalar_one_or_none()
    if body is None:
        raise NotFound(f"{key.describe(plural_of)} not found")
    return body


# Keys per SELECT of _fetch_many: far below SQLite's and PostgreSQL's bound-parameter limits.
_FETCH_CHUNK = 500


async def _fetch_many(conn: AsyncConnection, keys: Sequence[Key]) -> dict[Key, dict[str, Any]]:
    """The stored bodies of those of ``keys`` that exist, by key: one query per namespace and
    kind (and per :data:`_FETCH_CHUNK` names)."""
    names_by_scope: dict[tuple[str, str, str], list[str]] = {}
    for key in keys:
        names_by_scope.setdefault((key.api_group, key.kind, key.namespace), []).append(key.name)
    found: dict[Key, dict[str, Any]] = {}
    for (api_group, kind, namespace), names in names_by_scope.items():
        for start in range(0, len(names), _FETCH_CHUNK):
            chunk = names[start : start + _FETCH_CHUNK]
            result = await conn.execute(
                select(ResourceRow.name, ResourceRow.body).where(
                    ResourceRow.api_group == api_group,
                    ResourceRow.kind == kind,
                    ResourceRow.namespace == namespace,
                    ResourceRow.name.in_(chunk),
                )
            )
            for name, body in result:
                found[Key(api_group, kind, namespace, name)] = body
    return found


async def _overwrite_many(
    conn: AsyncConnection, writes: Sequence[tuple[Key, dict[str, Any]]], first_revision: int
) -> None:
    """:func:`_overwrite` for each of ``writes``, the n-th with revision ``first_revision + n``,
    in one executemany."""
    await conn.execute(
        _OVERWRITE,
        [
            {**_key_params(key), "new_version": first_revision + offset, "new_body": body}
            for offset, (key, body) in enumerate(writes)
        ],
    )


async def _overwrite(conn: AsyncConnection, key: Key, body: dict[str, Any], revision: int) -> None:
    await conn.execute(_OVERWRITE, {**_key_params(key), "new_version": revision, "new_body": body})
