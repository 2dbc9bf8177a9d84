"""Once-per-tick claims in the store, so that several replicas fire a schedule once.

Every replica runs every Ready PingSource and wakes at the same ticks; before firing, each tries
to INSERT one row into the store's ``leases`` table named after the (source, tick). The primary
key lets exactly one INSERT succeed across processes, on SQLite and PostgreSQL alike, so exactly
one replica fires that tick. A claim row is kept for ``keep`` after its tick (long enough that a
replica lagging behind cannot claim the tick again) and then removed by a later claim.

Claims do not move the store's revision counter: they are not resources, and moving it would make
every replica resync on every tick.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, exc, insert

from broker.store.engine import translated
from broker.store.models import LeaseRow

if TYPE_CHECKING:  # a type only: broker.store imports the resources, which import this module
    from broker.store import Store

TICK_PREFIX = "tick/"
DEFAULT_KEEP = timedelta(hours=1)


def new_holder() -> str:
    """A name for this claimant, unique across hosts, processes and runtimes in one process."""
    return f"{socket.gethostname()[:100]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"


def tick_key(owner: str, tick: datetime) -> str:
    """The lease name of one tick of ``owner`` (e.g. a source's uid): the tick in UTC."""
    return f"{TICK_PREFIX}{owner}/{tick.astimezone(UTC).isoformat()}"


async def try_claim_tick(
    store: Store,
    owner: str,
    tick: datetime,
    holder: str,
    *,
    keep: timedelta = DEFAULT_KEEP,
) -> bool:
    """Claim ``tick`` of ``owner`` for ``holder``: True for exactly one caller across processes.

    Raises :class:`~broker.errors.StoreError` when the store cannot answer (the caller decides
    whether to skip the tick).
    """
    tick = tick.astimezone(UTC)
    now = datetime.now(UTC)
    # The store's pooled writer engine: on SQLite its transactions take the write lock at BEGIN,
    # so concurrent claims queue instead of failing with "database is locked".
    engine = store._writing()
    with translated():
        async with engine.connect() as conn:
            try:
                await conn.execute(
                    insert(LeaseRow).values(
                        name=tick_key(owner, tick), holder=holder, expires_at=tick + keep
                    )
                )
            except exc.IntegrityError:
                await conn.rollback()
                return False  # another replica (or an earlier run of this one) has it
            # Old claims of every source (including deleted ones) are removed here, by winners.
            await conn.execute(
                delete(LeaseRow).where(
                    LeaseRow.name.startswith(TICK_PREFIX), LeaseRow.expires_at < now
                )
            )
            await conn.commit()
    return True
