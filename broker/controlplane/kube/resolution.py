"""Destinations resolved in a cluster, as Knative's resolver does it. Pure.

A Knative Destination is ``{ref, uri, audience, CACerts}``:

- ``uri`` alone: an absolute URL, used as is;
- ``ref`` to a core ``v1 Service``: ``http://NAME.NAMESPACE.svc.cluster.local/`` (Knative's
  ``network.GetServiceHostname``), once the Service exists;
- ``ref`` to anything else: an Addressable, i.e. an object with ``status.address.url``
  (Knative Services, Brokers, Channels, ...); Knative reads the address whether or not the
  object is Ready. Without an address it does not resolve: ``DestinationNotReady`` with the
  target's own Ready reason and message (so the Trigger says why), or ``DestinationNotFound``
  when it does not exist;
- ``ref`` and ``uri``: the uri resolved relative to the ref's URL;
- the destination's own ``audience`` / ``CACerts`` win over those the address publishes.

:func:`resolve_destination` takes a ``lookup`` of the objects the control loop watches, so it
is pure; :func:`addressable_kinds` says which kinds to watch for a set of destinations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from broker.controlplane.world import Address, Unresolvable

# (apiVersion, kind, namespace, name) -> the object, or None when it does not exist.
Lookup = Callable[[str, str, str, str], Mapping[str, Any] | None]

CLUSTER_DOMAIN = "cluster.local"


def is_core_service(api_version: str, kind: str) -> bool:
    return api_version == "v1" and kind == "Service"


def service_url(name: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    return f"http://{name}.{namespace}.svc.{cluster_domain}/"


def _ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    for condition in conditions or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition
    return {}


def _published_address(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    address = status.get("address") if isinstance(status, Mapping) else None
    return address if isinstance(address, Mapping) else {}


def resolve_destination(
    destination: Mapping[str, Any],
    namespace: str,
    lookup: Lookup,
    *,
    cluster_domain: str = CLUSTER_DOMAIN,
) -> Address:
    """The URL (with audience and CA certificates) of ``destination``, or raises
    :class:`~broker.controlplane.reconcile.Unresolvable` with a CamelCase reason and a message."""
    uri = str(destination.get("uri") or "")
    ref = destination.get("ref")
    audience = destination.get("audience") or None
    ca_certs = destination.get("CACerts") or None
    if not isinstance(ref, Mapping):
        if not uri:
            raise Unresolvable("DestinationInvalid", "the destination has neither ref nor uri")
        if not urlsplit(uri).scheme or not urlsplit(uri).netloc:
            raise Unresolvable("DestinationInvalid", f"uri {uri!r} is not an absolute URL")
        return Address(uri, audience, ca_certs)
    api_version, kind = str(ref.get("apiVersion") or ""), str(ref.get("kind") or "")
    name = str(ref.get("name") or "")
    ref_namespace = str(ref.get("namespace") or namespace)
    what = f"{kind} {ref_namespace}/{name} ({api_version})"
    if not (api_version and kind and name):
        raise Unresolvable("DestinationInvalid", "ref needs apiVersion, kind and name")
    target = lookup(api_version, kind, ref_namespace, name)
    if target is None:
        raise Unresolvable("DestinationNotFound", f"{what} does not exist")
    if is_core_service(api_version, kind):
        base = service_url(name, ref_namespace, cluster_domain)
    else:
        address = _published_address(target)
        base = str(address.get("url") or "")
        if not base:
            ready = _ready_condition(target)
            why = str(ready.get("message") or ready.get("reason") or "it has no status.address")
            raise Unresolvable("DestinationNotReady", f"{what} is not Ready: {why}")
        audience = audience or address.get("audience") or None
        ca_certs = ca_certs or address.get("CACerts") or None
    return Address(urljoin(base, uri) if uri else base, audience, ca_certs)


def referenced_kinds(destinations: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """The (apiVersion, kind) pairs the destinations' refs name: the kinds to watch."""
    kinds: set[tuple[str, str]] = set()
    for destination in destinations:
        ref = destination.get("ref")
        if isinstance(ref, Mapping) and ref.get("apiVersion") and ref.get("kind"):
            kinds.add((str(ref["apiVersion"]), str(ref["kind"])))
    return kinds
