"""The Kafka bus's use of librdkafka (``driver: confluent``): its configuration and its errors.

Shared by :mod:`.librdkafka_producer` and :mod:`.librdkafka_consumer`. confluent-kafka comes
with the ``kafka`` extra and is imported only when this driver is used; a bus asking for it
without the package gets :class:`~broker.core.errors.BusClientMissing` naming the extra, as a
bus whose client cannot be imported at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.kafka.options import KafkaOptions
from broker.core.errors import BusClientMissing, BusError

if TYPE_CHECKING:
    import confluent_kafka


def load() -> Any:
    """The confluent_kafka module; BusClientMissing (terminal) saying how to install it."""
    try:
        import confluent_kafka
    except ImportError as exc:
        raise BusClientMissing(
            "the kafka bus needs its client library, which is not installed: pip install "
            f"'cemesh[kafka]' (driver confluent needs confluent-kafka: {exc}); or set the "
            "kafka option driver (CEMESH_KAFKA_DRIVER) to aiokafka"
        ) from exc
    return confluent_kafka


def common_config(options: KafkaOptions) -> dict[str, Any]:
    """librdkafka properties shared by the producer and every consumer of the bus."""
    config: dict[str, Any] = {
        "bootstrap.servers": options.bootstrap_servers,
        "client.id": options.client_id,
        "security.protocol": options.security_protocol.lower(),
        "socket.timeout.ms": options.request_timeout_ms,
        "log_level": 3,  # errors only: librdkafka's notices go to stderr otherwise
    }
    if options.security_protocol in ("SSL", "SASL_SSL"):
        for key, value in (
            ("ssl.ca.location", options.ssl_cafile),
            ("ssl.certificate.location", options.ssl_certfile),
            ("ssl.key.location", options.ssl_keyfile),
        ):
            if value is not None:
                config[key] = value
    if options.security_protocol.startswith("SASL_"):
        config["sasl.mechanism"] = options.sasl_mechanism or "PLAIN"
        config["sasl.username"] = options.sasl_username or ""
        config["sasl.password"] = options.sasl_password or ""
    return config


def producer_config(options: KafkaOptions) -> dict[str, Any]:
    """The producer: acks from every in-sync replica, records batched for ``linger_ms``."""
    return {
        **common_config(options),
        "acks": "all",
        # As the aiokafka producer: Tansu and some managed services lack idempotent producers.
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 1,  # retries keep the order without it
        "linger.ms": options.linger_ms,
        "request.timeout.ms": options.request_timeout_ms,
        "message.timeout.ms": max(options.request_timeout_ms, 1000),
    }


def consumer_config(options: KafkaOptions, group: str) -> dict[str, Any]:
    """A group member: offsets committed by cemesh only, new partitions read from the start."""
    return {
        **common_config(options),
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": options.session_timeout_ms,
        "heartbeat.interval.ms": options.heartbeat_ms,
        "partition.assignment.strategy": "range,roundrobin",
    }


def bus_error(action: str, exc: BaseException) -> BusError:
    """A librdkafka failure as the bus's error, retryable when librdkafka says so."""
    error: Any = exc.args[0] if exc.args else None
    if hasattr(error, "retriable"):
        kafka_error: confluent_kafka.KafkaError = error
        return BusError(
            f"kafka bus: {action} failed: {kafka_error.str()}",
            retryable=bool(kafka_error.retriable()) or _transient(kafka_error),
        )
    if isinstance(exc, BufferError):  # the local queue is full: room comes as records leave
        return BusError(f"kafka bus: {action} failed: {exc}", retryable=True)
    return BusError(f"kafka bus: {action} failed: {exc!r}", retryable=False)


def _transient(error: confluent_kafka.KafkaError) -> bool:
    """Timeouts and lost links, which librdkafka does not always flag retriable."""
    codes = load().KafkaError
    return error.code() in (
        codes._MSG_TIMED_OUT,
        codes._TIMED_OUT,
        codes._TRANSPORT,
        codes._ALL_BROKERS_DOWN,
        codes.REQUEST_TIMED_OUT,
        codes.NOT_COORDINATOR,
        codes.COORDINATOR_NOT_AVAILABLE,
        codes.REBALANCE_IN_PROGRESS,
    )
