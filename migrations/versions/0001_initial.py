"""Initial schema: resources, the global revision counter, leases.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("api_group", sa.String(253), nullable=False),
        sa.Column("kind", sa.String(63), nullable=False),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("uid", sa.String(36), nullable=False),
        sa.Column("resource_version", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("api_group", "kind", "namespace", "name", name="pk_resources"),
        sa.UniqueConstraint("uid", name="uq_resources_uid"),
    )
    op.create_index("ix_resources_namespace_name", "resources", ["namespace", "name"])

    revision_table = op.create_table(
        "revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_revision"),
    )
    # The one counter row every write bumps (broker.controlplane.store.repository).
    op.bulk_insert(revision_table, [{"id": 1, "value": 0}])

    # Leader election among replicas (used by a later migration's feature; created now).
    op.create_table(
        "leases",
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("holder", sa.String(253), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("revision")
    op.drop_index("ix_resources_namespace_name", table_name="resources")
    op.drop_table("resources")
