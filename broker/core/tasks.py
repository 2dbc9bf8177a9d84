"""Background tasks: the one way cemesh stops one (cancel it, wait until it has stopped)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every given task (None: nothing), then wait for each to finish.

    A task's own CancelledError is swallowed; one raised because the caller itself is being
    cancelled still propagates after the tasks were cancelled (they never outlive the caller).
    """
    await cancel_all_and_wait(task for task in tasks if task is not None)


async def cancel_all_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """:func:`cancel_and_wait` for an iterable of tasks."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
