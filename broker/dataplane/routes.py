"""Ingress paths: which URL path is the ingress of a Broker or a Channel (K36, K144).

The one definition of ingress paths, below everything that needs it: the ingress routes requests
by it, the dispatcher and the reply path use it to tell cemesh's own Brokers and Channels from
other subscribers, and the outbound guard and the app's router keep management paths apart.
"""

from __future__ import annotations

from broker.core.memo import MAX_PATH_LENGTH, remember

# First path segments that belong to the management API, never to a broker namespace.
RESERVED_SEGMENTS = frozenset(
    {
        "api",
        "apis",
        "channels",
        "healthz",
        "readyz",
        "metrics",
        "docs",
        "openapi.json",
        "sources",
        "services",
        "console",  # the web console (broker/server/console/)
        ".well-known",  # cemesh's OIDC discovery document (broker/controlplane/delivery_tokens.py)
    }
)

Route = tuple[str, str, str]  # ("broker"|"channel", namespace, name)


def match_route(path: str) -> Route | None:
    """``("broker"|"channel", namespace, name)`` for an ingress path, else None (K36, K144).

    One trailing slash is tolerated. Paths whose first segment belongs to the management API
    (``RESERVED_SEGMENTS``) are not ingress paths, so no Broker can live in a namespace named
    ``api``, ``apis``, ``channels``, ...
    """
    route = _ROUTES.get(path, _UNKNOWN)
    if route is _UNKNOWN:
        route = _parse_route(path)
        # The same few paths arrive again and again.
        remember(_ROUTES, path, route, max_key_length=MAX_PATH_LENGTH, max_entries=4096)
    return route  # type: ignore[return-value]


_UNKNOWN = object()
_ROUTES: dict[str, Route | object | None] = {}  # written through memo.remember


def _parse_route(path: str) -> Route | None:
    parts = path.strip("/").split("/")
    if len(parts) == 2:
        if parts[0] in RESERVED_SEGMENTS or not parts[0] or not parts[1]:
            return None
        return ("broker", parts[0], parts[1])
    if len(parts) == 3 and parts[0] == "channels" and parts[1] and parts[2]:
        return ("channel", parts[1], parts[2])
    return None
