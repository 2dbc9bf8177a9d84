"""cemesh's token-signing keys (delivery identity), shared by the replicas of one store.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activates_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
        # Replicas starting together on one SQLite file can both reach this step (the second
        # one's view of alembic_version may predate the first one's commit): the second must
        # find the table made, not fail the start.
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
