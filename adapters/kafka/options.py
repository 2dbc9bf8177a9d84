"""The Kafka bus's options: one typed model, the one place for their defaults and limits.

Light on purpose (pydantic only): ``broker/core/config.py`` builds the ``kafka_<option>`` settings
from these fields; the adapter turns them into its client library's arguments (``client.py``
for aiokafka, ``confluent_client.py`` for librdkafka).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from annotated_types import Ge
from pydantic import BaseModel, ConfigDict, Field


class KafkaOptions(BaseModel):
    """Options of the Kafka bus (``bus: kafka``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # cemesh serve: brokers refuse sessions under their group.min.session.timeout.ms anyway.
    SERVED_LIMITS: ClassVar[dict[str, list[Any]]] = {"session_timeout_ms": [Ge(1000)]}

    driver: Literal["aiokafka", "confluent"] = Field(
        default="confluent",
        description=(
            "Client library: confluent (librdkafka through confluent-kafka: less CPU per "
            "event, see make bench-buses) or aiokafka (pure Python)."
        ),
    )
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port of Kafka brokers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default PLAIN)."
    )
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    num_partitions: int = Field(default=3, ge=1, description="Partitions of created topics.")
    replication_factor: int = Field(default=1, ge=1, description="Replicas of created topics.")
    session_timeout_ms: int = Field(default=10_000, ge=1)
    heartbeat_interval_ms: int | None = Field(
        default=None, ge=1, description="Default: a third of the session timeout, at most 3 s."
    )
    request_timeout_ms: int = Field(default=40_000, ge=1)
    rebalance_grace_ms: int = Field(
        default=5_000, ge=1, description="Time revoked partitions' handlers get to finish."
    )
    join_timeout_ms: int = Field(
        default=60_000, ge=1, description="How long subscribe waits for the group join."
    )
    max_buffered: int = Field(
        default=1_000,
        ge=1,
        description="Unsettled messages per subscription (raised to 4 * concurrency).",
    )
    linger_ms: int = Field(
        default=1,
        ge=0,
        le=1_000,
        description="How long the producer waits for more records to send in one request.",
    )
    client_id: str = "cemesh"

    @property
    def heartbeat_ms(self) -> int:
        """Heartbeats must come well within the session timeout for a member to stay in."""
        if self.heartbeat_interval_ms is not None:
            return self.heartbeat_interval_ms
        return max(1, min(3_000, self.session_timeout_ms // 3))
