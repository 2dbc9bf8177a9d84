"""What the pubsub bus promises beyond the shared contract (its docstring: ``adapters/pubsub``).

The contract itself is checked by ``test_bus_contract.py`` like for every adapter; these tests
cover the Pub/Sub adapter's own choices, against the real emulator: how names map to topics and
subscriptions, option validation, error mapping, leases kept while a handler runs past the ack
deadline, keys (the 1024-byte limit, the local redelivery of ordered keys, close handing a key's
messages back in order), and messages that are not cemesh events.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.pubsub_v1 import types
from google.pubsub_v1.services.publisher.async_client import PublisherAsyncClient
from google.pubsub_v1.services.publisher.transports.grpc_asyncio import (
    PublisherGrpcAsyncIOTransport,
)
from google.pubsub_v1.services.subscriber.async_client import SubscriberAsyncClient
from google.pubsub_v1.services.subscriber.transports.grpc_asyncio import (
    SubscriberGrpcAsyncIOTransport,
)

from adapters.pubsub import PubSubBus
from adapters.pubsub.names import subscription_id, topic_id
from broker.core.errors import BusError, PublishError
from broker.dataplane.bus import Bus, Handler, Message, Nack, create_bus
from tests.conformance.inbox import WAIT, Inbox, sample_event, wait_set
from tests.support.servers.pubsub import PubSubEmulator

Names = Callable[[str], str]
PROJECT = "cemesh-test"  # the project of the ``pubsub_bus`` fixture

# A pause that gives the bus the chance to do something it must NOT do (deliver a duplicate);
# never used to wait for something that must happen.
SETTLE = 0.3


class RawClients:
    """Plain google-cloud-pubsub clients on the emulator, to look behind the adapter."""

    def __init__(self, host: str) -> None:
        self.publisher = PublisherAsyncClient(
            transport=PublisherGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(host))
        )
        self.subscriber = SubscriberAsyncClient(
            transport=SubscriberGrpcAsyncIOTransport(channel=grpc.aio.insecure_channel(host))
        )

    async def close(self) -> None:
        await self.publisher.transport.close()
        await self.subscriber.transport.close()


@pytest.fixture
async def raw(pubsub_emulator: PubSubEmulator) -> AsyncIterator[RawClients]:
    clients = RawClients(pubsub_emulator.host)
    yield clients
    await clients.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens there once the socket is closed


# -- options -------------------------------------------------------------------------------------


def test_unknown_option_is_refused_naming_it() -> None:
    """Unknown option keys are a terminal BusError that names them."""
    with pytest.raises(BusError) as raised:
        create_bus("pubsub", {"project": "p", "acks": 3})
    assert raised.value.retryable is False
    assert "acks" in str(raised.value)


@pytest.mark.parametrize(
    "options",
    [
        {"ack_deadline": 5},
        {"ack_deadline": 601},
        {"ack_deadline": "60"},
        {"pull_streams": 0},
        {"rpc_timeout": 0},
        {"rpc_timeout": True},
        {"project": ""},
    ],
)
def test_invalid_option_values_are_refused(options: dict[str, object]) -> None:
    """Pub/Sub's limits (ack deadline 10-600 s) and sane values are checked up front."""
    with pytest.raises(BusError) as raised:
        PubSubBus(options)
    assert raised.value.retryable is False


async def test_unusable_credentials_file_fails_open_terminally(tmp_path: Path) -> None:
    """Without usable credentials the bus cannot work: ``open`` says so, not retryable."""
    bad = tmp_path / "credentials.json"
    bad.write_text('{"type": "nothing-google-knows"}')
    bus = PubSubBus({"credentials_file": str(bad)})
    with pytest.raises(BusError) as raised:
        await bus.open()
    assert raised.value.retryable is False
    assert raised.value.__cause__ is not None
    await bus.close()


async def test_user_credentials_file_is_used_to_open(tmp_path: Path) -> None:
    """``credentials_file`` takes a google-auth key file (here an authorized-user one); opening
    makes the clients without contacting Google (gRPC connects on the first call)."""
    key = tmp_path / "credentials.json"
    key.write_text(
        '{"type": "authorized_user", "client_id": "id", "client_secret": "secret", '
        '"refresh_token": "token"}'
    )
    bus = PubSubBus({"credentials_file": str(key), "project": "p"})
    await bus.open()
    await bus.close()


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True])
async def test_subscribe_creates_the_mapped_topic_and_a_subscription_ordered_only_if_asked(
    pubsub_bus: Bus, raw: RawClients, unique: Names, ordered: bool
) -> None:
    """A cemesh topic is a topic of the same name; its group is a subscription of it, made before
    subscribe returns, with message ordering only for ``ordered=True`` (on an ordered
    subscription the emulator re-delivers acked messages after a consumer crashed)."""
    topic = f"cemesh.broker.default.{unique('broker')}"
    group = f"cemesh.trigger.{unique('uid')}"
    subscription = await pubsub_bus.subscribe(
        topic, group=group, handler=Inbox().handler, ordered=ordered
    )
    try:
        made = await raw.subscriber.get_subscription(
            subscription=f"projects/{PROJECT}/subscriptions/{group}~{topic}"
        )
        assert made.topic == f"projects/{PROJECT}/topics/{topic}"
        assert made.enable_message_ordering is ordered
        assert made.ack_deadline_seconds == 10
    finally:
        await subscription.close()


async def test_odd_names_are_accepted_by_the_server(pubsub_bus: Bus, unique: Names) -> None:
    """Names that are not valid Pub/Sub IDs (digit first, spaces, '/', '%', non-ASCII, 'goog',
    over 255 characters) still work end to end through the mapping."""
    topics = [
        f"1 ünï/cødé %{unique('t')}",
        f"goog{unique('t')}",
        "l" * 300 + unique("t"),
    ]
    groups = ["g", f"日本語 {unique('g')}", "~%" + "m" * 300]
    inboxes = []
    for topic, group in zip(topics, groups, strict=True):
        inbox = Inbox()
        await pubsub_bus.subscribe(topic, group=group, handler=inbox.handler)
        event = sample_event()
        await pubsub_bus.publish(topic, event)
        inboxes.append((inbox, event.id))
    for inbox, event_id in inboxes:
        await inbox.wait_for_ids({event_id})
    assert topic_id(topics[0]).startswith("xx~1")


# -- errors --------------------------------------------------------------------------------------


async def test_unreachable_server_makes_publish_raise_a_retryable_publish_error() -> None:
    """A driver failure is a PublishError chained from the driver's exception, retryable when
    trying again may help, within ``rpc_timeout`` (retries included)."""
    bus = PubSubBus({"emulator_host": f"127.0.0.1:{_closed_port()}", "rpc_timeout": 1.0})
    await bus.open()
    started = time.monotonic()
    try:
        with pytest.raises(PublishError) as raised:
            await bus.publish("cemesh.broker.default.nowhere", sample_event())
    finally:
        await bus.close()
    assert raised.value.retryable is True
    assert raised.value.__cause__ is not None
    assert time.monotonic() - started < 1.0 + WAIT / 3


async def test_key_over_1024_bytes_is_refused_and_1024_bytes_cross(
    pubsub_bus: Bus, topic: str, unique: Names
) -> None:
    """Pub/Sub caps ordering keys and attribute values at 1024 bytes: a longer key is a
    terminal PublishError (never truncated), a key at the limit crosses unaltered."""
    inbox = Inbox()
    await pubsub_bus.subscribe(topic, group=unique("group"), handler=inbox.handler, ordered=True)
    with pytest.raises(PublishError) as raised:
        await pubsub_bus.publish(topic, sample_event(), key="k" * 1025)
    assert raised.value.retryable is False
    key = "é" * 512  # 1024 bytes in UTF-8
    event = sample_event()
    await pubsub_bus.publish(topic, event, key=key)
    await inbox.wait_for_ids({event.id})
    assert inbox.messages[0].key == key


# -- leases --------------------------------------------------------------------------------------


async def test_handler_running_past_the_ack_deadline_keeps_its_message(
    pubsub_bus: Bus, topic: str, unique: Names
) -> None:
    """The lease of a message in a handler is extended: a handler taking longer than the ack
    deadline (10 s here) is not given a second copy, nor is its group peer."""
    group = unique("group")
    slow, peer = Inbox(), Inbox()

    async def slow_handler(message: Message) -> None:
        slow.record(message)
        await asyncio.sleep(12.0)  # the slow work under test: past the 10 s ack deadline

    await pubsub_bus.subscribe(topic, group=group, handler=slow_handler, concurrency=2)
    event = sample_event()
    await pubsub_bus.publish(topic, event, key="only")
    await slow.wait_for_count(1)
    # The peer joins once the slow handler has the message (else Pub/Sub may hand it to either).
    await pubsub_bus.subscribe(topic, group=group, handler=peer.handler)
    await asyncio.sleep(12.0 + SETTLE)  # room for a wrongful redelivery after the deadline
    assert slow.ids() == [event.id]
    assert peer.messages == []


# -- keys ----------------------------------------------------------------------------------------


async def test_ordered_keyed_nack_is_redelivered_locally_with_attempt_counted(
    pubsub_bus: Bus, topic: str, unique: Names
) -> None:
    """In an ordered subscription a failed keyed message is redelivered by the adapter (still
    leased), so ``attempt`` counts it; elsewhere Pub/Sub redelivers it and ``attempt`` stays 1
    (no REDELIVERY_COUNT: Pub/Sub counts deliveries only with a dead-letter policy)."""
    ordered, unordered = Inbox(), Inbox()

    def nack_first(inbox: Inbox) -> Handler:
        async def handler(message: Message) -> None:
            inbox.record(message)
            if len(inbox.messages) == 1:
                raise Nack(0.0)

        return handler

    await pubsub_bus.subscribe(
        topic, group=unique("group"), handler=nack_first(ordered), ordered=True
    )
    await pubsub_bus.subscribe(topic, group=unique("group"), handler=nack_first(unordered))
    await pubsub_bus.publish(topic, sample_event(), key="k")
    await ordered.wait_for_count(2)
    await unordered.wait_for_count(2)
    assert [m.attempt for m in ordered.messages[:2]] == [1, 2]
    assert [m.attempt for m in unordered.messages[:2]] == [1, 1]


async def test_close_hands_a_keys_held_messages_back_in_order(
    pubsub_bus: Bus, topic: str, unique: Names
) -> None:
    """Closing an ordered subscription nacks what it holds in the order received: the group's
    next consumer gets the key's messages from the one that was in the handler, in order."""
    group = unique("group")
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()  # until the subscription is closed

    first = await pubsub_bus.subscribe(topic, group=group, handler=stuck, ordered=True)
    events = [sample_event(seq) for seq in range(6)]
    for event in events:
        await pubsub_bus.publish(topic, event, key="one-key")
    await wait_set(started, "the first handler call")
    await asyncio.sleep(SETTLE)  # let the stream hand over the key's later messages too
    await first.close()

    later = Inbox()
    await pubsub_bus.subscribe(topic, group=group, handler=later.handler, ordered=True)
    await later.wait_for_ids({event.id for event in events})
    first_seen: list[str] = []
    for event_id in later.ids():
        if event_id not in first_seen:
            first_seen.append(event_id)
    assert first_seen == [event.id for event in events]


# -- foreign messages ----------------------------------------------------------------------------


class LogFlag(logging.Handler):
    """Sets ``flag`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.ERROR)
        self.text = text
        self.flag = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.flag.set()  # logged from the event loop's own thread


async def test_message_that_is_not_an_event_is_logged_and_never_handled(
    pubsub_bus: Bus, raw: RawClients, topic: str, unique: Names
) -> None:
    """A message some other publisher put on the topic is not handed to the handler (nor
    acked); the events around it are delivered."""
    logged = LogFlag("not a cemesh event")
    logger = logging.getLogger("adapters.pubsub")
    logger.addHandler(logged)
    try:
        inbox = Inbox()
        await pubsub_bus.subscribe(topic, group=unique("group"), handler=inbox.handler)
        before, after = sample_event(1), sample_event(2)
        await pubsub_bus.publish(topic, before)
        await raw.publisher.publish(
            topic=f"projects/{PROJECT}/topics/{topic_id(topic)}",
            messages=[types.PubsubMessage(data=b"not a cemesh envelope")],
        )
        await pubsub_bus.publish(topic, after)
        await inbox.wait_for_ids({before.id, after.id})
        await wait_set(logged.flag, "the error logged for the foreign message")
        await asyncio.sleep(SETTLE)  # room for a wrongful delivery of the foreign message
    finally:
        logger.removeHandler(logged)
    assert sorted(inbox.ids()) == sorted([before.id, after.id])


def test_subscription_ids_include_the_topic() -> None:
    """One group name on two topics is two subscriptions (groups are per topic, as elsewhere)."""
    assert subscription_id("t1", "g") != subscription_id("t2", "g")
