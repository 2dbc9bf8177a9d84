"""The control loop: store -> reconcile -> data plane, then statuses back into the store.

After every write through the API (and every ``resync_interval`` seconds, when the store's
revision moved because another replica wrote) the controller reads all resources, computes their
statuses and the runtime :class:`~broker.spec.Snapshot` with the pure
:func:`broker.reconcile.reconcile`, hands the snapshot to the data plane, and only then writes
the statuses (so a Trigger is reported Ready only once its subscription is live: K61).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from broker.errors import CemeshError
from broker.reconcile import reconcile
from broker.spec import DeliveryPolicy, Snapshot
from broker.store import Store

log = logging.getLogger(__name__)


class Controller:
    """Keeps the data plane and the resources' statuses in step with the store."""

    def __init__(
        self,
        store: Store,
        *,
        base_url: str,
        default_delivery: DeliveryPolicy,
        bus: str,
        apply_snapshot: Callable[[Snapshot], Awaitable[None]],
        resync_interval: float,
    ) -> None:
        self._store = store
        self._base_url = base_url
        self._default_delivery = default_delivery
        self._bus = bus
        self._apply_snapshot = apply_snapshot
        self._resync_interval = resync_interval
        self._lock = asyncio.Lock()
        self._seen_revision = -1
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    async def sync(self) -> None:
        """Bring the data plane and statuses up to date with the store, now."""
        async with self._lock:
            revision = await self._store.revision()
            objects = await self._store.list()
            result = reconcile(
                objects,
                base_url=self._base_url,
                default_delivery=self._default_delivery,
                bus=self._bus,
            )
            await self._apply_snapshot(result.snapshot)
            for obj in objects:
                metadata = obj["metadata"]
                status = result.statuses.get(metadata["uid"])
                if status is None or status == obj.get("status"):
                    continue
                group = obj["apiVersion"].rpartition("/")[0]
                try:
                    await self._store.update_status(
                        group, obj["kind"], metadata["namespace"], metadata["name"], status
                    )
                except CemeshError as exc:  # deleted meanwhile, or a passing store error
                    log.info(
                        "status not written", extra={"name": metadata["name"], "why": str(exc)}
                    )
            # Our own status writes move the revision; remember the one after them.
            self._seen_revision = max(revision, await self._store.revision())
            self.synced.set()

    def start(self) -> None:
        """Poll the store for changes made elsewhere (other replicas, direct DB edits)."""
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="cemesh-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._resync_interval)
            try:
                if await self._store.revision() != self._seen_revision:
                    await self.sync()
            except Exception:  # keep the loop alive: a store outage must not stop the data plane
                log.exception("resync failed; will try again")
