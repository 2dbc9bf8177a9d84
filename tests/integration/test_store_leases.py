"""Leases through the storage seam (ResourceStore.claim_lease), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from broker.controlplane.resource_store import ResourceStore
from broker.controlplane.store import Store
from broker.core.errors import StoreError
from broker.features.sources.lease import TICK_PREFIX, tick_key, try_claim_tick


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def seam(store: Store) -> ResourceStore:
    """The SQL store as the control plane sees it (mypy checks it implements the Protocol)."""
    return store


async def test_exactly_one_of_many_concurrent_claims_wins_a_lease(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    wins = await asyncio.gather(
        *(seam(store).claim_lease("tick/a", f"holder-{i}", expires) for i in range(8))
    )
    assert sorted(wins) == [False] * 7 + [True]
    assert await seam(store).claim_lease("tick/a", "late", expires) is False


async def test_claiming_a_lease_does_not_move_the_revision(store: Store) -> None:
    before = await store.revision()
    assert await seam(store).claim_lease("x", "me", datetime.now(UTC) + timedelta(minutes=1))
    assert await store.revision() == before


async def test_a_winner_prunes_expired_leases_under_its_prefix_only(store: Store) -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    assert await seam(store).claim_lease(f"{TICK_PREFIX}old", "me", past)
    assert await seam(store).claim_lease("other/old", "me", past)
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await seam(store).claim_lease(
        f"{TICK_PREFIX}new", "me", future, prune_prefix=TICK_PREFIX
    )
    # The expired tick lease is gone (claimable again); the one under another prefix is kept.
    assert await seam(store).claim_lease(f"{TICK_PREFIX}old", "again", future)
    assert await seam(store).claim_lease("other/old", "again", future) is False


async def test_a_tick_is_claimed_once_across_holders(store: Store) -> None:
    tick = datetime.now(UTC).replace(microsecond=0)  # a current tick, kept for an hour
    first = await try_claim_tick(store, "uid-1", tick, "replica-a")
    second = await try_claim_tick(store, "uid-1", tick.astimezone(), "replica-b")
    other_source = await try_claim_tick(store, "uid-2", tick, "replica-b")
    assert (first, second, other_source) == (True, False, True)
    assert tick_key("uid-1", tick).startswith(TICK_PREFIX)


async def test_a_closed_store_answers_lease_claims_with_store_error(database_url: str) -> None:
    closed = Store(database_url)
    with pytest.raises(StoreError, match="not open"):
        await seam(closed).claim_lease("x", "me", datetime.now(UTC))
