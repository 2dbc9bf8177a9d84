"""How the NATS bus reads nats-py's errors: which are worth retrying, and how to say them."""

from __future__ import annotations

import nats.errors
import nats.js.errors


def retryable(exc: BaseException) -> bool:
    """Whether trying again may succeed after the driver raised ``exc``."""
    if isinstance(exc, nats.js.errors.APIError) and not isinstance(
        exc, nats.js.errors.ServiceUnavailableError
    ):
        # 4xx: the request itself is wrong (overlapping subjects, bad config); 5xx: the server.
        return exc.code is None or exc.code >= 500 or exc.code in (408, 429)
    return not isinstance(
        exc,
        nats.errors.MaxPayloadError
        | nats.errors.BadSubjectError
        | nats.errors.BadHeaderError
        | nats.errors.AuthorizationError
        | ValueError,
    )


def describe(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{type(exc).__name__} {exc.code}/{exc.err_code}: {exc.description}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
