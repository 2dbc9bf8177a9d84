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


def may_name_route(uri: str, names: frozenset[str]) -> bool:
    """False when ``uri`` cannot be the URL of a route named one of ``names``: its path's last
    segment is none of them. True does not say it is one (parse it and :func:`match_route`).

    A cheap test before parsing the URL: the dispatcher asks it for each of 10,000 subscriber
    URIs at a start, where parsing each was a third of applying the snapshot (issue 14). The
    path of a URL ends at its first ``?`` or ``#``; a URI with a tab or line break (which URL
    parsing drops) is left to the parser.
    """
    if "\t" in uri or "\n" in uri or "\r" in uri:
        return True
    end = len(uri)
    for mark in ("?", "#"):
        at = uri.find(mark, 0, end)
        if at != -1:
            end = at
    return uri[:end].rstrip("/").rpartition("/")[2] in names


def _parse_route(path: str) -> Route | None:
    parts = path.strip("/").split("/")
    if len(parts) == 2:
        if parts[0] in RESERVED_SEGMENTS or not parts[0] or not parts[1]:
            return None
        return ("broker", parts[0], parts[1])
    if len(parts) == 3 and parts[0] == "channels" and parts[1] and parts[2]:
        return ("channel", parts[1], parts[2])
    return None
