"""The SQL schema of the resource store, as SQLAlchemy 2.0 declarative models.

These models are the single description of the schema: the Alembic migrations in ``migrations/``
must produce exactly this (``tests/integration/test_migrations.py`` compares them). They are
private to :mod:`broker.controlplane.store`; callers see plain resource dicts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

# Deterministic constraint names: SQLite batch migrations recreate tables and must be able to
# name what they drop, and autogenerate compares names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON, not JSONB, on PostgreSQL too: it keeps the text as written, so objects come back with
# their keys in the order they were stored (apiVersion, kind, metadata, spec, status), the same
# on both databases. Nothing queries inside the document; the key has its own columns.
JSON_DOCUMENT: TypeEngine[dict[str, object]] = JSON()

# The one row of the revision counter table.
REVISION_ROW_ID = 1


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ResourceRow(Base):
    """One stored resource. The key columns are copies of fields of ``body`` for indexing."""

    __tablename__ = "resources"

    api_group: Mapped[str] = mapped_column(String(253), primary_key=True)
    kind: Mapped[str] = mapped_column(String(63), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    resource_version: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[dict[str, object]] = mapped_column(JSON_DOCUMENT)

    # Listing is ordered by namespace then name (the primary key starts with group and kind).
    __table_args__ = (Index("ix_resources_namespace_name", "namespace", "name"),)


class RevisionRow(Base):
    """The global revision counter: one row, bumped by every write inside its transaction.

    A row (not a sequence) on purpose: the row lock serialises writers, so revisions are handed
    out in commit order and a replica that saw revision N has seen every write up to N.
    """

    __tablename__ = "revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class LeaseRow(Base):
    """A named lease for leader election among replicas (used by a later feature)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    holder: Mapped[str] = mapped_column(String(253))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SigningKeyRow(Base):
    """One of cemesh's token-signing keys (``broker/controlplane/signing_keys.py``).

    In a table of its own, not a Secret: nothing reaches it through the resource API, so no
    API user (``edit`` included) can read the private key or slip in a key of their own.
    """

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_key: Mapped[str] = mapped_column(Text)  # PKCS#8 PEM
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    activates_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # signs from then


# A 64-bit key that SQLite still makes its rowid (autoincrement) from: SQLite only does that for
# a column declared exactly INTEGER PRIMARY KEY.
ROW_ID: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class ArchivedEventRow(Base):
    """One event an Archive kept (``broker/controlplane/store/archive.py``).

    Not a resource: events are many, written by the archive writer, read by replays, deleted by
    retention; none of that moves the store's revision. ``event_key`` is a digest of the event's
    source and id, so a redelivered event is kept once per archive.
    """

    __tablename__ = "archived_events"

    id: Mapped[int] = mapped_column(ROW_ID, primary_key=True, autoincrement=True)
    archive_uid: Mapped[str] = mapped_column(String(36))
    accepted_us: Mapped[int] = mapped_column(BigInteger)  # when the Broker accepted it
    event_key: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)  # broker.core.events.encode_envelope

    __table_args__ = (
        UniqueConstraint("archive_uid", "event_key"),
        Index("ix_archived_events_archive_uid_accepted_us_id", "archive_uid", "accepted_us", "id"),
    )


class ReplayProgressRow(Base):
    """How far one Replay got: the cursor (the last archived event done) and its counts."""

    __tablename__ = "replay_progress"

    replay_uid: Mapped[str] = mapped_column(String(36), primary_key=True)
    high_water: Mapped[int] = mapped_column(BigInteger)  # the last archived row it replays
    cursor_us: Mapped[int] = mapped_column(BigInteger)
    cursor_id: Mapped[int] = mapped_column(BigInteger)
    replayed: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    finished: Mapped[bool] = mapped_column(Boolean)
