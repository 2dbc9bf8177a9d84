"""Which ``Host`` names the management API answers (pure): the DNS-rebinding defence.

A page on ``http://attacker.example`` can make its name resolve to 127.0.0.1 and then talk to
cemesh as a same-origin page would; its requests still carry ``Host: attacker.example``. So the
API (and the component routes) answer only loopback names, the host of ``CEMESH_PUBLIC_URL``
(or of ``http://HOST:PORT``) and the names in ``CEMESH_ALLOWED_HOSTS`` ("*": any), whatever
the port; anything else gets 421 Misdirected Request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY = "*"


def host_name(header: str | None) -> str | None:
    """The name in a Host header, lower case, without port, brackets or final dot."""
    if not header:
        return None
    try:
        name = urlsplit("//" + header.strip()).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def allowed_host_names(base_url: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The names answered: loopback, ``base_url``'s host and ``extra``; None for any ("*")."""
    names = set(LOOPBACK_NAMES)
    for entry in extra:
        if entry.strip() == ANY:
            return None
        name = host_name(entry)
        if name:
            names.add(name)
    own = host_name(urlsplit(base_url).netloc)
    if own:
        names.add(own)
    return frozenset(names)


def host_allowed(header: str | None, allowed: frozenset[str] | None) -> bool:
    if allowed is None:
        return True
    name = host_name(header)
    return name is not None and name in allowed


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps cemesh reachable from this machine only."""
    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
