"""Kubernetes ``Status`` bodies for management API errors (codes from
:mod:`broker.core.http_status`).

Also the last resort of every HTTP answer (:func:`answer_unexpected`): an exception no handler
turned into a 4xx is logged once with its traceback and answered ``500`` with a Status body
that leaks nothing; the connection is kept. Bad input must never get there (the tests of
``tests/integration/test_bad_input.py`` say so); a genuine server fault may.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from broker.core.asgi import send_json
from broker.core.errors import CemeshError, InvalidResource
from broker.core.http_status import REASONS, http_status

log = logging.getLogger(__name__)


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
    code, reason = http_status(exc)
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

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        reason = REASONS.get(exc.status_code, "Failure")
        headers = {key.lower(): value for key, value in (exc.headers or {}).items()}
        if exc.status_code == 405:
            # Starlette lists the methods of the first route matching the path only; GET and
            # POST of one path are two routes, so collect them all.
            allowed = _allowed_methods(request)
            headers["allow"] = ", ".join(sorted(allowed))
            message = f"method {request.method} is not allowed here; use {headers['allow']}"
        else:
            message = str(exc.detail)
        body = status_body(exc.status_code, reason, message)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware answers with this, then re-raises to the server;
        # CemeshApp catches that (answer_unexpected) and logs it once.
        return JSONResponse(_INTERNAL, status_code=500)

    app.add_exception_handler(CemeshError, on_cemesh_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def _allowed_methods(request: Request) -> set[str]:
    """The methods some route serves at the request's path."""
    routes = request.app.router.routes
    return {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    }


_INTERNAL = status_body(
    500, "InternalError", "internal error: the request could not be answered (see the server log)"
)
_INTERNAL_BODY = orjson.dumps(_INTERNAL)


async def answer_unexpected(scope: Any, send: Any, exc: BaseException) -> None:
    """Log ``exc`` with its traceback and answer 500 with a Status body if nothing was sent yet.

    Never re-raises: the server would log the traceback a second time and drop the connection.
    """
    log.error(
        "unexpected error answering a request",
        extra={"method": scope.get("method"), "path": scope.get("path")},
        exc_info=exc,
    )
    # The response may have started (or the client left): then what was sent stands.
    with contextlib.suppress(Exception):
        await send_json(send, 500, _INTERNAL_BODY)
