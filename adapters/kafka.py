"""The Kafka bus (``bus: kafka``, aiokafka): a topic per cemesh topic, a consumer group per group.

Model:

- Topic ``t`` is the Kafka topic :func:`kafka_topic` (``t`` itself when it is a legal Kafka
  name, which cemesh's ``cemesh.broker.<ns>.<name>`` and ``cemesh.trigger.<uuid>`` are). Topics
  are created on first use (publish or subscribe) through the admin API with ``num_partitions``
  and ``replication_factor``; a topic that already exists is used as it is, and a server that
  refuses CreateTopics is left to auto-create it. A group is the Kafka consumer group of the same
  name (group ids may be any string).
- Records use the CloudEvents Kafka binding, binary mode (C71): the value is ``data`` as is, the
  ``content-type`` header holds ``datacontenttype`` and every other attribute is a UTF-8 header
  ``ce_<name>``, so other Kafka consumers (Knative's among them) read the events natively. What
  the binding cannot say travels in two cemesh headers that other consumers ignore:
  ``cemesh_attribute_types`` (JSON ``{name: "Integer" | "Boolean"}`` for the attributes that
  are not strings; without it ``True``, ``1`` and ``"1"`` would all come back as strings) and
  ``cemesh_no_data`` (the event has no data, as opposed to empty data). Records written by other
  producers in structured mode (C72, ``application/cloudevents+json``) are read too; a record
  that is no CloudEvent in either mode cannot be delivered, so it is logged and passed over
  (committed) rather than stalling its partition. The record
  key is the ``key`` argument of ``publish`` (C73: the producer's key is the record key; ingress
  passes the ``partitionkey`` extension) and comes back as ``Message.key``.
- ``publish`` returns once the server acknowledged the record with ``acks=all`` (replicated to
  every in-sync replica). Errors the client flags retriable, timeouts and lost connections are
  retryable PublishErrors; an oversized event or a refused authorisation is terminal.
- ``subscribe`` makes the group's position explicit before it returns: every partition the group
  has no committed offset for gets the partition's current end committed (with a stand-alone
  commit, as a group without members accepts), so the group starts exactly at "now" and gets
  everything published after ``subscribe`` returned, however long the join takes. Partitions
  the group never committed later (added partitions) are read from their start
  (``auto_offset_reset=earliest``): nothing is skipped. It then joins the group and waits (at
  most ``join_timeout_ms``) until it has its assignment, so that competing subscriptions share
  a settled group before events flow. Subscriptions of one group compete through Kafka's
  rebalancing; each subscription is one group member with its own consumer.
- Consuming: records are fetched while the subscription holds fewer than ``max_buffered``
  unsettled messages and handed to ``concurrency`` handler tasks. The handler returning acks;
  :class:`~broker.bus.Nack` redelivers after its delay; another exception is logged and
  redelivered after :data:`ERROR_REDELIVERY_DELAY`. A failed message is redelivered from memory
  (it is not re-fetched): its partition's commit point stays at it, so if this consumer dies or
  loses the partition first, the group's next owner re-reads it from Kafka. Offsets are committed
  (at most every :data:`COMMIT_INTERVAL`) up to the first offset of each partition that is not
  acked yet: only the contiguous prefix of settled offsets, never past a message in a handler or
  awaiting redelivery.
- Order (``ORDERED_BY_KEY``): a group subscribed with ``ordered=True`` runs one message per key
  of a partition at a time, in offset order, and holds a key's later messages behind one awaiting
  redelivery; other keys and partitions run concurrently (messages without a key are not
  ordered). Kafka keeps a key in one partition and a partition with one member, so the order
  holds for the group across its subscriptions too.
- Rebalance: revoked partitions stop being handed out at once; their messages already in a
  handler get up to ``rebalance_grace_ms`` to finish, then what is settled is committed and the
  handlers still running are cancelled, and nothing they do afterwards is committed: the
  partition's new owner starts from the committed offset. ``close`` (of a subscription or the
  bus) cancels its handlers without acking them, commits the settled prefix and leaves the group,
  so the rest of the group takes its partitions over at once.
- ``Message.attempt`` (``REDELIVERY_COUNT``) counts deliveries in this process: redeliveries of
  a subscription, and (through a bounded per-bus table) deliveries made by a closed subscription
  or one that lost the partition in a rebalance, to the next subscription of the same group in
  this bus. Kafka keeps no delivery count, so a message re-read by another process (after a
  crash, or a partition moving to another replica) starts again at 1.
- ``delete_group`` closes the group's subscriptions of this bus (leaving the group), then
  deletes the Kafka consumer group with its committed offsets (DeleteGroups, sent to the group's
  coordinator; Tansu supports it). A Kafka group is not tied to one topic, so this removes the
  group for every topic it consumed (cemesh uses a group for one topic only). A group that does
  not exist is fine; one that still has members (a subscription in another process) is refused
  by the server: a retryable BusError.
- Settling is at-least-once: a crash, or a rebalance cancelling a handler, redelivers messages
  whose handler had already run, and messages acked behind an unacked one are re-read with it.

Options (settings ``kafka_<option>``): ``bootstrap_servers`` (comma-separated ``host:port``),
``security_protocol`` (``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``),
``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``), ``sasl_username``,
``sasl_password``, ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``, ``num_partitions`` (3),
``replication_factor`` (1), ``session_timeout_ms`` (10000), ``heartbeat_interval_ms`` (a third
of the session timeout, at most 3000), ``request_timeout_ms`` (40000), ``rebalance_grace_ms``
(5000), ``join_timeout_ms`` (60000), ``max_buffered`` (1000 unsettled messages per
subscription, raised to ``4 * concurrency``), ``client_id`` (``cemesh``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import ssl
import string
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.structs import ConsumerRecord

from broker.bus import BusFactory, Capability, Handler, Message, run_handler
from broker.errors import BusError, PublishError, SubscribeError
from broker.events import AttributeValue, CloudEvent, attribute_text

log = logging.getLogger(__name__)

# Redelivery delay after a handler raised something other than Nack: long enough that a handler
# failing on every message does not busy-loop, short enough not to matter for a transient error.
ERROR_REDELIVERY_DELAY = 0.05
# Commits are batched: at most one per interval per subscription (plus one on revoke and close).
# A crash re-delivers what was acked within the last interval (plus the commit's round trip)
# and what was in a handler. At 0.1 s a crash in the crash test re-delivered ~1% of what was
# accepted; at 25 ms it is a few events, for at most 40 small commits a second per subscription.
COMMIT_INTERVAL = 0.025
# How long the fetch loop may wait for room before it polls anyway: a consumer that does not
# poll for max_poll_interval_ms (300 s) is put out of its group.
KEEPALIVE_POLL = 60.0
# Per-bus memory of delivery counts of messages a closed or revoked subscription left unacked.
ATTEMPTS_REMEMBERED = 100_000
# How long close waits for the final commit and for leaving the group.
CLOSE_TIMEOUT = 10.0

TYPES_HEADER = "cemesh_attribute_types"
NO_DATA_HEADER = "cemesh_no_data"
_TYPE_NAMES = {"Integer": int, "Boolean": bool}

_LEGAL_TOPIC_CHARS = frozenset(string.ascii_letters + string.digits + ".-")
_MAX_TOPIC_LENGTH = 249
_TOPIC_EXISTS = kafka_errors.TopicAlreadyExistsError.errno
# CreateTopics answers meaning "not by you": the topic is then left to the server's auto-create.
_CREATE_REFUSED = frozenset(
    error.errno
    for error in (
        kafka_errors.ClusterAuthorizationFailedError,
        kafka_errors.TopicAuthorizationFailedError,
        kafka_errors.UnsupportedVersionError,
        kafka_errors.PolicyViolationError,
    )
)
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# DeleteGroups answers meaning the group is gone already (or never was): delete is idempotent.
_GROUP_GONE = frozenset((0, kafka_errors.GroupIdNotFound.errno))
_NON_EMPTY_GROUP = kafka_errors.NonEmptyGroup.errno


# -- names and the wire format (pure) -------------------------------------------------------------


def kafka_topic(topic: str) -> str:
    """The Kafka topic of cemesh topic ``topic``: itself when legal, else an injective escape.

    Kafka topic names are 1-249 characters of ``[A-Za-z0-9._-]``, not ``.`` or ``..``. Every
    other character, and ``_`` itself (so that escapes cannot collide with plain names), becomes
    ``_<hex code point>_``; a name still too long keeps its first 232 characters plus ``-`` and
    16 hex digits of its SHA-256.
    """
    name = "".join(ch if ch in _LEGAL_TOPIC_CHARS else f"_{ord(ch):x}_" for ch in topic)
    if name in ("", ".", ".."):
        name = "".join(f"_{ord(ch):x}_" for ch in name) or "_"
    if len(name) > _MAX_TOPIC_LENGTH:
        digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name[: _MAX_TOPIC_LENGTH - 17]}-{digest}"
    return name


Headers = list[tuple[str, bytes]]


def encode_record(event: CloudEvent) -> tuple[bytes, Headers]:
    """The record value and headers of ``event`` (Kafka binding, binary mode, C71)."""
    headers: Headers = []
    types: dict[str, str] = {}
    for name, value in event.attributes.items():
        if isinstance(value, bool):
            types[name] = "Boolean"
        elif isinstance(value, int):
            types[name] = "Integer"
        elif name == "datacontenttype":
            headers.append(("content-type", value.encode()))
            continue
        headers.append(("ce_" + name, attribute_text(value).encode()))
    if types:
        headers.append((TYPES_HEADER, json.dumps(types, separators=(",", ":")).encode()))
    if event.data is None:
        headers.append((NO_DATA_HEADER, b"1"))
        return b"", headers
    return event.data, headers


def decode_record(value: bytes | None, headers: Any) -> CloudEvent:
    """The event of a record: binary mode (C71) or structured JSON (C72). ValueError otherwise."""
    attributes: dict[str, AttributeValue] = {}
    content_type: str | None = None
    types: Any = {}
    no_data = False
    for name, raw in headers:
        if name.startswith("ce_"):
            attributes[name[3:]] = raw.decode()
        elif name.lower() == "content-type":
            content_type = raw.decode()
        elif name == TYPES_HEADER:
            types = json.loads(raw)
        elif name == NO_DATA_HEADER:
            no_data = True
    if "specversion" not in attributes:
        if content_type is not None and content_type.startswith("application/cloudevents+json"):
            return _decode_structured(value or b"")
        raise ValueError("neither a binary-mode nor a structured CloudEvents record")
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    if not isinstance(types, dict):
        raise ValueError(f"bad {TYPES_HEADER} header")
    for name, type_name in types.items():
        text = attributes.get(name)
        if type_name == "Boolean" and text in ("true", "false"):
            attributes[name] = text == "true"
        elif type_name == "Integer" and isinstance(text, str):
            attributes[name] = int(text)
        else:
            raise ValueError(f"bad {TYPES_HEADER} entry {name!r}: {type_name!r}")
    return CloudEvent(attributes, None if no_data or value is None else value)


def _decode_structured(value: bytes) -> CloudEvent:
    """A JSON-format event (``application/cloudevents+json``) written by another producer."""
    document = json.loads(value)
    if not isinstance(document, dict):
        raise ValueError("a structured record is not a JSON object")
    data: bytes | None = None
    if "data_base64" in document:
        data = base64.b64decode(document.pop("data_base64"))
    elif "data" in document:
        payload = document.pop("data")
        content_type = str(document.get("datacontenttype", "application/json"))
        is_json = content_type.split(";")[0].strip().endswith(("/json", "+json"))
        if isinstance(payload, str) and not is_json:
            data = payload.encode()
        else:
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    attributes: dict[str, AttributeValue] = {}
    for name, attribute in document.items():
        if isinstance(attribute, str | int | bool):
            attributes[name] = attribute
        elif attribute is not None:
            raise ValueError(f"attribute {name!r} is not a string, integer or boolean")
    if "specversion" not in attributes:
        raise ValueError("a structured record without specversion")
    return CloudEvent(attributes, data)


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaOptions:
    """The adapter's options (see the module docstring); built by :meth:`parse`."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    num_partitions: int = 3
    replication_factor: int = 1
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int | None = None
    request_timeout_ms: int = 40_000
    rebalance_grace_ms: int = 5_000
    join_timeout_ms: int = 60_000
    max_buffered: int = 1_000
    client_id: str = "cemesh"

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> KafkaOptions:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise BusError(f"kafka bus: unknown options {unknown}", retryable=False)
        values: dict[str, Any] = {}
        for name, value in options.items():
            if value is None:
                continue
            if known[name].type in ("int", "int | None"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise BusError(
                        f"kafka bus: {name} must be a positive integer, not {value!r}",
                        retryable=False,
                    )
            elif not isinstance(value, str):
                raise BusError(
                    f"kafka bus: {name} must be a string, not {value!r}", retryable=False
                )
            values[name] = value
        parsed = cls(**values)
        if parsed.security_protocol not in _PROTOCOLS:
            raise BusError(
                f"kafka bus: security_protocol must be one of {', '.join(_PROTOCOLS)}, "
                f"not {parsed.security_protocol!r}",
                retryable=False,
            )
        return parsed

    @property
    def heartbeat_ms(self) -> int:
        """Heartbeats must come well within the session timeout for a member to stay in."""
        if self.heartbeat_interval_ms is not None:
            return self.heartbeat_interval_ms
        return max(1, min(3_000, self.session_timeout_ms // 3))

    def client_kwargs(self) -> dict[str, Any]:
        """Connection settings shared by producer, consumers and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            try:
                kwargs["ssl_context"] = create_ssl_context(
                    cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
                )
            except (OSError, ssl.SSLError) as exc:
                raise BusError(f"kafka bus: bad TLS files: {exc}", retryable=False) from exc
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs


def _retryable(exc: BaseException) -> bool:
    """Whether trying again may help: the client's own flag, plus timeouts and lost links."""
    if isinstance(exc, kafka_errors.ProducerClosed):
        return False
    if isinstance(exc, kafka_errors.KafkaTimeoutError | kafka_errors.KafkaConnectionError):
        return True
    return bool(getattr(exc, "retriable", False))


# -- consuming ------------------------------------------------------------------------------------


class _Entry:
    """One fetched record of one partition, until its offset is committed."""

    __slots__ = ("deliveries", "done", "event", "key", "offset", "partition", "timer")

    def __init__(
        self, partition: _Partition, offset: int, event: CloudEvent | None, key: str | None
    ) -> None:
        self.partition = partition
        self.offset = offset
        self.event = event  # None once settled (done entries wait only for the commit point)
        self.key = key
        self.deliveries = 0
        self.done = event is None
        self.timer: asyncio.TimerHandle | None = None


class _Partition:
    """What one subscription holds of one assigned partition."""

    __slots__ = (
        "commit_to",
        "committed",
        "draining",
        "in_handler",
        "lanes",
        "lost",
        "next_offset",
        "pending",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: deque[_Entry] = deque()  # fetched, offset order, up to the first unsettled
        self.next_offset = 0  # after the last offset fetched
        self.commit_to: int | None = None  # the offset after the settled prefix
        self.committed = -1  # what this subscription last committed
        self.draining = False  # revoked: hand nothing more out
        self.lost = False  # revoked and given up: ignore whatever its handlers still do
        self.in_handler = 0
        # ordered groups: key -> later messages of that key, behind the one in a handler or
        # awaiting redelivery. A key is present while one of its messages is out.
        self.lanes: dict[str, deque[_Entry]] = {}

    def advance(self) -> bool:
        """Drop the settled prefix; True when the commit point moved."""
        pending = self.pending
        moved = False
        while pending and pending[0].done:
            self.commit_to = pending.popleft().offset + 1
            moved = True
        return moved


class _Listener(ConsumerRebalanceListener):
    def __init__(self, subscription: _KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._subscription.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._subscription.assign(assigned)


class _KafkaSubscription:
    """One member of a consumer group: a consumer, a fetch loop, a committer, handler tasks."""

    def __init__(
        self,
        bus: KafkaBus,
        topic: str,
        group: str,
        handler: Handler,
        concurrency: int,
        ordered: bool,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._group = group
        self._handler = handler
        self._ordered = ordered
        self._concurrency = concurrency
        options = bus.options
        self._limit = max(options.max_buffered, 4 * concurrency)
        self._grace = options.rebalance_grace_ms / 1000
        self.consumer = AIOKafkaConsumer(
            **options.client_kwargs(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_ms,
        )
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._ready: deque[_Entry] = deque()  # deliverable, no handler task free yet
        self._getters: deque[asyncio.Future[_Entry]] = deque()  # handler tasks waiting
        self._room = asyncio.Event()  # a message was settled: the fetch loop may fetch more
        self._settled = asyncio.Event()  # a handler call ended (revoke waits on it)
        self._dirty = asyncio.Event()  # a commit point moved
        self._closing = asyncio.Event()
        self._assigned = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._buffered = 0  # fetched, not settled, of partitions still held
        self._running: dict[asyncio.Task[None], _Entry] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._loop = asyncio.get_running_loop()

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str:
        return self._group

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, kafka_name: str) -> None:
        await self.consumer.start()
        self.consumer.subscribe([kafka_name], listener=_Listener(self))
        name = f"kafka-bus {self._topic}/{self._group}"
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"{name} fetch"),
            asyncio.create_task(self._commit_loop(), name=f"{name} commit"),
        ]
        self._tasks += [
            asyncio.create_task(self._work(), name=f"{name} handler")
            for _ in range(self._concurrency)
        ]

    async def wait_assigned(self, limit: float) -> None:
        """Until the group gave this member its (possibly empty) assignment, or ``limit`` s."""
        try:
            await asyncio.wait_for(self._assigned.wait(), limit)
        except TimeoutError:
            # Safe: the group's offsets are set, so nothing published meanwhile will be missed.
            log.warning(
                "kafka group join not finished after %.0fs; consuming will start when it is",
                limit,
                extra={"topic": self._topic, "group": self._group},
            )

    async def close(self) -> None:
        """Cancel handlers (never an ack), commit the settled prefix, leave the group."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._settled.set()  # a revoke waiting for handlers stops waiting
        self._bus._subscriptions.discard(self)
        # A handler closing its own subscription is not cancelled: its task ends after it.
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        parts = list(self._partitions.values())
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._commit(parts, final=True)
                await self.consumer.stop()  # leaves the group: its partitions move at once
        except (TimeoutError, kafka_errors.KafkaError) as exc:
            log.warning("kafka consumer did not stop cleanly: %r", exc, extra=self._log_extra())
        finally:
            for part in parts:
                self._give_up(part)

    # -- rebalance (called by the consumer's coordinator) ----------------------------------------

    def assign(self, assigned: set[TopicPartition]) -> None:
        # Called before any record of these partitions is fetched (aiokafka's join completion).
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp)
        self._assigned.set()

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        parts = [self._partitions.pop(tp) for tp in revoked if tp in self._partitions]
        if not parts:
            return
        for part in parts:
            part.draining = True
        # Let handlers already running finish (bounded), so that their work is committed.
        deadline = self._loop.time() + self._grace
        while any(part.in_handler for part in parts) and not self._closing.is_set():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), remaining)
        await self._commit(parts, final=True)
        for part in parts:
            self._give_up(part)
        for task, entry in list(self._running.items()):
            if entry.partition.lost:
                task.cancel()  # the partition's next owner will deliver it again

    def _give_up(self, part: _Partition) -> None:
        """Forget a partition: its unsettled messages are for its next owner to read again."""
        part.draining = part.lost = True
        attempts = self._bus._attempts
        for entry in part.pending:
            if entry.timer is not None:
                entry.timer.cancel()
            if not entry.done:
                self._buffered -= 1
                if entry.deliveries:
                    key = (self._topic, self._group, part.tp.partition, entry.offset)
                    attempts[key] = entry.deliveries
                    attempts.move_to_end(key)
        while len(attempts) > ATTEMPTS_REMEMBERED:
            attempts.popitem(last=False)
        part.pending.clear()
        part.lanes.clear()
        self._room.set()

    # -- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        while True:
            room = self._limit - self._buffered
            if room <= 0:
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), KEEPALIVE_POLL)
                    continue
                except TimeoutError:
                    room = 1  # poll anyway (one record at most) to stay in the group
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=min(room, 500))
            except (kafka_errors.KafkaError, kafka_errors.ConsumerStoppedError) as exc:
                log.warning("kafka fetch failed: %r", exc, extra=self._log_extra())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 1.0)
                continue
            for tp, records in batches.items():
                part = self._partitions.get(tp)
                if part is None or part.draining:
                    continue  # no longer ours: the new owner reads them from the commit point
                for record in records:
                    if record.offset >= part.next_offset:  # never twice, never backwards
                        part.next_offset = record.offset + 1
                        self._admit(part, record)

    def _admit(self, part: _Partition, record: ConsumerRecord[Any, Any]) -> None:
        key = None if record.key is None else record.key.decode(errors="replace")
        try:
            event: CloudEvent | None = decode_record(record.value, record.headers)
        except (ValueError, UnicodeDecodeError) as exc:
            # Not a CloudEvent (another producer's record): nothing to deliver, so it is passed
            # over (logged) rather than stalling its partition for ever.
            log.error(
                "kafka record is not a CloudEvent; skipped: %s",
                exc,
                extra={
                    **self._log_extra(),
                    "partition": part.tp.partition,
                    "offset": record.offset,
                },
            )
            event = None
        entry = _Entry(part, record.offset, event, key)
        part.pending.append(entry)
        if event is None:
            if part.advance():
                self._dirty.set()
            return
        remembered = (self._topic, self._group, part.tp.partition, record.offset)
        entry.deliveries = self._bus._attempts.pop(remembered, 0)
        self._buffered += 1
        if self._ordered and key is not None:
            lane = part.lanes.get(key)
            if lane is not None:
                lane.append(entry)  # behind the key's message that is out
                return
            part.lanes[key] = deque()
        self._put(entry)

    # -- handling -------------------------------------------------------------------------------

    def _put(self, entry: _Entry) -> None:
        """Hand ``entry`` to a waiting handler task (one, not all of them), or queue it."""
        getters = self._getters
        while getters:
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(entry)
                return
        self._ready.append(entry)

    async def _next(self) -> _Entry:
        while True:
            if self._ready:
                entry = self._ready.popleft()
            else:
                getter = self._loop.create_future()
                self._getters.append(getter)
                try:
                    entry = await getter
                except asyncio.CancelledError:
                    if getter.done() and not getter.cancelled():
                        self._ready.appendleft(getter.result())  # handed one, not delivered
                    else:
                        with contextlib.suppress(ValueError):
                            self._getters.remove(getter)
                    raise
            if not entry.partition.draining:
                return entry

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        handler = self._handler
        # The closing check is for handlers that swallow the cancellation of close().
        while not self._closing.is_set():
            entry: _Entry | None = None
            try:
                entry = await self._next()
                part = entry.partition
                assert entry.event is not None
                entry.deliveries += 1
                self._running[task] = entry
                part.in_handler += 1
                try:
                    delay = await run_handler(
                        handler,
                        Message(entry.event, entry.key, entry.deliveries),
                        error_delay=ERROR_REDELIVERY_DELAY,
                        logger=log,
                        log_extra=self._log_extra(),
                    )
                finally:
                    part.in_handler -= 1
                    del self._running[task]
                    self._settled.set()
                if self._closing.is_set() or part.lost:
                    # Closed or revoked meanwhile (the handler may have swallowed our
                    # cancellation, whose count is then reset): still not an ack.
                    while not self._closing.is_set() and task.cancelling():
                        task.uncancel()
                    continue
                if delay is None:
                    self._ack(entry)
                else:
                    self._redeliver(entry, delay)
            except asyncio.CancelledError:
                if self._closing.is_set():
                    raise  # close: the entry stays unsettled, for the group's next consumer
                task.uncancel()  # a revoked partition's handler was cancelled; carry on
                if entry is not None and not entry.partition.lost and not entry.done:
                    self._redeliver(entry, ERROR_REDELIVERY_DELAY)  # a stray cancellation

    def _ack(self, entry: _Entry) -> None:
        part = entry.partition
        entry.done = True
        entry.event = None
        self._buffered -= 1
        self._room.set()
        if self._ordered and entry.key is not None:
            lane = part.lanes[entry.key]
            if lane:
                self._put(lane.popleft())
            else:
                del part.lanes[entry.key]
        if part.advance():
            self._dirty.set()

    def _redeliver(self, entry: _Entry, delay: float) -> None:
        # Even without a delay, through the loop: a handler that nacks at once must not spin.
        entry.timer = self._loop.call_later(max(delay, 0.0), self._requeue, entry)

    def _requeue(self, entry: _Entry) -> None:
        entry.timer = None
        if not entry.partition.draining and not self._closing.is_set():
            self._put(entry)

    # -- committing -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self._commit(list(self._partitions.values())):
                self._dirty.set()  # try again after the interval (a rebalance is under way)
            await asyncio.sleep(COMMIT_INTERVAL)

    async def _commit(self, parts: list[_Partition], *, final: bool = False) -> bool:
        """Commit each partition's settled prefix; False if the group refused (rebalancing)."""
        async with self._commit_lock:  # in order, so that a commit point never goes back
            offsets = {
                part.tp: part.commit_to
                for part in parts
                if part.commit_to is not None and part.commit_to > part.committed and not part.lost
            }
            if not offsets:
                return True
            try:
                await self.consumer.commit(offsets)
            except (kafka_errors.KafkaError, AssertionError) as exc:
                # Those messages will be redelivered to the partitions' next owner: at least once.
                level = logging.WARNING if final else logging.INFO
                log.log(level, "kafka commit failed: %r", exc, extra=self._log_extra())
                return False
            for part in parts:
                committed = offsets.get(part.tp)
                if committed is not None:
                    part.committed = committed
            return True

    def _log_extra(self) -> dict[str, Any]:
        return {"topic": self._topic, "group": self._group}


# -- the bus --------------------------------------------------------------------------------------


class KafkaBus:
    """The Kafka bus (``bus: kafka``); see the module docstring for options and behaviour."""

    name = "kafka"
    capabilities = frozenset(
        {
            Capability.DURABLE,
            Capability.NACK_DELAY,
            Capability.ORDERED_BY_KEY,
            Capability.REDELIVERY_COUNT,
        }
    )

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = KafkaOptions.parse(options or {})
        self._client_kwargs = self.options.client_kwargs()  # fails early on bad TLS files
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._open_lock = asyncio.Lock()
        self._topics: dict[str, asyncio.Future[None]] = {}  # Kafka name -> created (or exists)
        self._subscriptions: set[_KafkaSubscription] = set()
        self._attempts: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()
        self._closed = False

    async def open(self) -> None:
        """Connect the producer and the admin client. Idempotent; a closed bus stays closed."""
        if self._closed:
            raise BusError("kafka bus is closed", retryable=False)
        async with self._open_lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                **self._client_kwargs,
                acks="all",
                # Tansu and some managed services lack idempotent producers; with one request
                # in flight per partition, retries keep the order anyway.
                enable_idempotence=False,
            )
            admin = AIOKafkaAdminClient(**self._client_kwargs)
            try:
                await producer.start()
                await admin.start()
            except kafka_errors.KafkaError as exc:
                await producer.stop()
                await admin.close()
                raise BusError(
                    f"kafka bus: cannot connect to {self.options.bootstrap_servers}: {exc!r}",
                    retryable=_retryable(exc),
                ) from exc
            self._producer, self._admin = producer, admin

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Return once the server acknowledged the record with ``acks=all``."""
        if self._closed:
            raise PublishError("kafka bus is closed", retryable=False)
        try:
            await self.open()
            name = kafka_topic(topic)
            await self._ensure_topic(name)
            producer = self._producer
            if producer is None:
                raise PublishError("kafka bus closed while publishing", retryable=False)
            value, headers = encode_record(event)
            key_bytes = None if key is None else key.encode()
            delivery = await producer.send(name, value, key=key_bytes, headers=headers)
            await delivery
        except BusError as exc:
            raise PublishError(exc.message, retryable=exc.retryable) from exc
        except kafka_errors.KafkaError as exc:
            raise PublishError(
                f"kafka bus: publish to {topic!r} failed: {exc!r}", retryable=_retryable(exc)
            ) from exc
        except UnicodeEncodeError as exc:  # a lone surrogate in an attribute or the key
            raise PublishError(f"kafka bus: event not encodable: {exc}", retryable=False) from exc

    async def subscribe(
        self,
        topic: str,
        *,
        group: str,
        handler: Handler,
        concurrency: int = 1,
        ordered: bool = False,
    ) -> _KafkaSubscription:
        """Join ``group`` on ``topic``; live on return (see the module docstring)."""
        if self._closed:
            raise SubscribeError("kafka bus is closed", retryable=False)
        if concurrency < 1:
            raise SubscribeError(f"concurrency must be >= 1, not {concurrency}", retryable=False)
        subscription: _KafkaSubscription | None = None
        try:
            await self.open()
            name = kafka_topic(topic)
            await self._ensure_topic(name)
            await self._start_group_at_end(name, group)
            subscription = _KafkaSubscription(self, topic, group, handler, concurrency, ordered)
            self._subscriptions.add(subscription)
            await subscription.start(name)
        except (BusError, kafka_errors.KafkaError) as exc:
            if subscription is not None:
                await subscription.close()
            retryable = exc.retryable if isinstance(exc, BusError) else _retryable(exc)
            raise SubscribeError(
                f"kafka bus: subscribe to {topic!r} as {group!r} failed: {exc}",
                retryable=retryable,
            ) from exc
        await subscription.wait_assigned(self.options.join_timeout_ms / 1000)
        if self._closed:
            await subscription.close()
            raise SubscribeError("kafka bus closed while subscribing", retryable=False)
        return subscription

    async def delete_group(self, topic: str, group: str) -> None:
        """Close ``group``'s subscriptions here, then delete the consumer group and its offsets."""
        if self._closed:
            raise BusError("kafka bus is closed", retryable=False)
        mine = [s for s in self._subscriptions if (s.topic, s.group) == (topic, group)]
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        for remembered in [k for k in self._attempts if k[:2] == (topic, group)]:
            del self._attempts[remembered]
        try:
            await self.open()
            admin = self._admin
            if admin is None:
                raise BusError("kafka bus closed while deleting a group", retryable=False)
            coordinator = await admin.find_coordinator(group)
            # aiokafka's admin client has no delete_consumer_groups: the request is sent to the
            # group's coordinator as its own methods send theirs.
            response = await admin._send_request_to_node(coordinator, DeleteGroupsRequest([group]))
        except kafka_errors.KafkaError as exc:
            if isinstance(exc, kafka_errors.GroupIdNotFound):
                return  # the coordinator lookup of an unknown group, on some servers
            raise BusError(
                f"kafka bus: cannot delete group {group!r}: {exc!r}", retryable=_retryable(exc)
            ) from exc
        for _, code in response.results:
            if code not in _GROUP_GONE:
                error = kafka_errors.for_code(code)
                raise BusError(
                    f"kafka bus: cannot delete group {group!r}: {error.__name__}",
                    # NON_EMPTY_GROUP: a member in another process; it may leave.
                    retryable=bool(error.retriable) or code == _NON_EMPTY_GROUP,
                )

    async def close(self) -> None:
        """Close every subscription (cancelling handlers, never acking), then disconnect."""
        self._closed = True
        subscriptions = list(self._subscriptions)
        if subscriptions:
            await asyncio.gather(*(s.close() for s in subscriptions), return_exceptions=True)
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        if producer is not None:
            with contextlib.suppress(kafka_errors.KafkaError):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(kafka_errors.KafkaError):
                await admin.close()

    # -- topics and group positions -------------------------------------------------------------

    async def _ensure_topic(self, name: str) -> None:
        """Create Kafka topic ``name`` once per bus (concurrent callers share the attempt)."""
        created = self._topics.get(name)
        if created is None:
            created = self._topics[name] = asyncio.ensure_future(self._create_topic(name))
            # A failure is not remembered: the next caller tries again.
            created.add_done_callback(
                lambda f: self._topics.pop(name, None) if f.cancelled() or f.exception() else None
            )
        await asyncio.shield(created)

    async def _create_topic(self, name: str) -> None:
        assert self._admin is not None and self._producer is not None
        options = self.options
        topic = NewTopic(name, options.num_partitions, options.replication_factor)
        try:
            response = await self._admin.create_topics([topic])
        except kafka_errors.KafkaError as exc:
            if _retryable(exc):
                raise
            # CreateTopics refused (no permission, unsupported): rely on auto-creation.
            log.warning("kafka CreateTopics for %s refused (%r); relying on auto-create", name, exc)
        else:
            for _, code, *message in response.topic_errors:
                if code in (0, _TOPIC_EXISTS):
                    continue
                error = kafka_errors.for_code(code)
                if code not in _CREATE_REFUSED:  # a bad partition count, replication factor...
                    raise error(f"cannot create topic {name}: {message}")
                log.warning("kafka CreateTopics for %s: %s %s", name, error.__name__, message)
        await self._producer.partitions_for(name)  # until the metadata knows its partitions

    async def _start_group_at_end(self, name: str, group: str) -> None:
        """Commit the end offset for every partition ``group`` has no offset for yet."""
        assert self._producer is not None
        partitions = await self._producer.partitions_for(name)
        tps = [TopicPartition(name, p) for p in sorted(partitions)]
        consumer = AIOKafkaConsumer(**self._client_kwargs, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            missing = [tp for tp in tps if await consumer.committed(tp) is None]
            if not missing:
                return
            ends = await consumer.end_offsets(missing)
            try:
                await consumer.commit(ends)
            except kafka_errors.CommitFailedError:
                # The group has live members, so it has started already: they set its offsets.
                log.info("kafka group %s is active; keeping its offsets", group)
        finally:
            await consumer.stop()


# Checked by mypy: KafkaBus is a BusFactory building a Bus.
_factory: BusFactory = KafkaBus
