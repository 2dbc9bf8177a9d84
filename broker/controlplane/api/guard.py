"""The gate in front of the management API (raw ASGI): Host, content type, size, credentials.

In order, before FastAPI sees the request:

1. ``/healthz`` and ``/readyz`` pass untouched (probes carry any Host and no token);
2. a ``Host`` not in the allow-list gets 421 (:mod:`broker.auth.hosts`: DNS rebinding);
3. ``/metrics`` passes unless ``CEMESH_METRICS_AUTH`` is true;
4. CORS, only when ``CEMESH_CORS_ORIGINS`` is set (Starlette's middleware; no headers else);
5. a request with a body that is not JSON, YAML or merge-patch gets 415
   (:mod:`broker.controlplane.api.bodies`), one whose ``Content-Length`` is over
   ``CEMESH_MAX_API_BYTES`` 413, and one without a valid ``Authorization: Bearer`` token 401 with
   ``WWW-Authenticate``;
6. the authenticated :class:`~broker.auth.Principal` goes on in the ASGI scope
   (:func:`principal_of`), and the body is counted while FastAPI reads it: past the limit the
   read raises :class:`~broker.core.errors.EventTooLarge` (413) without buffering the rest.

:class:`HostGuard` alone (step 2) fronts the component routes (the invoker's ``/services/`` and
the sources' webhooks, which have their own signatures).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request

from broker.auth.hosts import host_allowed
from broker.auth.principal import Principal
from broker.auth.setup import ANONYMOUS, Access
from broker.controlplane.api.bodies import ACCEPTED_MEDIA_TYPES, is_accepted
from broker.controlplane.api.status import status_body
from broker.controlplane.delivery_tokens import OPEN_PATHS as ISSUER_PATHS
from broker.core.asgi import HttpHandler, Receive, Scope, Send, send_json
from broker.core.errors import EventTooLarge, Unauthenticated

PRINCIPAL_KEY = "cemesh.principal"

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="cemesh"')


def principal_of(request: Request) -> Principal:
    """Who sent ``request`` (set by :class:`ManagementGuard`)."""
    principal = request.scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _refuse(
    send: Send,
    code: int,
    reason: str,
    message: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = orjson.dumps(status_body(code, reason, message))
    await send_json(send, code, body, list(headers))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class HostGuard:
    """421 for a Host not in the allow-list; everything else goes on to ``app``."""

    def __init__(self, app: HttpHandler, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not host_allowed(_header(scope, b"host"), self.allowed):
            host = _header(scope, b"host")
            await _refuse(
                send,
                421,
                "MisdirectedRequest",
                f"Host {host!r} is not a name this cemesh answers to: loopback names, the host "
                "of CEMESH_PUBLIC_URL, and CEMESH_ALLOWED_HOSTS",
            )
            return
        await self.app(scope, receive, send)


class ManagementGuard:
    """The whole gate (module docstring) around the management API ``api``."""

    def __init__(
        self,
        api: HttpHandler,
        access: Access,
        *,
        allowed_hosts: frozenset[str] | None,
        max_bytes: int,
        metrics_auth: bool,
        cors_origins: list[str],
    ) -> None:
        self.api = api
        self.access = access
        self.max_bytes = max_bytes
        self.metrics_auth = metrics_auth
        checked: HttpHandler = self._checked
        if cors_origins:
            checked = CORSMiddleware(
                self._checked,
                allow_origins=cors_origins,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
            )
        self._after_host = HostGuard(checked, allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or (scope["type"] == "http" and scope["path"] in OPEN_PATHS):
            await self.api(scope, receive, send)
            return
        if scope["type"] != "http":  # the API serves no WebSocket: refused before accepting
            await send({"type": "websocket.close", "code": 1008})
            return
        await self._after_host(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        # Public documents: cemesh's OIDC discovery and JWKS (verifiers fetch them without a
        # credential) and, unless configured otherwise, the metrics.
        if path in ISSUER_PATHS or (path == METRICS_PATH and not self.metrics_auth):
            await self.api(scope, receive, send)
            return
        content_type = _header(scope, b"content-type")
        length = _header(scope, b"content-length")
        # A body is what the framing says (HTTP/1.1 has no other): an empty POST or PUT carries
        # no object to refuse, and goes on to be routed (405) or parsed (400).
        has_body = (length is not None and length.strip() not in ("", "0")) or _header(
            scope, b"transfer-encoding"
        ) is not None
        if has_body and not is_accepted(content_type):
            await _refuse(
                send,
                415,
                "UnsupportedMediaType",
                f"content type {content_type or '(none)'!r} is not accepted: send "
                + ", ".join(ACCEPTED_MEDIA_TYPES),
            )
            return
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await _refuse(send, 413, "RequestEntityTooLarge", self._too_large())
            return
        try:
            principal = await self.access.authenticate(
                bearer_token(_header(scope, b"authorization"))
            )
        except Unauthenticated as exc:
            await _refuse(send, 401, "Unauthorized", exc.message, (WWW_AUTHENTICATE,))
            return
        scope[PRINCIPAL_KEY] = principal
        await self.api(scope, self._limited(receive), send)

    def _too_large(self) -> str:
        return (
            f"request body is larger than {self.max_bytes} bytes (CEMESH_MAX_API_BYTES); "
            "Kubernetes objects are limited to about 1.5 MiB too"
        )

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises EventTooLarge once the body passes the limit."""
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise EventTooLarge(self._too_large())
            return message

        return limited
