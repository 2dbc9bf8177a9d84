"""Kubernetes ``Status`` bodies for management API errors, mapped from the cemesh error tree."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from broker.errors import (
    BindingError,
    CemeshError,
    Conflict,
    EventTooLarge,
    Forbidden,
    InvalidResource,
    NotFound,
    StoreError,
    Unauthenticated,
    UnsupportedMediaType,
)

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
    (StoreError, 503, "ServiceUnavailable"),
)


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A ``v1 Status`` failure body, as kubectl and Kubernetes clients expect."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def error_response(exc: CemeshError) -> JSONResponse:
    code, reason = (503, "ServiceUnavailable") if exc.retryable else (500, "InternalError")
    for error_class, class_code, class_reason in _CODES:
        if isinstance(exc, error_class):
            code, reason = class_code, class_reason
            break
    if isinstance(exc, Conflict) and "already exists" not in exc.message:
        reason = "Conflict"
    details: dict[str, Any] = {}
    if isinstance(exc, InvalidResource):
        details["causes"] = [{"field": exc.field, "message": exc.reason}]
    return JSONResponse(status_body(code, reason, exc.message, **details), status_code=code)


def install_error_handlers(app: FastAPI) -> None:
    """Every CemeshError and request-shape error becomes a Status body, never a bare 500."""

    async def on_cemesh_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CemeshError)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return JSONResponse(status_body(400, "BadRequest", message), status_code=400)

    app.add_exception_handler(CemeshError, on_cemesh_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
