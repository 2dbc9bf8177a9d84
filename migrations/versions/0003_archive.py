"""Archives and replays: the events an Archive keeps, and how far each Replay got.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Replicas starting together on one SQLite file may both reach this step (see 0002).
    op.create_table(
        "archived_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("archive_uid", sa.String(36), nullable=False),
        sa.Column("accepted_us", sa.BigInteger(), nullable=False),
        sa.Column("event_key", sa.String(64), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_archived_events"),
        sa.UniqueConstraint(
            "archive_uid", "event_key", name="uq_archived_events_archive_uid_event_key"
        ),
        if_not_exists=True,
    )
    op.create_index(
        "ix_archived_events_archive_uid_accepted_us_id",
        "archived_events",
        ["archive_uid", "accepted_us", "id"],
        if_not_exists=True,
    )
    op.create_table(
        "replay_progress",
        sa.Column("replay_uid", sa.String(36), nullable=False),
        sa.Column("high_water", sa.BigInteger(), nullable=False),
        sa.Column("cursor_us", sa.BigInteger(), nullable=False),
        sa.Column("cursor_id", sa.BigInteger(), nullable=False),
        sa.Column("replayed", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("replay_uid", name="pk_replay_progress"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("replay_progress")
    op.drop_index("ix_archived_events_archive_uid_accepted_us_id", table_name="archived_events")
    op.drop_table("archived_events")
