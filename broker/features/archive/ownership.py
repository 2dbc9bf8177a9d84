"""Which replica runs a Replay: one at a time, through time-slot leases in the store.

Replicas on one store all see every Replay; each would re-deliver it. So time is cut into slots
of :data:`SLOT_SECONDS` and a replica runs a Replay only in the slots whose lease
(``replay/<uid>/<slot>``, :meth:`~broker.controlplane.resource_store.ResourceStore.claim_lease`,
which exactly one claimant wins) it holds. The replica running it claims the next slot
:data:`CLAIM_AHEAD_SECONDS` before the current one ends, the others only
:data:`TAKEOVER_DELAY_SECONDS` after it began, so the runner keeps it while it lives; when it dies
(or cannot reach the store), another replica takes over within about a slot and continues from
the saved cursor. A runner that lost the next slot stops at the end of its own (saving its
cursor). The timing rules are pure functions here; :func:`run_owned` is the loop around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from broker.core.errors import CemeshError

log = logging.getLogger(__name__)

SLOT_SECONDS = 5.0
CLAIM_AHEAD_SECONDS = 2.0  # the runner claims the next slot this long before its slot ends
TAKEOVER_DELAY_SECONDS = 1.0  # others try a slot this long after it began
LEASE_PREFIX = "replay/"

# Claims lease ``name`` until the given time; True for exactly one claimant (the store's).
Claim = Callable[[str, datetime], Awaitable[bool]]


def slot_of(now: float) -> int:
    """The slot ``now`` (seconds since the epoch) falls in."""
    return int(now // SLOT_SECONDS)


def slot_start(slot: int) -> float:
    return slot * SLOT_SECONDS


def lease_prefix(uid: str) -> str:
    """The prefix of a Replay's slot leases (expired ones are pruned by the next winner)."""
    return f"{LEASE_PREFIX}{uid}/"


def lease_name(uid: str, slot: int) -> str:
    return f"{lease_prefix(uid)}{slot}"


def lease_expiry(slot: int) -> datetime:
    """A slot's lease outlives the slot by one more, so that pruning never races its use."""
    return datetime.fromtimestamp(slot_start(slot + 2), UTC)


async def _claimed(claim: Claim, uid: str, slot: int) -> bool:
    try:
        return await claim(lease_name(uid, slot), lease_expiry(slot))
    except CemeshError as exc:  # the store cannot answer: not ours
        log.warning("replay lease not claimed", extra={"replay_uid": uid, "error": str(exc)})
        return False


async def run_owned(
    uid: str,
    start: Callable[[], Awaitable[None]],
    claim: Claim,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run ``start()`` (a replay run, resumable) only while this replica holds the slot leases
    of Replay ``uid``, until a run returns; a run that raises CemeshError is started again."""
    while True:
        slot = slot_of(clock())
        if not await _claimed(claim, uid, slot):
            await asyncio.sleep(max(0.0, slot_start(slot + 1) + TAKEOVER_DELAY_SECONDS - clock()))
            continue
        task = asyncio.ensure_future(start())
        try:
            while not task.done():
                claim_at = slot_start(slot + 1) - CLAIM_AHEAD_SECONDS
                await asyncio.wait({task}, timeout=max(0.0, claim_at - clock()))
                if task.done():
                    break
                if await _claimed(claim, uid, slot + 1):
                    slot += 1
                    continue
                await asyncio.wait({task}, timeout=max(0.0, slot_start(slot + 1) - clock()))
                break  # lost the next slot: stop at the end of ours
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # its outcome is read below
        if task.cancelled():
            continue  # another replica holds it now; try again from the next slot
        error = task.exception()
        if error is None:
            return
        log.warning("replay interrupted; resuming", extra={"replay_uid": uid, "error": str(error)})
        await asyncio.sleep(1.0)
