"""Stopping background tasks (broker/core/tasks.py): cancelled, waited for, never left running."""

from __future__ import annotations

import asyncio

from broker.core.tasks import cancel_all_and_wait, cancel_and_wait


async def test_stopping_a_running_task_cancels_it_and_waits_until_it_has_stopped() -> None:
    cleaned = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()

    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    await cancel_and_wait(task, None)
    assert task.cancelled() and cleaned.is_set()


async def test_stopping_finished_or_missing_tasks_does_nothing() -> None:
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(None)
    await cancel_all_and_wait([done])
    assert done.done() and not done.cancelled()


async def test_stopping_many_tasks_cancels_every_one() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(5)]
    await asyncio.sleep(0)
    await cancel_all_and_wait(tasks)
    assert all(task.cancelled() for task in tasks)
