"""The NATS JetStream bus's options: one typed model, the one place for defaults and limits.

Light on purpose (pydantic only): ``broker/core/config.py`` builds the ``nats_<option>`` settings
from these fields.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Le
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Text = Annotated[str, StringConstraints(min_length=1)]


class NatsOptions(BaseModel):
    """Options of the NATS JetStream bus (``bus: nats``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # cemesh serve: JetStream keeps at most 5 replicas of a stream.
    SERVED_LIMITS: ClassVar[dict[str, list[Any]]] = {"replicas": [Le(5)]}

    url: str = Field(
        default="nats://127.0.0.1:4222", min_length=1, description="Comma-separated servers."
    )
    user: Text | None = None
    password: Text | None = None
    token: Text | None = None
    creds_file: Text | None = None
    tls_ca_file: Text | None = None
    tls_cert_file: Text | None = None
    tls_key_file: Text | None = None
    ack_wait: float = Field(
        default=30.0,
        gt=0,
        description="Seconds before a message nobody settled is redelivered (a crashed "
        "consumer); messages in a handler are kept alive meanwhile.",
    )
    max_ack_pending: int = Field(
        default=1000, ge=1, description="Unacked messages per group (ordered groups: 1)."
    )
    duplicate_window: float = Field(
        default=120.0, gt=0, description="Seconds a republished event (same source+id) is dropped."
    )
    retention: Literal["interest", "limits"] = "interest"
    max_age: float = Field(default=0.0, ge=0, description="Stream max age, s (0: none).")
    replicas: int = Field(default=1, ge=1)
    inactive_threshold: float | None = Field(
        default=None, gt=0, description="Delete a group nobody consumed for this long, s."
    )
    request_timeout: float = Field(
        default=5.0, gt=0, description="Seconds for a PubAck or a JetStream API call."
    )
    connect_timeout: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _tls_cert_and_key_together(self) -> NatsOptions:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self
