"""The web console's browser session and its defences (pure): cookie, CSRF token, Origin, headers.

A browser cannot send ``Authorization: Bearer``, so the console's login form takes the same
token the API takes and puts it in a cookie, :data:`COOKIE`: ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page makes the browser send it), ``Path=/console`` (the
management API never sees it and never accepts a cookie), ``Secure`` over https, and no expiry
(it ends with the browser). The token is checked by the API's own authenticators on every
request, so a token that is revoked or expires ends the session at once, and any replica
accepts the cookie.

``SameSite`` does not separate ports (``http://127.0.0.1:9000`` is the same site as cemesh on
``127.0.0.1:8080``), so every request of the console that changes something must also:

- carry an ``Origin`` equal to cemesh's own (``scheme://Host``): browsers send it on every
  POST, and a page of another origin cannot forge it;
- carry :func:`csrf_token` in the :data:`CSRF_HEADER` header (forms: the :data:`CSRF_FIELD`
  field). The page learns it from ``/console/session``, which another origin cannot read (no
  CORS). It is an HMAC of a fixed label keyed with the token, so it says nothing of the token,
  needs no server state, and holds across replicas.

:data:`SECURITY_HEADERS` go on every console answer: a Content-Security-Policy that allows only
cemesh's own scripts, styles and connections (no inline script or style, no CDN, no framing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import urlsplit

COOKIE = "cemesh_console"
CSRF_HEADER = "x-cemesh-csrf"
CSRF_FIELD = "csrf"
PATH = "/console"
_CSRF_LABEL = b"cemesh console csrf v1"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Not "no-referrer": under it browsers send "Origin: null" on form posts, and the Origin
    # check needs the real one. "same-origin" still sends nothing to other origins.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


def cookie_value(token: str) -> str:
    """The cookie's value for ``token`` (base64url: any token fits a cookie)."""
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def token_of(value: str | None) -> str | None:
    """The token in a cookie value; None for none or one that is not ours."""
    if not value:
        return None
    try:
        token = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return token or None


def set_cookie(token: str, *, secure: bool) -> str:
    """The ``Set-Cookie`` header value that starts a session with ``token``."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={cookie_value(token)}; Path={PATH}; HttpOnly; SameSite=Strict{flags}"


def clear_cookie(*, secure: bool) -> str:
    """The ``Set-Cookie`` header value that ends the session."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE}=; Path={PATH}; HttpOnly; SameSite=Strict; Max-Age=0{flags}"


def csrf_token(key: str) -> str:
    """The CSRF token of a session keyed by ``key`` (its bearer token)."""
    return hmac.new(key.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_valid(key: str, presented: str | None) -> bool:
    """Whether ``presented`` is the session's CSRF token (compared in constant time)."""
    return presented is not None and hmac.compare_digest(csrf_token(key), presented)


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether an ``Origin`` header names this very server (``scheme://Host``).

    A missing Origin is refused too: browsers send it on every POST, so a state-changing request
    without one comes from no browser page of ours.
    """
    if not origin or not host or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme == scheme and parts.netloc.lower() == host.strip().lower()
