"""The memory bus's options: one typed model, the one place for their defaults and limits.

Light on purpose (pydantic only): ``broker/core/config.py`` builds the ``memory_<option>`` settings
from these fields. ``SERVED_DEFAULTS`` and ``SERVED_LIMITS`` are what ``cemesh serve`` uses where
it is tighter than the library (a server answers 503 rather than queueing for ever).
"""

from __future__ import annotations

from typing import Any, ClassVar

from annotated_types import Ge
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_QUEUE_SIZE = 100_000
DEFAULT_QUEUE_BYTES = 128 * 1024 * 1024


class MemoryOptions(BaseModel):
    """Options of the in-memory bus (``bus: memory``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # cemesh serve: a short queue keeps latency low, a bound on the wait answers 503 in time.
    SERVED_DEFAULTS: ClassVar[dict[str, Any]] = {"queue_size": 10_000, "publish_timeout": 5.0}
    SERVED_LIMITS: ClassVar[dict[str, list[Any]]] = {"queue_bytes": [Ge(1024 * 1024)]}

    queue_size: int = Field(
        default=DEFAULT_QUEUE_SIZE,
        ge=1,
        description="Events one group of the memory bus holds before publishers wait: a short "
        "queue keeps latency low and pushes back on producers when subscribers fall behind.",
    )
    queue_bytes: int = Field(
        default=DEFAULT_QUEUE_BYTES,
        ge=1,
        description="Bytes of events the whole memory bus holds (an event counts once per "
        "Trigger/Subscription holding it) before publishers wait: the bound on its memory.",
    )
    publish_timeout: float | None = Field(
        default=None,
        ge=0,
        description="Seconds a publish waits for room in a full memory bus; then the ingress "
        "answers 503 with Retry-After (None: as long as it takes).",
    )
