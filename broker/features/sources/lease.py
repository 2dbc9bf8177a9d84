"""Once-per-tick claims, so that several replicas fire a schedule once.

Every replica runs every Ready PingSource and wakes at the same ticks; before firing, each tries
to claim a lease named after the (source, tick) through the store's lease method
(:meth:`broker.controlplane.resource_store.ResourceStore.claim_lease`), which exactly one claimant
wins across processes, so exactly one replica fires that tick. A claim is kept for ``keep`` after
its tick (long enough that a replica lagging behind cannot claim the tick again) and then removed by
a later claim.

Claims do not move the store's revision: they are not resources, and moving it would make every
replica resync on every tick.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.controlplane.resource_store import ResourceStore

TICK_PREFIX = "tick/"
DEFAULT_KEEP = timedelta(hours=1)


def tick_key(owner: str, tick: datetime) -> str:
    """The lease name of one tick of ``owner`` (e.g. a source's uid): the tick in UTC."""
    return f"{TICK_PREFIX}{owner}/{tick.astimezone(UTC).isoformat()}"


async def try_claim_tick(
    store: ResourceStore,
    owner: str,
    tick: datetime,
    holder: str,
    *,
    keep: timedelta = DEFAULT_KEEP,
) -> bool:
    """Claim ``tick`` of ``owner`` for ``holder``: True for exactly one caller across processes.

    Raises :class:`~broker.core.errors.StoreError` when the store cannot answer (the caller decides
    whether to skip the tick).
    """
    tick = tick.astimezone(UTC)
    return await store.claim_lease(
        tick_key(owner, tick), holder, tick + keep, prune_prefix=TICK_PREFIX
    )
