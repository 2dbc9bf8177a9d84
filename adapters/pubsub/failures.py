"""How the Pub/Sub bus reads the Google client's errors: which are worth retrying."""

from __future__ import annotations

import grpc
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from broker.core.errors import BusError

# Retrying these may help (the same set the Pub/Sub clients retry publishes on).
TRANSIENT = (
    api_exceptions.Aborted,
    api_exceptions.Cancelled,
    api_exceptions.DeadlineExceeded,
    api_exceptions.InternalServerError,
    api_exceptions.ResourceExhausted,
    api_exceptions.ServiceUnavailable,
    api_exceptions.Unknown,
)
# Retrying these cannot help until someone changes something.
TERMINAL = (
    api_exceptions.InvalidArgument,
    api_exceptions.PermissionDenied,
    api_exceptions.Unauthenticated,
    api_exceptions.FailedPrecondition,
    api_exceptions.MethodNotImplemented,
    api_exceptions.OutOfRange,
    auth_exceptions.RefreshError,
    auth_exceptions.DefaultCredentialsError,
)
DRIVER_ERRORS = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, grpc.RpcError)


def retryable(exc: BaseException) -> bool:
    """Whether trying again may succeed after the driver error ``exc``."""
    if isinstance(exc, api_exceptions.RetryError):  # transient errors until the deadline
        return True
    if isinstance(exc, BusError):  # ours, e.g. the bus closed under the RPC
        return exc.retryable
    return not isinstance(exc, TERMINAL)
