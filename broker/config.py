"""Every cemesh setting, with its default, in one model.

Settings come from (highest first) explicit arguments, ``CEMESH_*`` environment variables, and a
YAML config file (``cemesh serve --config FILE`` or ``CEMESH_CONFIG``) whose keys are the field
names below. Nothing else in cemesh reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class Settings(BaseSettings):
    """cemesh configuration. Environment variables are ``CEMESH_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="CEMESH_", extra="forbid")

    # Serving
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(
        default=None,
        description="Base URL that Broker/Channel addresses are built from; "
        "default http://HOST:PORT.",
    )
    config: Path | None = Field(default=None, description="YAML file with these same keys.")

    # Store
    database_url: str = "sqlite+aiosqlite:///./cemesh.db"
    resync_interval: float = Field(
        default=2.0, gt=0, description="Seconds between store polls for changes made by replicas."
    )

    # Bus. The default channel kind backs Brokers and template-less Channels; each kind has its
    # bus adapter (InMemoryChannel: memory, KafkaChannel: kafka, NatsJetStreamChannel: nats,
    # PubSubChannel: pubsub, RedisStreamChannel: redis). Settings named ``<adapter>_<option>``
    # are handed to that adapter as ``option``.
    default_channel: Literal[
        "InMemoryChannel",
        "KafkaChannel",
        "NatsJetStreamChannel",
        "PubSubChannel",
        "RedisStreamChannel",
    ] = "InMemoryChannel"
    memory_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Events one group of the memory bus holds before publishers wait: a short "
        "queue keeps latency low and pushes back on producers when subscribers fall behind.",
    )
    memory_queue_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of events the whole memory bus holds (an event counts once per "
        "Trigger/Subscription holding it) before publishers wait: the bound on its memory.",
    )
    memory_publish_timeout: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a publish waits for room in a full memory bus; then the ingress "
        "answers 503 with Retry-After.",
    )

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    kafka_num_partitions: int = Field(default=3, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    kafka_heartbeat_interval_ms: int | None = Field(default=None, ge=1)  # None: session / 3
    kafka_request_timeout_ms: int = Field(default=40_000, ge=1)
    kafka_rebalance_grace_ms: int = Field(default=5_000, ge=1)  # revoked handlers' time to finish
    kafka_join_timeout_ms: int = Field(default=60_000, ge=1)  # subscribe waits this for a join
    kafka_max_buffered: int = Field(default=1_000, ge=1)  # unsettled messages per subscription
    kafka_client_id: str = "cemesh"

    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds_file: str | None = None
    nats_tls_ca_file: str | None = None
    nats_tls_cert_file: str | None = None
    nats_tls_key_file: str | None = None
    nats_ack_wait: float = Field(
        default=30.0,
        gt=0,
        description="Seconds before a message nobody settled is redelivered (a crashed "
        "consumer); messages in a handler are kept alive meanwhile.",
    )
    nats_max_ack_pending: int = Field(
        default=1000, ge=1, description="Unacked messages per group (ordered groups: 1)."
    )
    nats_duplicate_window: float = Field(
        default=120.0, gt=0, description="Seconds a republished event (same source+id) is dropped."
    )
    nats_retention: Literal["interest", "limits"] = "interest"
    nats_max_age: float = Field(default=0.0, ge=0, description="Stream max age, s (0: none).")
    nats_replicas: int = Field(default=1, ge=1, le=5)
    nats_inactive_threshold: float | None = Field(
        default=None, gt=0, description="Delete a group nobody consumed for this long, s."
    )
    nats_request_timeout: float = Field(default=5.0, gt=0)
    nats_connect_timeout: float = Field(default=5.0, gt=0)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_maxlen: int | None = Field(
        default=None, ge=1, description="Approximate MAXLEN trimming of each stream."
    )
    redis_visibility_timeout: float = Field(
        default=30.0, gt=0, description="Seconds before an unacked message is claimed again."
    )
    redis_block_ms: int = Field(
        default=200, ge=1, description="XREADGROUP BLOCK, ms: how long closing a group may wait."
    )
    redis_claim_interval: float = Field(
        default=1.0, gt=0, description="Seconds between scans for messages abandoned by others."
    )
    redis_trim_interval: float = Field(
        default=60.0, ge=0, description="Seconds between trims of acked entries (0: never)."
    )
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    redis_connect_timeout: float = Field(default=5.0, gt=0)

    pubsub_project: str = "cemesh"
    pubsub_ack_deadline: int = Field(default=60, ge=10, le=600)
    pubsub_emulator_host: str | None = Field(
        default=None, description="host:port of a Pub/Sub emulator (plaintext, no credentials)."
    )
    pubsub_credentials_file: str | None = Field(
        default=None, description="google-auth JSON credentials; default: Application Default."
    )
    pubsub_rpc_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a publish or admin call may take, with retries."
    )
    pubsub_pull_streams: int | None = Field(
        default=None, ge=1, description="StreamingPull streams per subscription (default: auto)."
    )
    pubsub_endpoint: str | None = Field(
        default=None, description="Pub/Sub address, e.g. a regional endpoint (default: global)."
    )

    # HTTP server (cemesh serve): connection limits and how long a client may take to send
    max_connections: int | None = Field(
        default=1000,
        ge=1,
        description="Open connections (and requests in progress) beyond which requests get 503.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers (from connecting, or from "
        "the request's first byte); then 408 and the connection is closed.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a client has to send a request's body once its headers arrived; "
        "then 408, the connection is closed and nothing of the request is used.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Bytes of headers a request may have; larger ones get 431 and the "
        "connection is closed.",
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, description="Seconds an idle keep-alive connection is kept open."
    )

    # Ingress
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    max_ttl: int = Field(default=255, ge=1, description="knativebrokerttl given to new events.")

    # Delivery defaults (used when neither the Trigger/Subscription nor its Broker/Channel set any)
    delivery_retry: int = Field(default=10, ge=0)
    delivery_backoff_policy: Literal["linear", "exponential"] = "exponential"
    delivery_backoff_delay: str = "PT0.2S"
    delivery_timeout: float = Field(default=30.0, gt=0, description="Per attempt, seconds.")
    retry_after_max: float = Field(
        default=60.0, ge=0, description="Cap on honoured Retry-After, seconds (0 disables)."
    )
    dead_letter_redelivery_delay: float = Field(
        default=30.0,
        gt=0,
        description="When the dead-letter sink itself fails, the event stays on the bus and is "
        "tried again after this many seconds (it is never dropped).",
    )
    dispatch_concurrency: int = Field(
        default=64, ge=1, description="Concurrent deliveries per Trigger/Subscription."
    )
    max_inflight_per_subscriber: int = Field(
        default=128, ge=1, description="Concurrent requests to one subscriber host."
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="Seconds SIGTERM waits for in-flight deliveries."
    )

    # Function invoker (serving.knative.dev Services)
    invoker_backend: Literal["process", "kubernetes"] = Field(
        default="process",
        description="Where replicas run: local child processes, or existing Deployments.",
    )
    invoker_hold_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a replica (at zero, or all at their "
        "containerConcurrency) before it is answered 503 with Retry-After.",
    )
    invoker_queue_size: int = Field(
        default=1000, ge=1, description="Requests one Revision holds while waiting for replicas."
    )
    invoker_autoscaler_tick: float = Field(
        default=2.0, gt=0, description="Seconds between autoscaler decisions (Knative: 2 s)."
    )

    # Kubernetes API (ApiServerSource, the invoker's kubernetes backend)
    kubeconfig: str | None = Field(
        default=None,
        description="kubeconfig file; default: in-cluster config, else ~/.kube/config.",
    )
    kube_context: str | None = Field(default=None, description="kubeconfig context to use.")

    # Logging
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @property
    def default_bus(self) -> str:
        """The bus adapter of the default channel kind."""
        from broker.resources import CHANNEL_BUSES, channel_type

        backing = channel_type(self.default_channel)
        assert backing is not None  # the Literal above lists only channel kinds
        return CHANNEL_BUSES[backing]

    @property
    def base_url(self) -> str:
        """Where this cemesh is reachable; addresses of Brokers and Channels start with it."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls, init_settings))


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by the ``config`` setting (argument or CEMESH_CONFIG)."""

    def __init__(
        self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._init = init_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        import os

        path = self._init().get("config") or os.environ.get("CEMESH_CONFIG")
        if not path:
            return {}
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ValueError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must be a mapping of setting names to values")
        return {str(k).replace("-", "_"): v for k, v in loaded.items()}
