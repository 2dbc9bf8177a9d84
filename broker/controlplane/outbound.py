"""The outbound guard: destination URIs cemesh refuses to send events to. Pure.

A Trigger's subscriber, a sink, a reply or a dead-letter sink makes cemesh POST to a URL someone
else chose. Two kinds of URL turn that into an attack on the machine cemesh runs on, and are
refused at apply time (a 422 naming the field) by :func:`refusal`:

- **Link-local and cloud metadata addresses** (169.254.0.0/16, fe80::/10, fd00:ec2::254, ...):
  on a cloud VM these answer with the instance's credentials. Allowed by a setting
  (``CEMESH_ALLOW_LINK_LOCAL_DESTINATIONS``) for the rare mesh that really delivers there.
- **cemesh's own management API**: the same host and port as cemesh's listener or public URL
  with a path that is not a data-plane path (a Broker's ``/{ns}/{broker}``, ``/channels/...``,
  ``/services/...``). Delivering there would let anyone who can create a Trigger make cemesh
  call its own API with whatever credential it sends.

Only literal addresses are judged: IP literals in every form a client accepts (IPv4 in dotted,
integer, octal or hex form as ``inet_aton`` reads them, bracketed IPv6 with or without a zone,
IPv4 inside IPv6) and the loopback names. Host names are not resolved: DNS at apply time is
neither cheap nor local, and its answer may change before the first delivery (DNS rebinding),
so a name check would promise more than it can keep.

The guard in force while admitting is set by the API (:func:`guarding`) and read by
``broker.controlplane.resources.admit_destination`` (:func:`active_guard`), so that every kind that
admits a destination (Triggers, Subscriptions, flows, sources) is guarded without each passing it
along. Objects cemesh creates itself (a Sequence's Subscriptions) are admitted without a guard:
their destinations were judged when the user applied the owner.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.dataplane.routes import match_route  # the one definition of ingress paths

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services outside the link-local ranges: AWS's IPv6 endpoint, Alibaba Cloud's.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
# Names that are metadata services wherever they resolve (fixed names, no lookup needed).
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog"})
# NAT64's well-known prefix: 64:ff9b::a9fe:a9fe is 169.254.169.254 to a NAT64 gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What inet_aton may read as an IPv4 address: 1 to 4 parts of decimal, octal or hex digits.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")
# First path segments of cemesh's data plane besides Brokers' /{namespace}/{broker}.
DATA_PLANE_PREFIXES = ("/channels/", "/services/")


@dataclass(frozen=True, slots=True)
class OutboundGuard:
    """What counts as cemesh itself, and whether link-local destinations are allowed.

    ``own_origins``: (host, port) pairs cemesh is reached at (its public URLs), host lower-case
    without brackets. ``own_ports``: ports cemesh listens on for loopback or every address: on
    those, any loopback address, ``localhost`` or the unspecified address reaches cemesh.
    """

    own_origins: frozenset[tuple[str, int]] = frozenset()
    own_ports: frozenset[int] = frozenset()
    allow_link_local: bool = False


def guard_for(
    *,
    listen_host: str,
    listen_ports: tuple[int, ...],
    public_urls: tuple[str, ...],
    allow_link_local: bool,
) -> OutboundGuard:
    """The guard for a cemesh listening on ``listen_host`` (its ports) and reached at its URLs."""
    origins = {origin for url in public_urls if (origin := _origin(url)) is not None}
    origins.update((listen_host.strip("[]").lower(), port) for port in listen_ports)
    address = _address(listen_host.strip("[]").lower())
    local = listen_host.lower() == "localhost" or (
        address is not None and (address.is_loopback or address.is_unspecified)
    )
    return OutboundGuard(
        own_origins=frozenset(origins),
        own_ports=frozenset(listen_ports) if local else frozenset(),
        allow_link_local=allow_link_local,
    )


def refusal(uri: str, guard: OutboundGuard) -> str | None:
    """Why cemesh must not deliver to ``uri``, or None when it may.

    ``uri`` is an absolute http(s) URL (admission checked its shape); anything else that does
    not parse is left to the rest of admission and returns None.
    """
    try:
        parts = urlsplit(uri.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    host = host[:-1] if host.endswith(".") else host  # "169.254.169.254." is the same host
    address = _address(host)
    if not guard.allow_link_local:
        if host in METADATA_NAMES:
            return f"{host} is a cloud metadata service"
        if address is not None and _is_link_local(address):
            return (
                f"{address} is a link-local or cloud metadata address "
                "(allow with CEMESH_ALLOW_LINK_LOCAL_DESTINATIONS=true)"
            )
    if _is_cemesh(host, address, port, guard) and not _is_data_plane(parts.path):
        return (
            f"{parts.scheme}://{parts.netloc} is cemesh itself and {parts.path or '/'!r} is not "
            "a Broker, Channel or Service address: cemesh does not deliver events to its own "
            "management API"
        )
    return None


def relative_refusal(uri: str) -> str | None:
    """Why a relative ``uri`` (resolved against a ref's address) is refused, or None.

    Such a URI may only add a path under the address: a network-path reference (``//host/``)
    would leave for another host, and dot segments could climb out of a data-plane path.
    """
    if uri.startswith(("//", "\\\\", "/\\", "\\/")):
        return f"{uri!r} names a host; a uri combined with ref may only be a path"
    if _has_dot_segments(uri.split("?", 1)[0].split("#", 1)[0]):
        return f"{uri!r} has '.' or '..' segments; give the path without them"
    return None


_ACTIVE: ContextVar[OutboundGuard | None] = ContextVar("cemesh_outbound_guard", default=None)


@contextlib.contextmanager
def guarding(guard: OutboundGuard | None) -> Iterator[None]:
    """Admit destinations under ``guard`` (None: unguarded) for the duration of the block."""
    token = _ACTIVE.set(guard)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_guard() -> OutboundGuard | None:
    """The guard set by :func:`guarding` around the admission in progress, if any."""
    return _ACTIVE.get()


# --- helpers ------------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port or (443 if parts.scheme.lower() == "https" else 80)


def _address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal one in any form clients accept."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        # 2852039166, 0251.0376.0251.0376, 0xa9fea9fe, 169.254.43518: all 169.254.169.254 to
        # inet_aton, getaddrinfo and URL parsers alike.
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, 6to4, NAT64, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    value = int(address)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d, the deprecated IPv4-compatible form
        return ipaddress.IPv4Address(value)
    return None


def _is_link_local(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and _is_link_local(embedded):
            return True
        address = ipaddress.IPv6Address(address.packed)  # without the zone (fe80::1%eth0)
    return address.is_link_local or address in METADATA_ADDRESSES


def _is_cemesh(host: str, address: IPAddress | None, port: int, guard: OutboundGuard) -> bool:
    if (host, port) in guard.own_origins:
        return True
    if port not in guard.own_ports:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and (embedded.is_loopback or embedded.is_unspecified):
            return True
    return address.is_loopback or address.is_unspecified


def _is_data_plane(path: str) -> bool:
    """A Broker's ingress (``/{ns}/{name}``), a Channel's or a Service's address."""
    if "\\" in path or _has_dot_segments(path):
        return False  # clients resolve dot segments: /a/b/../../apis is the API
    return match_route(path) is not None or path.startswith(DATA_PLANE_PREFIXES)


def _decode_dots(path: str) -> str:
    return re.sub("%2e", ".", path, flags=re.IGNORECASE)


def _has_dot_segments(path: str) -> bool:
    segments = _decode_dots(path).replace("\\", "/").split("/")
    return any(segment in (".", "..") for segment in segments)
