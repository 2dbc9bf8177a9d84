"""The Redis Streams bus's options: one typed model, the one place for defaults and limits.

Light on purpose (pydantic only): ``broker/core/config.py`` builds the ``redis_<option>`` settings
from these fields.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RedisOptions(BaseModel):
    """Options of the Redis Streams bus (``bus: redis``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        pattern=r"^(redis|rediss|unix)://",
        description="redis:// or rediss:// URL with user, password and db.",
    )
    maxlen: int | None = Field(
        default=None, ge=1, description="Approximate MAXLEN trimming of each stream."
    )
    visibility_timeout: float = Field(
        default=30.0, ge=0.01, description="Seconds before an unacked message is claimed again."
    )
    # BLOCK 0 would wait forever, and close waits for the current BLOCK to end.
    block_ms: int = Field(
        default=200, ge=1, description="XREADGROUP BLOCK, ms: how long closing a group may wait."
    )
    claim_interval: float = Field(
        default=1.0, gt=0, description="Seconds between scans for messages abandoned by others."
    )
    trim_interval: float = Field(
        default=60.0, ge=0, description="Seconds between trims of acked entries (0: never)."
    )
    socket_timeout: float = Field(default=5.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _blocking_read_within_socket_timeout(self) -> RedisOptions:
        if self.socket_timeout * 1000 <= self.block_ms:
            raise ValueError(
                "socket_timeout must be longer than block_ms (a blocking read would time out)"
            )
        return self

    @property
    def visibility_ms(self) -> int:
        return math.ceil(self.visibility_timeout * 1000)
