"""Leader election with a ``coordination.k8s.io/v1`` Lease: one replica writes statuses.

Every cemesh replica serves the data plane (ingress, competing consumers on a durable bus) and
computes the same statuses, but only the holder of the Lease writes them, adds and removes
finalizers and retires consumer groups. Why a Lease rather than idempotent writes from all
replicas: reconcile stamps ``lastTransitionTime`` with each replica's own clock, and replicas
see watch events at slightly different moments, so concurrent writers would flap conditions
(and bump resourceVersions, waking every watcher) even with 409-safe writes; deleting a
consumer group must also happen once. The Lease is client-go's protocol: ``holderIdentity``,
``leaseDurationSeconds``, ``renewTime``, ``leaseTransitions``; a holder renews every
``renew_interval``; another may take it once ``renewTime + leaseDurationSeconds`` has passed.
Optimistic concurrency (replace with the read resourceVersion, 409 for the loser) makes the
take-over race safe.

The decision itself (:func:`may_acquire`) is pure; :class:`LeaderElector` is the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.controlplane.kube.store import KubeStore
from broker.core.errors import CemeshError, Conflict

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "cemesh-controller"


def _micro_time(moment: datetime) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def may_acquire(spec: Mapping[str, Any] | None, identity: str, now: datetime) -> bool:
    """Whether ``identity`` may hold a Lease whose spec is ``spec`` at ``now``: it is free,
    ours, or its holder did not renew within its duration."""
    if not spec or not spec.get("holderIdentity"):
        return True
    if spec.get("holderIdentity") == identity:
        return True
    renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or renewed + timedelta(seconds=duration) < now


def held_spec(
    spec: Mapping[str, Any] | None, identity: str, now: datetime, duration: int
) -> dict[str, Any]:
    """The Lease spec that records ``identity`` holding (or renewing) it at ``now``."""
    spec = dict(spec or {})
    taking_over = spec.get("holderIdentity") != identity
    result = {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration,
        "renewTime": _micro_time(now),
        "acquireTime": _micro_time(now) if taking_over else spec.get("acquireTime"),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0)
        + (1 if taking_over and spec.get("holderIdentity") else 0),
    }
    return {k: v for k, v in result.items() if v is not None}


class LeaderElector:
    """Holds (or waits for) one Lease; ``is_leader`` says whether this replica writes now.

    ``on_change(leading)`` is called when leadership is gained or lost (the control loop then
    syncs: a new leader writes what the old one left).
    """

    def __init__(
        self,
        store: KubeStore,
        *,
        namespace: str,
        identity: str,
        name: str = DEFAULT_LEASE_NAME,
        duration: int = 15,
        renew_interval: float = 5.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.duration = duration
        self.renew_interval = renew_interval
        self.on_change = on_change
        self.clock = clock
        self.is_leader = False
        self._led_until: datetime | None = None

    def _set_leader(self, leading: bool) -> None:
        if leading != self.is_leader:
            self.is_leader = leading
            log.info(
                "leadership %s", "acquired" if leading else "lost",
                extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity},
            )  # fmt: skip
            if self.on_change is not None:
                self.on_change(leading)

    async def try_acquire(self) -> bool:
        """One round: take or renew the Lease if allowed; whether we hold it now."""
        now = self.clock()
        lease = await self.store.get_lease(self.namespace, self.name)
        spec = None if lease is None else lease.get("spec")
        if not may_acquire(spec, self.identity, now):
            return False
        wanted = held_spec(spec, self.identity, now, self.duration)
        try:
            if lease is None:
                await self.store.create_lease(self.namespace, self.name, wanted)
            else:
                await self.store.replace_lease(lease, wanted)
        except Conflict:
            return False  # another replica took or renewed it first
        self._led_until = now + timedelta(seconds=self.duration)
        return True

    async def release(self) -> None:
        """Give the Lease up if this replica holds it (shutting down, after :meth:`run` was
        cancelled), so that another takes over at its next round instead of after the Lease's
        duration. Failures are logged: expiry frees it anyway."""
        self._set_leader(False)
        try:
            lease = await self.store.get_lease(self.namespace, self.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == (
                self.identity
            ):
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                await self.store.replace_lease(lease, spec)
        except CemeshError as exc:
            log.info("lease not released: %s", exc.message)

    async def run(self) -> None:
        """Acquire and renew until cancelled; a failed renewal past the duration steps down."""
        try:
            while True:
                try:
                    leading = await self.try_acquire()
                except CemeshError as exc:
                    log.warning("lease not renewed: %s", exc.message)
                    # Keep leading only while the last renewal still holds.
                    leading = self._led_until is not None and self.clock() < self._led_until
                self._set_leader(leading)
                await asyncio.sleep(self.renew_interval)
        finally:
            self._set_leader(False)
