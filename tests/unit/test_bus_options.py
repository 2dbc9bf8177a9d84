"""Bus adapter options: parsed once (broker/dataplane/bus/options.py) from each adapter's typed
model, and the settings ``<bus>_<option>`` built from those same models (broker/core/config.py),
with every setting name and default of before; plus the shared subscribe() argument checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from adapters.kafka.options import KafkaOptions
from adapters.memory.options import MemoryOptions
from adapters.nats.options import NatsOptions
from broker.core.config import BUS_OPTIONS, Settings
from broker.core.errors import BusError, SubscribeError
from broker.dataplane.bus import Capability
from broker.dataplane.bus.arguments import check_subscribe
from broker.dataplane.bus.options import parse_options
from broker.server.app import bus_options

# Every bus setting and its default as they were before the settings reused the adapters'
# models (CEMESH_<NAME> environment variables and config-file keys must keep working).
BEFORE = {
    "memory_queue_size": 10000,
    "memory_queue_bytes": 134217728,
    "memory_publish_timeout": 5.0,
    "kafka_bootstrap_servers": "127.0.0.1:9092",
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_mechanism": None,
    "kafka_sasl_username": None,
    "kafka_sasl_password": None,
    "kafka_ssl_cafile": None,
    "kafka_ssl_certfile": None,
    "kafka_ssl_keyfile": None,
    "kafka_num_partitions": 3,
    "kafka_replication_factor": 1,
    "kafka_session_timeout_ms": 10000,
    "kafka_heartbeat_interval_ms": None,
    "kafka_request_timeout_ms": 40000,
    "kafka_rebalance_grace_ms": 5000,
    "kafka_join_timeout_ms": 60000,
    "kafka_max_buffered": 1000,
    "kafka_client_id": "cemesh",
    "nats_url": "nats://127.0.0.1:4222",
    "nats_user": None,
    "nats_password": None,
    "nats_token": None,
    "nats_creds_file": None,
    "nats_tls_ca_file": None,
    "nats_tls_cert_file": None,
    "nats_tls_key_file": None,
    "nats_ack_wait": 30.0,
    "nats_max_ack_pending": 1000,
    "nats_duplicate_window": 120.0,
    "nats_retention": "interest",
    "nats_max_age": 0.0,
    "nats_replicas": 1,
    "nats_inactive_threshold": None,
    "nats_request_timeout": 5.0,
    "nats_connect_timeout": 5.0,
    "redis_url": "redis://127.0.0.1:6379/0",
    "redis_maxlen": None,
    "redis_visibility_timeout": 30.0,
    "redis_block_ms": 200,
    "redis_claim_interval": 1.0,
    "redis_trim_interval": 60.0,
    "redis_socket_timeout": 5.0,
    "redis_connect_timeout": 5.0,
    "pubsub_project": "cemesh",
    "pubsub_ack_deadline": 60,
    "pubsub_emulator_host": None,
    "pubsub_credentials_file": None,
    "pubsub_rpc_timeout": 60.0,
    "pubsub_pull_streams": None,
    "pubsub_endpoint": None,
}


# Bus settings added since, with their defaults.
ADDED = {
    "kafka_driver": "confluent",
    "kafka_linger_ms": 1,
}


def test_every_bus_setting_of_before_exists_with_its_default() -> None:
    fields = Settings.model_fields
    bus_fields = {name for name in fields if name.split("_")[0] in BUS_OPTIONS}
    assert bus_fields == set(BEFORE) | set(ADDED)
    assert {name: fields[name].default for name in BEFORE} == BEFORE
    assert {name: fields[name].default for name in ADDED} == ADDED


def test_bus_settings_are_read_from_their_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CEMESH_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("CEMESH_NATS_ACK_WAIT", "12.5")
    monkeypatch.setenv("CEMESH_REDIS_MAXLEN", "5000")
    monkeypatch.setenv("CEMESH_PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")
    monkeypatch.setenv("CEMESH_MEMORY_QUEUE_SIZE", "42")
    settings = Settings()
    assert bus_options(settings, "kafka")["bootstrap_servers"] == "k1:9092,k2:9092"
    assert bus_options(settings, "nats")["ack_wait"] == 12.5
    assert bus_options(settings, "redis")["maxlen"] == 5000
    assert bus_options(settings, "pubsub")["emulator_host"] == "127.0.0.1:8085"
    assert bus_options(settings, "memory")["queue_size"] == 42


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("memory_queue_bytes", 1024),  # served limit: at least 1 MiB
        ("kafka_session_timeout_ms", 500),  # served limit: at least 1 s
        ("nats_replicas", 6),  # served limit: JetStream keeps at most 5
        ("nats_ack_wait", 0),  # the adapter's own limit
        ("pubsub_ack_deadline", 5),
        ("kafka_security_protocol", "TLS"),
    ],
)
def test_bad_bus_settings_are_refused_when_the_settings_load(name: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_served_defaults_differ_from_the_library_ones_only_where_declared() -> None:
    """``cemesh serve`` bounds the memory bus tighter than ``MemoryBus()`` does."""
    served = bus_options(Settings(), "memory")
    assert served == {
        "queue_size": 10_000,
        "queue_bytes": 128 * 1024 * 1024,
        "publish_timeout": 5.0,
    }
    library = MemoryOptions()
    assert (library.queue_size, library.publish_timeout) == (100_000, None)


@pytest.mark.parametrize("bus", sorted(BUS_OPTIONS))
def test_the_settings_defaults_build_each_adapters_options(bus: str) -> None:
    model = BUS_OPTIONS[bus]
    parsed = parse_options(model, bus, bus_options(Settings(), bus))
    served = getattr(model, "SERVED_DEFAULTS", {})
    assert parsed == model(**served)


def test_an_adapter_of_another_package_gets_no_options_from_the_settings() -> None:
    assert bus_options(Settings(), "someone-elses-bus") == {}


def test_options_are_parsed_strictly_and_none_means_the_default() -> None:
    parsed = parse_options(KafkaOptions, "kafka", {"num_partitions": 6, "sasl_mechanism": None})
    assert parsed.num_partitions == 6 and parsed.sasl_mechanism is None
    assert parse_options(NatsOptions, "nats", None) == NatsOptions()
    for bad in ({"num_partitions": "6"}, {"num_partitions": True}, {"num_partitions": 1.0}):
        with pytest.raises(BusError):
            parse_options(KafkaOptions, "kafka", bad)
    assert parse_options(NatsOptions, "nats", {"ack_wait": 3}).ack_wait == 3.0  # int is a number


def test_a_bad_option_is_a_terminal_bus_error_naming_the_bus_and_every_offender() -> None:
    with pytest.raises(BusError) as raised:
        parse_options(KafkaOptions, "kafka", {"num_partitions": 0, "acks": "all"})
    error = raised.value
    assert error.retryable is False
    assert str(error).startswith("kafka bus: ")
    assert "num_partitions" in str(error) and "'acks'" in str(error)
    assert isinstance(error.__cause__, ValidationError)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"closed": True, "concurrency": 1, "ordered": False}, "test bus is closed"),
        ({"closed": False, "concurrency": 0, "ordered": False}, "concurrency"),
        ({"closed": False, "concurrency": True, "ordered": False}, "concurrency"),
        ({"closed": False, "concurrency": "2", "ordered": False}, "concurrency"),
        ({"closed": False, "concurrency": 1, "ordered": True}, "ORDERED_BY_KEY"),
    ],
)
def test_subscribe_arguments_are_refused_terminally_naming_what_is_wrong(
    arguments: dict[str, Any], says: str
) -> None:
    with pytest.raises(SubscribeError, match=says) as raised:
        check_subscribe("test", frozenset(), **arguments)
    assert raised.value.retryable is False


def test_ordered_is_accepted_from_an_adapter_that_orders_by_key() -> None:
    check_subscribe("test", {Capability.ORDERED_BY_KEY}, closed=False, concurrency=4, ordered=True)
