"""The web console's HTTP side (raw ASGI under ``/console``): login, pages, files, API relay.

What it answers (the rules of the session are :mod:`broker.server.console.session`'s):

- ``GET /console/login``: the login form; ``POST /console/login`` (same Origin) checks the token
  with the API's authenticators (:class:`broker.auth.setup.Access`), sets the session cookie and
  sends the browser to ``/console/``; a token that does not verify gets the form again with 401;
- ``GET /console/``: the console page, or a redirect to the login form without a valid session;
- ``GET /console/session``: who is logged in and the CSRF token the page sends back;
- ``POST /console/logout`` (same Origin, CSRF token): ends the session;
- ``GET /console/static/<file>``: the page's script, styles and vendored libraries, read once
  from the package (only the stylesheet is served without a session: the login form uses it);
- ``/console/api/<path>``: relayed to the management API as ``/<path>`` with the session's
  token as ``Authorization: Bearer``, so the API's own authentication, RBAC, limits and answers
  apply unchanged. Reads (GET, HEAD) pass; the one write relayed is a test event
  (``POST .../brokers/<name>/events``), and only with the same Origin and the CSRF token; every
  other method is 405. The cookie is not passed on.

Without a valid session every page redirects to the login form and every other path answers
401. Every answer carries the console's security headers (CSP and friends).
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.datastructures import Headers
from starlette.requests import cookie_parser

from broker.auth.principal import Principal
from broker.auth.setup import Access
from broker.controlplane.api.status import status_body
from broker.core.asgi import HttpHandler, Receive, Scope, Send, read_body
from broker.core.errors import Unauthenticated
from broker.core.http_status import REASONS
from broker.server.console import session

PREFIX = session.PATH
STATIC = f"{PREFIX}/static/"
API = f"{PREFIX}/api/"
OPEN_FILES = frozenset({"console.css"})  # what the login form needs before a session exists
MAX_FORM_BYTES = 16 * 1024
# The one write the console relays: a test event into a Broker (broker/controlplane/api/send_event).
_RELAYED_POST = re.compile(
    r"^/apis/eventing\.knative\.dev/v1/namespaces/[^/]+/brokers/[^/]+/events$"
)
_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
}


def load_files() -> dict[str, bytes]:
    """Every file under ``static/`` by its relative path (read once: they are small)."""
    files: dict[str, bytes] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file():
                files[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("broker.server.console").joinpath("static"), "")
    return files


def content_type(name: str) -> bytes:
    return next(
        (t for ext, t in _TYPES.items() if name.endswith(ext)), b"text/plain; charset=utf-8"
    )


def _header(scope: Scope, name: str) -> str | None:
    return Headers(scope=scope).get(name)


async def _answer(
    send: Send,
    status: int,
    body: bytes = b"",
    media: bytes = b"text/plain; charset=utf-8",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media),
                (b"content-length", str(len(body)).encode()),
                *session.SECURITY_HEADERS,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, body: Mapping[str, Any]) -> None:
    await _answer(send, status, orjson.dumps(body), b"application/json")


async def _refuse(send: Send, status: int, message: str) -> None:
    """A refusal with the API's ``Status`` body, so the page reads both the same way."""
    await _json(send, status, status_body(status, REASONS[status], message))


async def _redirect(send: Send, location: str, *cookies: str) -> None:
    headers = [(b"location", location.encode())]
    headers += [(b"set-cookie", cookie.encode()) for cookie in cookies]
    await _answer(send, 303, headers=tuple(headers))


class Console:
    """The console under :data:`PREFIX`, in front of the (guarded) management API ``api``."""

    def __init__(self, api: HttpHandler, access: Access) -> None:
        self.api = api
        self.access = access
        self.files = load_files()
        # With authentication off there is no token to key CSRF tokens with: a secret of this
        # process stands in (a browser then keeps to the replica it started on).
        self._anonymous_key = secrets.token_hex(32)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == PREFIX:
            await _redirect(send, f"{PREFIX}/")
        elif path == f"{PREFIX}/login":
            await self._login(scope, receive, send)
        elif path.startswith(STATIC) and path[len(STATIC) :] in OPEN_FILES:
            await self._file(send, path[len(STATIC) :], method)
        else:
            found = await self._session(scope)
            if found is None:
                if path == f"{PREFIX}/" and method in ("GET", "HEAD"):
                    await _redirect(send, f"{PREFIX}/login")
                else:
                    await _refuse(send, 401, "log in at /console/login first")
                return
            await self._authenticated(scope, receive, send, *found)

    async def _authenticated(
        self, scope: Scope, receive: Receive, send: Send, token: str, principal: Principal
    ) -> None:
        path, method = scope["path"], scope["method"]
        if path == f"{PREFIX}/":
            await self._file(send, "index.html", method)
        elif path.startswith(STATIC):
            await self._file(send, path[len(STATIC) :], method)
        elif path == f"{PREFIX}/session" and method == "GET":
            csrf = session.csrf_token(token or self._anonymous_key)
            await _json(send, 200, {"user": principal.name, "csrf": csrf})
        elif path == f"{PREFIX}/logout" and method == "POST":
            if await self._forged(scope, send, token):
                return
            await _redirect(send, f"{PREFIX}/login", session.clear_cookie(secure=_secure(scope)))
        elif path.startswith(API):
            await self._relay(scope, receive, send, token)
        else:
            await _refuse(send, 404, f"{path} is not part of the console")

    async def _session(self, scope: Scope) -> tuple[str, Principal] | None:
        """The session's token and who it proves, while it verifies (token ``""`` with
        authentication off); None without a session."""
        if not self.access.required:
            return "", await self.access.authenticate(None)
        cookies = cookie_parser(_header(scope, "cookie") or "")
        token = session.token_of(cookies.get(session.COOKIE))
        if token is None:
            return None
        try:
            return token, await self.access.authenticate(token)
        except Unauthenticated:
            return None

    async def _forged(self, scope: Scope, send: Send, token: str) -> bool:
        """Answer 403 and True when a state-changing request lacks our Origin or CSRF token."""
        if not session.same_origin(
            _header(scope, "origin"), scope["scheme"], _header(scope, "host")
        ):
            await _refuse(send, 403, "cross-origin request refused (Origin is not cemesh's)")
            return True
        key = token or self._anonymous_key
        if not session.csrf_valid(key, _header(scope, session.CSRF_HEADER)):
            await _refuse(send, 403, f"missing or wrong {session.CSRF_HEADER} header")
            return True
        return False

    async def _file(self, send: Send, name: str, method: str) -> None:
        body = self.files.get(name)
        if body is None or method not in ("GET", "HEAD"):
            await _refuse(send, 404 if body is None else 405, f"no file {name} to {method}")
            return
        await _answer(send, 200, body, content_type(name))  # the server drops it for HEAD

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method in ("GET", "HEAD"):
            await self._login_form(send, 200, "")
            return
        if method != "POST":
            await _refuse(send, 405, "GET or POST the login form")
            return
        if not session.same_origin(
            _header(scope, "origin"), scope["scheme"], _header(scope, "host")
        ):
            await self._login_form(send, 403, "This form must be sent from cemesh's own page.")
            return
        body = await read_body(receive, MAX_FORM_BYTES)
        if body is None:
            await self._login_form(send, 413, "That is not a token: it is far too long.")
            return
        fields = parse_qs(body.decode("latin-1"), max_num_fields=4)
        token = (fields.get("token") or [""])[0].strip()
        try:
            await self.access.authenticate(token or None)
        except Unauthenticated as exc:
            await self._login_form(send, 401, exc.message)
            return
        secure = _secure(scope)
        await _redirect(send, f"{PREFIX}/", session.set_cookie(token, secure=secure))

    async def _login_form(self, send: Send, status: int, message: str) -> None:
        page = self.files["login.html"].decode()
        notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
        await _answer(
            send, status, page.replace("<!--message-->", notice).encode(), _TYPES[".html"]
        )

    async def _relay(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        """The management API's answer to the request, as the session's token holder."""
        method, path = scope["method"], scope["path"][len(API) - 1 :]
        if method == "POST" and _RELAYED_POST.match(path):
            if await self._forged(scope, send, token):
                return
        elif method not in ("GET", "HEAD"):
            await _refuse(send, 405, "the console only reads, and sends test events")
            return
        headers = [
            (k, v)
            for k, v in scope.get("headers") or ()
            if k.lower() not in (b"cookie", b"authorization")
        ]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        raw_path = scope.get("raw_path") or scope["path"].encode()
        relayed = {**scope, "path": path, "raw_path": raw_path[len(API) - 1 :], "headers": headers}
        await self.api(relayed, receive, send)


def _secure(scope: Scope) -> bool:
    return scope.get("scheme") == "https"
