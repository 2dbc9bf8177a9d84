"""The JetStream publishes of the NATS bus: requests on one reply subscription, expired in sweeps.

A JetStream publish is a NATS request whose answer is the stream's PubAck. nats-py's own request
(and its JetStream ``publish`` on top) pays per publish for a random token (a NUID and
``os.urandom``), an ``asyncio.wait_for`` (a waiter future, a timer and callbacks) and, in
``publish``, for parsing the PubAck into JSON and a dataclass: together the largest part of
cemesh's CPU per event on NATS. :class:`Publisher` sends the same requests with what they need:
a counter for the token, one future per publish, and one sweep every so often that fails the
publishes left unanswered past their timeout. The answer is handed back as bytes, for
:func:`~adapters.nats.bus.check_pub_ack` to look at.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS_HEADER = "Status"
NO_RESPONDERS = "503"  # the server's answer when no stream captures the subject
SWEEP_EVERY = 0.25  # seconds between two sweeps for expired publishes (at most)


class Publisher:
    """Sends publishes as requests and resolves each with its answer, or fails it in time."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._prefix = f"{nc.new_inbox()}."
        self._sent = 0
        # token -> (the publisher's future, when it expires): unanswered publishes.
        self._waiting: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe to the answers and start sweeping."""
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_answer)
        self._sweeper = asyncio.create_task(self._sweep(), name="nats-bus publish sweeper")

    async def send(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[bytes]:
        """Send one publish; the future resolves to its answer's data, or fails with nats-py's
        NoRespondersError (no stream) or TimeoutError (no answer within the timeout)."""
        self._sent += 1
        token = str(self._sent)
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._waiting[token] = (future, self._loop.time() + self._timeout)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._waiting[token]
            raise
        return future

    async def _on_answer(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if entry is None or entry[0].done():
            return  # expired (or its publisher gave up) before the answer came
        headers = msg.headers
        if headers and headers.get(STATUS_HEADER) == NO_RESPONDERS:
            entry[0].set_exception(nats.errors.NoRespondersError())
        else:
            entry[0].set_result(msg.data)

    async def _sweep(self) -> None:
        interval = min(SWEEP_EVERY, self._timeout / 4)
        while True:
            await asyncio.sleep(interval)  # a period: expiry is checked, not awaited
            now = self._loop.time()
            expired = [token for token, (_, due) in self._waiting.items() if due <= now]
            for token in expired:
                future, _ = self._waiting.pop(token)
                if not future.done():
                    future.set_exception(nats.errors.TimeoutError())

    async def close(self) -> None:
        """Stop sweeping and fail what is still unanswered (the connection is going)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        waiting, self._waiting = self._waiting, {}
        for future, _ in waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
