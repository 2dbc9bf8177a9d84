"""The Kafka bus's use of aiokafka: connection arguments and which driver errors are transient.

Shared by the producer, the admin client and every consumer of the bus.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.helpers import create_ssl_context

from adapters.kafka.options import KafkaOptions
from broker.core.errors import BusError


def client_kwargs(options: KafkaOptions) -> dict[str, Any]:
    """Connection settings shared by producer, consumers and admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": options.bootstrap_servers.split(","),
        "client_id": options.client_id,
        "request_timeout_ms": options.request_timeout_ms,
        "security_protocol": options.security_protocol,
    }
    if options.security_protocol in ("SSL", "SASL_SSL"):
        try:
            kwargs["ssl_context"] = create_ssl_context(
                cafile=options.ssl_cafile,
                certfile=options.ssl_certfile,
                keyfile=options.ssl_keyfile,
            )
        except (OSError, ssl.SSLError) as exc:
            raise BusError(f"kafka bus: bad TLS files: {exc}", retryable=False) from exc
    if options.security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = options.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = options.sasl_username
        kwargs["sasl_plain_password"] = options.sasl_password
    return kwargs


def retryable(exc: BaseException) -> bool:
    """Whether trying again may help: the client's own flag, plus timeouts and lost links."""
    if isinstance(exc, kafka_errors.ProducerClosed):
        return False
    # The admin client's requests time out with the builtin TimeoutError (server unreachable).
    if isinstance(
        exc, kafka_errors.KafkaTimeoutError | kafka_errors.KafkaConnectionError | TimeoutError
    ):
        return True
    return bool(getattr(exc, "retriable", False))
