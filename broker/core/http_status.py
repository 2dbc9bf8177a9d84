"""How an error of the cemesh tree answers over HTTP: its status code and Kubernetes reason.

The one mapping from :mod:`broker.core.errors` to HTTP, used by the management API's ``Status``
bodies (:mod:`broker.controlplane.api.status`) and by the raw ASGI handlers (the ingress), so the
same error gets the same code everywhere. Pure, and free of web frameworks: the data plane imports
it.
"""

from __future__ import annotations

from broker.core.errors import (
    BindingError,
    CemeshError,
    Conflict,
    EventTooLarge,
    Forbidden,
    InvalidQuery,
    InvalidResource,
    NotFound,
    StoreError,
    Unauthenticated,
    UnsupportedMediaType,
)

# HTTP code -> Kubernetes reason, for answers not made from a CemeshError (routing, framework).
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}

# error class -> (HTTP code, Kubernetes reason); first match wins, so subclasses come first.
_CODES: tuple[tuple[type[CemeshError], int, str], ...] = (
    (InvalidResource, 422, "Invalid"),
    (EventTooLarge, 413, "RequestEntityTooLarge"),
    (UnsupportedMediaType, 415, "UnsupportedMediaType"),
    (NotFound, 404, "NotFound"),
    (Unauthenticated, 401, "Unauthorized"),
    (Forbidden, 403, "Forbidden"),
    (Conflict, 409, "AlreadyExists"),
    (BindingError, 400, "BadRequest"),
    (InvalidQuery, 400, "BadRequest"),
    (StoreError, 503, "ServiceUnavailable"),
)


def http_status(exc: CemeshError) -> tuple[int, str]:
    """(HTTP status, Kubernetes reason) for ``exc``.

    Errors of no listed class answer ``503 ServiceUnavailable`` when retryable (the client may
    try again: a bus or the store is away), else ``500 InternalError``. A :class:`Conflict` that
    is not about an existing name is reason ``Conflict`` rather than ``AlreadyExists``.
    """
    for error_class, code, reason in _CODES:
        if isinstance(exc, error_class):
            if isinstance(exc, Conflict) and "already exists" not in exc.message:
                reason = "Conflict"
            return code, reason
    return (503, "ServiceUnavailable") if exc.retryable else (500, "InternalError")
