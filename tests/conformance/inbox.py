"""Helpers of the bus conformance suite: an inbox handlers record into, and bounded waiting.

Tests never sleep to wait for a delivery: handlers record what they receive in an
:class:`Inbox`, and the test awaits a condition on it with a timeout (:meth:`Inbox.wait_until`).
The timeout is generous because the same suite runs against real servers; it only bounds how
long a failing test takes, a passing one returns as soon as the condition holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from broker.core.events import CloudEvent, new_event
from broker.dataplane.bus import Message

WAIT = 15.0  # seconds; an upper bound for a failing test, not a timing assertion


class Inbox:
    """Every message a handler received, in the order it received them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    def record(self, message: Message) -> None:
        self.messages.append(message)
        self._changed.set()

    async def handler(self, message: Message) -> None:
        """A handler that records and acks."""
        self.record(message)

    def ids(self) -> list[str]:
        return [message.event.id for message in self.messages]

    async def wait_until(
        self, condition: Callable[[], bool], what: str, within: float = WAIT
    ) -> None:
        """Return once ``condition()`` holds; fail the test after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not condition():
            self._changed.clear()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pytest.fail(
                    f"timed out after {within}s waiting for {what}; "
                    f"received {len(self.messages)} messages",
                    pytrace=False,
                )

    async def wait_for_ids(self, expected: set[str], within: float = WAIT) -> None:
        """Return once every id of ``expected`` was received at least once."""
        await self.wait_until(
            lambda: set(self.ids()) >= expected, f"all {len(expected)} events", within
        )

    async def wait_for_count(self, count: int, within: float = WAIT) -> None:
        await self.wait_until(lambda: len(self.messages) >= count, f"{count} messages", within)


async def wait_set(flag: asyncio.Event, what: str, within: float = WAIT) -> None:
    """Await ``flag``; fail the test after ``within`` seconds, saying what was awaited."""
    try:
        await asyncio.wait_for(flag.wait(), within)
    except TimeoutError:
        pytest.fail(f"timed out after {within}s waiting for {what}", pytrace=False)


def sample_event(index: int = 0, **extensions: str | int | bool) -> CloudEvent:
    """A small CloudEvents 1.0 event with a unique id and a ``seq`` extension."""
    return new_event(
        type="dev.cemesh.conformance",
        source="/conformance",
        data=b'{"n": %d}' % index,
        datacontenttype="application/json",
        extensions={"seq": index, **extensions},
    )
