"""One subscription of the NATS bus: a pull loop, ``concurrency`` handler tasks, keep-alives.

A :class:`NatsSubscription` pulls from its group's durable consumer no more than its handlers
can take, settles each message (ack, or nak with a delay) and naks what it holds when closed
(see the package's ``bus.py`` for the model). What it needs of its bus is :class:`Owner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal, Protocol
from urllib.parse import unquote

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscriptionHandle
from nats.js import api

from adapters.nats.failures import describe
from adapters.nats.names import Target, delivery_count
from broker.core.errors import BusError
from broker.core.events import decode_envelope
from broker.dataplane.bus import Handler, Message, run_handler

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

KEY_HEADER = "Cemesh-Key"
MSG_ID_HEADER = "Nats-Msg-Id"
STATUS_HEADER = "Status"


# Pull requests are renewed this often (seconds) when nothing arrives; short enough that a
# request lost without a reply (a server restart) is noticed soon, long enough to cost nothing.
PULL_EXPIRES = 5.0
PULL_GRACE = 1.0  # beyond the expiry, how long to wait for the server's 408 before moving on
# Redelivery delay after a handler raised something other than Nack (as the memory bus): a handler
# failing on every message must not spin, a transient error should not wait long.
ERROR_REDELIVERY_DELAY = 0.05
# A message that is not a cemesh envelope (someone else published on the subject) cannot be
# handed to a handler, and dropping it is not ours to decide: it is logged and comes back.
UNDECODABLE_REDELIVERY_DELAY = 60.0
RETRY_PAUSE = 0.5  # after a failed pull request or a failed consumer re-creation
CLOSE_TIMEOUT = 2.0  # bound on each network step of close (server possibly unreachable)
_EXPIRES = b'"expires":%d' % int(PULL_EXPIRES * 1e9)


class Owner(Protocol):
    """What a subscription needs of the bus that made it."""

    async def declare(self, topic: str, group: str, *, ordered: bool) -> tuple[Target, str]:
        """Make sure the stream of ``topic`` and the consumer of ``group`` exist."""
        ...

    def forget_target(self, topic: str) -> None:
        """The stream of ``topic`` is gone: the next use creates it again."""
        ...

    def forget(self, subscription: NatsSubscription) -> None:
        """``subscription`` is closing: the bus no longer tracks it."""
        ...


class _Held:
    """A message this subscription holds (queued for or in a handler), with its last touch."""

    __slots__ = ("msg", "touched")

    def __init__(self, msg: Msg, touched: float) -> None:
        self.msg = msg
        self.touched = touched


class NatsSubscription:
    """One subscription: a pull loop, ``concurrency`` handler tasks, and an in-progress ticker."""

    def __init__(
        self,
        bus: Owner,
        nc: Client,
        topic: str,
        group: str,
        target: Target,
        consumer: str,
        handler: Handler,
        concurrency: int,
        ordered: bool,
        ack_wait: float,
    ) -> None:
        self._bus = bus
        self._nc = nc
        self._topic = topic
        self._group = group
        self._handler = handler
        self._concurrency = concurrency
        self._ordered = ordered
        self._ack_wait = ack_wait
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{target.stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._queue: asyncio.Queue[_Held] = asyncio.Queue()
        self._held: set[_Held] = set()
        self._slot_freed = asyncio.Event()
        # The one open pull request: its reply subject and the messages it may still bring.
        self._request_reply = ""
        self._credits = 0
        self._request_over = asyncio.Event()
        self._requests = 0
        self._recreate = False  # the consumer (or stream) vanished: declare it again
        self._pause = False  # the last pull request failed: wait a little before the next
        self._log_extra = {"topic": topic, "group": group}
        self._sub: NatsSubscriptionHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._stopped = asyncio.Event()

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str:
        return self._group

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        name = f"nats-bus {self._topic}/{self._group}"
        self._tasks = [
            asyncio.create_task(self._pull(), name=f"{name} pull"),
            asyncio.create_task(self._keep_alive(), name=f"{name} in-progress"),
            *(
                asyncio.create_task(self._work(), name=f"{name} handler")
                for _ in range(self._concurrency)
            ),
        ]

    # -- receiving ----------------------------------------------------------------------------

    async def _pull(self) -> None:
        while not self._closed:
            try:
                await self._pull_once()
            except Exception:  # a bug here must not silently stop the subscription
                log.exception("nats bus: pull loop failed; going on", extra=self._log_extra)
                await asyncio.sleep(RETRY_PAUSE)

    async def _pull_once(self) -> None:
        """Wait for a free handler slot, then send one pull request and wait for its end."""
        free = self._concurrency - len(self._held)
        if free <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
            return
        if self._pause:
            # The last request ended in an error (no consumer, too many waiting requests...):
            # do not hammer the server.
            self._pause = False
            await asyncio.sleep(RETRY_PAUSE)
        if self._recreate:
            try:
                await self._bus.declare(self._topic, self._group, ordered=self._ordered)
            except BusError as exc:
                log.warning("nats bus: cannot re-create consumer: %s", exc.message)
                self._pause = True
                return
            self._recreate = False
        self._requests += 1
        self._request_reply = f"{self._inbox}.{self._requests}"
        self._credits = free
        self._request_over.clear()
        try:
            await self._nc.publish(
                self._next_subject, b'{"batch":%d,%s}' % (free, _EXPIRES), self._request_reply
            )
        except Exception as exc:  # disconnected with a full buffer, closing...
            log.debug("nats bus: pull request failed: %s", describe(exc))
            self._pause = True
            return
        # Over when it brought all it asked for, when the server ended it (408 at expiry), or,
        # should that answer be lost, a little after its expiry.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._request_over.wait(), PULL_EXPIRES + PULL_GRACE)

    def renew_pull(self) -> None:
        """Forget the open pull request (it died with the connection); the loop sends a new one."""
        self._credits = 0
        self._request_over.set()

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(STATUS_HEADER) if headers else None
        if status is not None:
            self._on_status(msg, status)
            return
        if self._closed:
            await _settle(msg, "nak")  # sent before the server saw us leave: give it back now
            return
        held = _Held(msg, asyncio.get_running_loop().time())
        self._held.add(held)
        if self._credits > 0:
            self._credits -= 1
            if self._credits == 0:
                self._request_over.set()
        self._queue.put_nowait(held)

    def _on_status(self, msg: Msg, status: str) -> None:
        if status == "100" or msg.subject != self._request_reply:
            return  # a heartbeat, or the end of a request already given up
        if status not in ("404", "408"):  # 404/408: no messages / expired; anything else:
            assert msg.headers is not None
            description = msg.headers.get(api.Header.DESCRIPTION, "")
            log.warning(
                "nats bus: pull request ended with %s %s",
                status,
                description,
                extra=self._log_extra,
            )
            self._pause = True
            # 503 (no responders): the consumer or its stream is gone; 409 "Consumer Deleted".
            if status == "503" or "deleted" in description.lower():
                self._bus.forget_target(self._topic)
                self._recreate = True
        self._credits = 0
        self._request_over.set()

    # -- handling -----------------------------------------------------------------------------

    async def _work(self) -> None:
        handler = self._handler
        log_extra = {"topic": self._topic, "group": self._group}  # once, not per message
        while not self._closed:
            held = await self._queue.get()
            msg = held.msg
            try:
                message = _message(msg)
            except Exception:
                log.error(
                    "nats bus: message is not a cemesh event; redelivering it in %ss",
                    UNDECODABLE_REDELIVERY_DELAY,
                    exc_info=True,
                    extra={"topic": self._topic, "group": self._group, "subject": msg.subject},
                )
                await self._settle(held, "nak", UNDECODABLE_REDELIVERY_DELAY)
                continue
            try:
                delay = await run_handler(
                    handler,
                    message,
                    error_delay=ERROR_REDELIVERY_DELAY,
                    logger=log,
                    log_extra=log_extra,
                )
            except BaseException:  # cancellation (close) and interpreter exit: never an ack
                await self._settle(held, "nak")
                raise
            if delay is not None:
                await self._settle(held, "nak", delay)
                continue
            # A handler that swallowed the cancellation of close() did not succeed either.
            await self._settle(held, "nak" if self._closed else "ack")

    async def _settle(self, held: _Held, how: Literal["ack", "nak"], delay: float = 0.0) -> None:
        self._held.discard(held)
        self._slot_freed.set()
        await _settle(held.msg, how, delay)

    async def _keep_alive(self) -> None:
        """Tell the server every ``ack_wait / 3`` that held messages are still being worked on."""
        interval = self._ack_wait / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)  # a period, not a wait for something to happen
            now = loop.time()
            for held in list(self._held):
                if now - held.touched >= interval:
                    held.touched = now
                    with contextlib.suppress(Exception):  # settled meanwhile, or disconnected
                        await held.msg.in_progress()

    # -- closing ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop pulling and cancel the handler tasks (their messages are naked as they end)."""
        if self._closed:
            return
        self._closed = True
        self._bus.forget(self)
        current = asyncio.current_task()
        for task in self._tasks:
            # A handler closing its own subscription is not cancelled: it naks once it returns.
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        """Stop consuming; nak (never ack) every message this subscription holds. Idempotent."""
        if self._closed and not self._tasks:
            await self._stopped.wait()
            return
        self.stop()
        current = asyncio.current_task()
        tasks, self._tasks = [t for t in self._tasks if t is not current], []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            # Drain: the server forgets the open pull request, and what it had already sent
            # reaches _on_msg, which naks it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sub.drain(), CLOSE_TIMEOUT)
        while not self._queue.empty():
            await self._settle(self._queue.get_nowait(), "nak")
        self._stopped.set()


def _message(msg: Msg) -> Message:
    headers = msg.headers
    key = headers.get(KEY_HEADER) if headers else None
    return Message(
        decode_envelope(msg.data),
        None if key is None else unquote(key),
        delivery_count(msg.reply),
    )


async def _settle(msg: Msg, how: Literal["ack", "nak"], delay: float = 0.0) -> None:
    """Ack or nak ``msg``; a lost ack or nak only means a redelivery after ``ack_wait``."""
    try:
        if how == "ack":
            await msg.ack()
        else:
            await msg.nak(delay=delay if delay > 0 else None)
    except Exception as exc:
        log.debug("nats bus: could not %s a message: %s", how, describe(exc))
