"""The checks of ``Bus.subscribe()``'s arguments, the same for every adapter.

A subscription request is refused with a terminal :class:`~broker.core.errors.SubscribeError` before
the adapter touches its server when the bus is closed, when ``concurrency`` is not a positive
integer, or when ``ordered=True`` is asked of an adapter that does not declare
``ORDERED_BY_KEY`` (it would silently break the order promise).
"""

from __future__ import annotations

from collections.abc import Collection

from broker.core.errors import SubscribeError
from broker.dataplane.bus.contract import Capability


def check_subscribe(
    bus: str,
    capabilities: Collection[Capability],
    *,
    closed: bool,
    concurrency: object,
    ordered: bool,
) -> None:
    """Raise a terminal SubscribeError naming what is wrong with a ``subscribe`` of ``bus``."""
    if closed:
        raise SubscribeError(f"{bus} bus is closed", retryable=False)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise SubscribeError(
            f"{bus} bus: concurrency must be a positive integer, not {concurrency!r}",
            retryable=False,
        )
    if ordered and Capability.ORDERED_BY_KEY not in capabilities:
        raise SubscribeError(
            f"{bus} bus does not order events per key (no ORDERED_BY_KEY)", retryable=False
        )
