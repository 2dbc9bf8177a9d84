"""The Kafka bus (``bus: kafka``): a topic per cemesh topic, a consumer group per group.

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
  everything published after ``subscribe`` returned, however long the join takes. The end is
  the larger of ListOffsets' answer and a Fetch's high watermark (Tansu 0.6 lists the start of
  the last record batch, see ``_log_ends``). Partitions
  the group never committed later (added partitions) are read from their start
  (``auto_offset_reset=earliest``): nothing is skipped. It then joins the group and waits (at
  most ``join_timeout_ms``) until it has its assignment, so that competing subscriptions share
  a settled group before events flow. Subscriptions of one group compete through Kafka's
  rebalancing; each subscription is one group member with its own consumer.
- Consuming: records are fetched while the subscription holds fewer than ``max_buffered``
  unsettled messages and handed to ``concurrency`` handler tasks. The handler returning acks;
  :class:`~broker.dataplane.bus.Nack` redelivers after its delay; another exception is logged and
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
- ``delete_topic`` closes every subscription of the topic in this bus, then deletes the Kafka
  topic (DeleteTopics; an unknown topic is fine). Consumer groups are not tied to a topic, and a
  server may keep the offsets a group committed on the old topic; ``subscribe`` therefore treats
  a committed offset beyond the partition's end as none and starts the group at the end, so a
  group coming back to a new topic of the old name starts at "now", not wherever its old offset
  happens to fall in the new topic.
- Settling is at-least-once: a crash, or a rebalance cancelling a handler, redelivers messages
  whose handler had already run, and messages acked behind an unacked one are re-read with it.

- Drivers (``driver``): ``aiokafka`` (pure Python) or ``confluent`` (librdkafka through
  confluent-kafka, :mod:`.librdkafka_producer` and :mod:`.librdkafka_consumer`), which does the
  records' encoding, batching and network I/O in C threads: less CPU per event on the event
  loop. Both behave as described here; admin requests (topics, group offsets, DeleteGroups) go
  through aiokafka with either. The producer batches records for up to ``linger_ms``.

Options: :class:`~adapters.kafka.options.KafkaOptions` (each also the setting
``kafka_<option>``), where their defaults, limits and meanings are declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import DeleteGroupsRequest

from adapters.kafka.client import client_kwargs, retryable
from adapters.kafka.consumer import Attempts, KafkaSubscription
from adapters.kafka.librdkafka import load as load_librdkafka
from adapters.kafka.librdkafka_producer import LibrdkafkaProducer
from adapters.kafka.options import KafkaOptions
from adapters.kafka.wire import encode_record, kafka_topic
from broker.core.errors import BusError, PublishError, SubscribeError
from broker.core.events import CloudEvent
from broker.dataplane.bus import BusFactory, Capability, Handler
from broker.dataplane.bus.arguments import check_subscribe
from broker.dataplane.bus.options import parse_options

log = logging.getLogger(__package__)  # one logger per adapter: adapters.<name>

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
# Finding a partition's end (see _log_ends): how long one fetch may wait at the end of a log,
# and how long finding every partition's high watermark may take in all.
END_PROBE_FETCH_WAIT_MS = 50
END_PROBE_TIMEOUT = 5.0
# DeleteGroups answers meaning the group is gone already (or never was): delete is idempotent.
_GROUP_GONE = frozenset((0, kafka_errors.GroupIdNotFound.errno))
_NON_EMPTY_GROUP = kafka_errors.NonEmptyGroup.errno
# DeleteTopics answers meaning the topic is gone already (or never was): delete is idempotent.
_TOPIC_GONE = frozenset((0, kafka_errors.UnknownTopicOrPartitionError.errno))


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
        self.options = parse_options(KafkaOptions, self.name, options)
        self._client_kwargs = client_kwargs(self.options)  # fails early on bad TLS files
        if self.options.driver == "confluent":
            load_librdkafka()  # fails early (BusClientMissing) when confluent-kafka is missing
        self._producer: AIOKafkaProducer | None = None  # metadata; records with aiokafka
        self._fast_producer: LibrdkafkaProducer | None = None  # records with driver confluent
        self._admin: AIOKafkaAdminClient | None = None
        self._open_lock = asyncio.Lock()
        self._topics: dict[str, asyncio.Future[None]] = {}  # Kafka name -> created (or exists)
        self._kafka_names: dict[str, str] = {}  # cemesh topic -> Kafka name (kafka_topic's)
        self._subscriptions: set[KafkaSubscription] = set()
        self._attempts: Attempts = OrderedDict()
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
                linger_ms=self.options.linger_ms,
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
                    retryable=retryable(exc),
                ) from exc
            if self.options.driver == "confluent":
                try:
                    self._fast_producer = LibrdkafkaProducer(self.options)
                except BusError:
                    await producer.stop()
                    await admin.close()
                    raise
            self._producer, self._admin = producer, admin

    async def publish(self, topic: str, event: CloudEvent, *, key: str | None = None) -> None:
        """Return once the server acknowledged the record with ``acks=all``."""
        await self._publish(topic, ((event, key),))

    async def publish_batch(self, topic: str, events: Sequence[CloudEvent]) -> None:
        """Queue every record (in order) before awaiting any acknowledgement (PublishesBatch)."""
        await self._publish(topic, [(event, event.key) for event in events])

    async def _publish(self, topic: str, records: Sequence[tuple[CloudEvent, str | None]]) -> None:
        if self._closed:
            raise PublishError("kafka bus is closed", retryable=False)
        try:
            if self._producer is None:
                await self.open()
            name = self._kafka_names.get(topic)
            if name is None:
                name = self._kafka_names[topic] = kafka_topic(topic)
            if not self._topic_ready(name):
                await self._ensure_topic(name)
            producer = self._producer
            if producer is None:
                raise PublishError("kafka bus closed while publishing", retryable=False)
            acknowledged: list[asyncio.Future[Any]] = []
            fast = self._fast_producer
            try:
                for event, key in records:
                    value, headers = encode_record(event)
                    key_bytes = None if key is None else key.encode()
                    if fast is not None:
                        acknowledged.append(fast.produce(name, value, key_bytes, headers))
                    else:
                        sent = await producer.send(name, value, key=key_bytes, headers=headers)
                        acknowledged.append(sent)
            except Exception:
                # A record could not be queued: those before it are on their way; wait for them.
                await asyncio.gather(*acknowledged, return_exceptions=True)
                raise
            if len(acknowledged) == 1:  # one publish: the common case, without gather
                await acknowledged[0]
            else:
                await _all_settled(acknowledged)
        except BusError as exc:
            raise PublishError(exc.message, retryable=exc.retryable) from exc
        except kafka_errors.KafkaError as exc:
            raise PublishError(
                f"kafka bus: publish to {topic!r} failed: {exc!r}", retryable=retryable(exc)
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
    ) -> KafkaSubscription:
        """Join ``group`` on ``topic``; live on return (see the module docstring)."""
        check_subscribe(
            self.name,
            self.capabilities,
            closed=self._closed,
            concurrency=concurrency,
            ordered=ordered,
        )
        subscription: KafkaSubscription | None = None
        try:
            await self.open()
            name = kafka_topic(topic)
            await self._ensure_topic(name)
            await self._start_group_at_end(name, group)
            subscription = KafkaSubscription(
                self.options,
                topic,
                group,
                handler,
                concurrency,
                ordered,
                attempts=self._attempts,
                on_close=self._subscriptions.discard,
            )
            self._subscriptions.add(subscription)
            await subscription.start(name)
        except (BusError, kafka_errors.KafkaError) as exc:
            if subscription is not None:
                await subscription.close()
            transient = exc.retryable if isinstance(exc, BusError) else retryable(exc)
            raise SubscribeError(
                f"kafka bus: subscribe to {topic!r} as {group!r} failed: {exc}",
                retryable=transient,
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
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            if isinstance(exc, kafka_errors.GroupIdNotFound):
                return  # the coordinator lookup of an unknown group, on some servers
            raise BusError(
                f"kafka bus: cannot delete group {group!r}: {exc!r}", retryable=retryable(exc)
            ) from exc
        for _, code in response.results:
            if code not in _GROUP_GONE:
                error = kafka_errors.for_code(code)
                raise BusError(
                    f"kafka bus: cannot delete group {group!r}: {error.__name__}",
                    # NON_EMPTY_GROUP: a member in another process; it may leave.
                    retryable=bool(error.retriable) or code == _NON_EMPTY_GROUP,
                )

    async def delete_topic(self, topic: str) -> None:
        """Close ``topic``'s subscriptions here, then delete the Kafka topic. Idempotent."""
        if self._closed:
            raise BusError("kafka bus is closed", retryable=False)
        mine = [s for s in self._subscriptions if s.topic == topic]
        if mine:
            await asyncio.gather(*(s.close() for s in mine), return_exceptions=True)
        for remembered in [k for k in self._attempts if k[0] == topic]:
            del self._attempts[remembered]
        name = kafka_topic(topic)
        self._topics.pop(name, None)  # the next use creates it again
        try:
            await self.open()
            admin = self._admin
            if admin is None:
                raise BusError("kafka bus closed while deleting a topic", retryable=False)
            response = await admin.delete_topics([name])
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            if isinstance(exc, kafka_errors.UnknownTopicOrPartitionError):
                return
            raise BusError(
                f"kafka bus: cannot delete topic {name!r}: {exc!r}", retryable=retryable(exc)
            ) from exc
        for _, code, *_rest in response.topic_error_codes:
            if code not in _TOPIC_GONE:
                error = kafka_errors.for_code(code)
                raise BusError(
                    f"kafka bus: cannot delete topic {name!r}: {error.__name__}",
                    retryable=bool(error.retriable),
                )

    async def close(self) -> None:
        """Close every subscription (cancelling handlers, never acking), then disconnect."""
        self._closed = True
        subscriptions = list(self._subscriptions)
        if subscriptions:
            await asyncio.gather(*(s.close() for s in subscriptions), return_exceptions=True)
        producer, admin, fast = self._producer, self._admin, self._fast_producer
        self._producer = self._admin = self._fast_producer = None
        if fast is not None:
            with contextlib.suppress(BusError):
                await fast.close()
        if producer is not None:
            with contextlib.suppress(kafka_errors.KafkaError):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(kafka_errors.KafkaError):
                await admin.close()

    # -- topics and group positions -------------------------------------------------------------

    def _topic_ready(self, name: str) -> bool:
        """Whether Kafka topic ``name`` was created (or found) by this bus: no wait needed."""
        created = self._topics.get(name)
        return (
            created is not None
            and created.done()
            and not created.cancelled()
            and created.exception() is None
        )

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
            if retryable(exc):
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
        consumer = AIOKafkaConsumer(
            **self._client_kwargs,
            group_id=group,
            enable_auto_commit=False,
            fetch_max_wait_ms=END_PROBE_FETCH_WAIT_MS,
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await _log_ends(consumer, tps)
            # No offset yet, or one beyond the end: left from a deleted topic of the same name.
            starts = {}
            for tp in tps:
                offset = await consumer.committed(tp)
                if offset is None or offset > ends[tp]:
                    starts[tp] = ends[tp]
            if not starts:
                return
            try:
                await consumer.commit(starts)
            except kafka_errors.CommitFailedError:
                # The group has live members, so it has started already: they set its offsets.
                log.info("kafka group %s is active; keeping its offsets", group)
        finally:
            await consumer.stop()


async def _log_ends(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Each partition's end: the offset the next record will get.

    ListOffsets (``end_offsets``) says so on Apache Kafka, but Tansu 0.6 answers the base offset
    of the partition's last record batch plus one: behind the end whenever that batch holds more
    than one record (a batched publish, a producer's linger), so a group started there would be
    handed records published before it subscribed, and a committed offset inside that batch would
    look "beyond the end". A Fetch's high watermark is right on both, so the end is the larger of
    the two, with one fetch round from the listed offsets (bounded; without an answer the listed
    offset stands).
    """
    listed = await consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(END_PROBE_TIMEOUT):
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(*tps, timeout_ms=END_PROBE_FETCH_WAIT_MS)
    return {tp: max(listed[tp], consumer.highwater(tp) or 0) for tp in tps}


async def _all_settled(futures: list[asyncio.Future[Any]]) -> None:
    """Wait until none of ``futures`` is pending; raise the first failure, if any."""
    for outcome in await asyncio.gather(*futures, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


# Checked by mypy: KafkaBus is a BusFactory building a Bus.
_factory: BusFactory = KafkaBus
