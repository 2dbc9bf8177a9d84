"""The Google Cloud Pub/Sub bus's options: one typed model, the one place for defaults and limits.

Light on purpose (pydantic only): ``broker/core/config.py`` builds the ``pubsub_<option>`` settings
from these fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PubSubOptions(BaseModel):
    """Options of the Pub/Sub bus (``bus: pubsub``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(default="cemesh", min_length=1)
    ack_deadline: int = Field(default=60, ge=10, le=600, description="Seconds (Pub/Sub: 10-600).")
    emulator_host: str | None = Field(
        default=None,
        min_length=1,
        description="host:port of a Pub/Sub emulator (plaintext, no credentials).",
    )
    credentials_file: str | None = Field(
        default=None,
        min_length=1,
        description="A service-account or authorized-user JSON key file; default: "
        "Application Default Credentials.",
    )
    rpc_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a publish or admin call may take, with retries."
    )
    pull_streams: int | None = Field(
        default=None, ge=1, description="StreamingPull streams per subscription (default: auto)."
    )
    endpoint: str | None = Field(
        default=None,
        min_length=1,
        description="Pub/Sub address, e.g. a regional endpoint "
        "europe-west1-pubsub.googleapis.com:443 (default: global). Pub/Sub orders a key within "
        "one region, so ordered publishers should all use the same one.",
    )
