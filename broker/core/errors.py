"""The one exception tree of cemesh.

Every error that crosses a module boundary is a :class:`CemeshError`. Each says whether trying
again may succeed (``retryable``). Driver exceptions (SQLAlchemy, aiokafka, pyreqwest, ...) are
translated at the boundary where they occur, with the driver's exception kept as ``__cause__``
(``raise PublishError(...) from exc``).

    CemeshError
    ├── BindingError          an HTTP message is not a valid CloudEvent        -> 400
    │   ├── EventTooLarge     the message is over the configured size          -> 413
    │   └── UnsupportedMediaType  a body of a content type not accepted        -> 415
    ├── RequestIncomplete     the client left before its request body was whole (no answer)
    ├── InvalidResource       a resource fails validation (names the field)    -> 422
    ├── NotFound              no such resource                                 -> 404
    ├── InvalidQuery          a management request's query parameter is wrong -> 400
    ├── Unauthenticated       no credential, or one that does not verify       -> 401
    ├── Forbidden             the credential's subject may not do this         -> 403
    ├── Conflict              already exists / stale resourceVersion           -> 409
    ├── BusError              the message bus failed
    │   ├── PublishError      the bus did not durably accept an event
    │   ├── SubscribeError    a subscription could not be made live
    │   └── BusClientMissing  the bus's client library is not installed (names the extra)
    ├── DeliveryError         an event could not be delivered to a destination
    ├── StoreError            the resource store failed
    └── InvalidConfig         a file named by a setting (tokens, RBAC) is unusable
"""

from __future__ import annotations


class CemeshError(Exception):
    """Base of every cemesh error."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class BindingError(CemeshError):
    """The HTTP request does not carry a valid CloudEvent (missing attribute, bad encoding...)."""


class EventTooLarge(BindingError):
    """The request body is larger than the configured maximum."""


class UnsupportedMediaType(BindingError):
    """The request body's content type is not one the endpoint accepts (names the accepted)."""


class RequestIncomplete(CemeshError):
    """The client disconnected (or was cut off) before its request body was complete.

    Nothing of the request is used, and no answer can reach the client.
    """


class InvalidResource(CemeshError):
    """A resource failed validation. ``field`` is the dotted path of the bad field."""

    # A message quotes the bad value; a huge one is cut so the answer stays readable and small.
    MAX_MESSAGE = 1024

    def __init__(self, field: str, message: str) -> None:
        field, message = _cut(field, 200), _cut(message, self.MAX_MESSAGE)
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


def _cut(text: str, limit: int) -> str:
    """``text`` if at most ``limit`` characters, else its head and tail around a marker."""
    if len(text) <= limit:
        return text
    tail = limit // 5
    return f"{text[: limit - tail]} ...({len(text) - limit} characters cut)... {text[-tail:]}"


class NotFound(CemeshError):
    """The named resource (or broker, or channel) does not exist."""


class InvalidQuery(CemeshError):
    """A management request's query parameter is wrong (names the parameter and why): 400."""


class Unauthenticated(CemeshError):
    """The request carries no credential, or one that cannot be verified (says which)."""


class Forbidden(CemeshError):
    """The authenticated subject may not do this (names the verb, resource and namespace)."""


class Conflict(CemeshError):
    """The resource already exists, or the update was made against a stale version."""


class BusError(CemeshError):
    """The message bus failed."""

    retryable = True


class PublishError(BusError):
    """The bus did not durably accept the event; nothing may be acknowledged to the producer."""


class SubscribeError(BusError):
    """A subscription could not be made live."""


class BusClientMissing(BusError):
    """The adapter of a bus cannot be imported: its optional client library is not installed.

    Not retryable: installing the extra (the message names it) and restarting is the fix.
    """

    retryable = False


class DeliveryError(CemeshError):
    """An event could not be delivered to a destination."""

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status


class StoreError(CemeshError):
    """The resource store failed."""

    retryable = True


class InvalidConfig(CemeshError):
    """A file named by a setting (static tokens, RBAC bindings) cannot be used; names the file."""
