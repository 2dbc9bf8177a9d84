"""Reconcile: stored resources in, their statuses and the data plane's Snapshot out. Pure.

:func:`reconcile` looks at every stored object at once and decides, for each, the ``status`` it
should have now (conditions with a summary ``Ready``, K163; addresses; resolved URIs) and which
of them the data plane runs (:class:`~broker.core.spec.Snapshot`: Brokers and Channels that are
Ready, Triggers and Subscriptions that are Ready, with URLs resolved, durations in seconds, filters
compiled and the effective delivery policy chosen).

This module is the driver: it runs the catalog's reconcilers
(:class:`~broker.controlplane.catalog.Catalog`, built from the feature list in
:mod:`broker.server.features`) in phase order over a fresh :class:`~broker.controlplane.world.World`
and gathers what they decided. The eventing kinds' reconcilers are in
:mod:`broker.controlplane.eventing.reconcile`; the features' in their own ``reconcile`` modules.

Phases mean a kind may look up the readiness of a kind reconciled after it (a Trigger's
subscriber is a Service or a Sequence). Such a forward look-up reads the status of the previous
pass (at first, the stored one), and :func:`reconcile` runs the phases again, with the statuses
just computed, until every forward look-up saw what its target now says (at most
:data:`MAX_SETTLE_PASSES` passes), so the answer never depends on the order of the phases.

With ingress OIDC on, the snapshot carries, per ingress route, the audience of its Broker or
channel and the EventPolicies that apply (:mod:`broker.features.eventpolicy.reconcile` adds them).

Nothing here raises for a bad stored object: a field that no longer parses makes that object not
Ready with a reason, and every other object is still reconciled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.controlplane.catalog import Catalog
from broker.controlplane.incremental import Memo, MemoPass
from broker.controlplane.resources import (
    BROKER,
    CHANNEL_BUSES,
    EVENTING,
    IN_MEMORY_CHANNEL,
    MESSAGING,
    channel_type,
)
from broker.controlplane.world import World, audience_of, group_of, key_of, serves
from broker.core.events import now_rfc3339
from broker.core.ingress_authorization import AuthorizationMode, IngressAuthorization
from broker.core.spec import (
    DeliveryPolicy,
    Snapshot,
)


@dataclass(frozen=True)
class Reconciled:
    """The result of one reconcile pass."""

    statuses: dict[str, dict[str, Any]]  # by metadata.uid: the status each object should have now
    snapshot: Snapshot
    # Objects owned by others (ownerReferences, controller) that must exist, as desired now.
    children: list[dict[str, Any]] = field(default_factory=list)
    # What the next reconcile may reuse (broker.controlplane.incremental); None when not asked.
    memo: Memo | None = None
    reused: int = 0  # objects whose outcome came from ``memo`` given (last settle pass)


def reconcile(
    objects: Sequence[Mapping[str, Any]],
    *,
    base_url: str,
    default_delivery: DeliveryPolicy,
    catalog: Catalog,
    default_channel: str = IN_MEMORY_CHANNEL.kind,
    unavailable_buses: Mapping[str, str] | None = None,
    now: str | None = None,
    ingress_oidc: bool = False,
    default_authorization_mode: AuthorizationMode = "allow-same-namespace",
    https_base_url: str | None = None,
    ca_certs: str | None = None,
    memo: Memo | None = None,
    incremental: bool = False,
) -> Reconciled:
    """Statuses for ``objects`` (stored resources, with metadata.uid) and the Snapshot to run.

    ``catalog``: the kinds served and their reconcilers, in phase order (broker.server.features).
    Objects of kinds it does not reconcile get no entry in ``statuses``. Brokers and
    channels on a bus named in ``unavailable_buses`` (it failed to open) are not Ready and stay
    out of the snapshot, so that one unreachable bus does not stop everything else.
    ``ingress_oidc``: senders must present tokens (audiences published, EventPolicies compiled
    into the snapshot); ``default_authorization_mode`` decides where no EventPolicy applies.
    ``incremental``: return a :class:`~broker.controlplane.incremental.Memo` for the next call,
    which passes it as ``memo`` to reuse the outcomes of objects that did not change (the
    result is the same as without it).
    """
    stored = {
        obj["metadata"]["uid"]: obj["status"]
        for obj in objects
        if isinstance(obj.get("status"), Mapping)
    }
    prior: Mapping[str, Mapping[str, Any]] = stored
    # Objects by (API group, kind), in their order: each reconciler visits its own kind only
    # (testing every object's kind for every reconciler was a tenth of a reconcile).
    by_kind: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault((group_of(obj["apiVersion"]), obj["kind"]), []).append(obj)
    by_key = {key_of(obj): obj for obj in objects}
    unavailable = unavailable_buses or {}
    settings = (
        base_url, default_delivery, default_channel, sorted(unavailable.items()), ingress_oidc,
        default_authorization_mode, https_base_url, ca_certs,
    )  # fmt: skip
    reuse = MemoPass(memo, catalog, settings)
    for _ in range(MAX_SETTLE_PASSES):
        world = World(
            base_url=base_url.rstrip("/"),
            default_delivery=default_delivery,
            default_channel=channel_type(default_channel) or IN_MEMORY_CHANNEL,
            now=now or now_rfc3339(),
            unavailable_buses=unavailable,
            objects=by_key,
            prior=prior,
            ingress_oidc=ingress_oidc,
            default_authorization_mode=default_authorization_mode,
            https_base_url=None if https_base_url is None else https_base_url.rstrip("/"),
            ca_certs=ca_certs,
            address_resolvers=catalog.address_resolvers,
        )
        for entry in catalog.reconcilers:
            reuse.run(entry, by_kind.get((entry.group, entry.kind), []), world)
        settled = all(
            serves(world.statuses[uid]) == seen
            for uid, seen in world.forward.items()
            if uid in world.statuses  # kinds nobody reconciles keep what they have
        )
        if settled:
            break
        prior = {**stored, **world.statuses}
        reuse.next_pass()
    return _result(world, reuse.memo() if incremental else None, reuse.reused)


def _result(world: World, memo: Memo | None, reused: int) -> Reconciled:
    """What the last pass decided, channels' subscriber lists in uid order."""
    for status in world.statuses.values():
        if "subscribers" in status:
            status["subscribers"].sort(key=lambda entry: entry["uid"])
    return Reconciled(
        statuses=world.statuses,
        snapshot=Snapshot(
            brokers=world.brokers,
            channels=world.channels,
            triggers=world.triggers,
            subscriptions=world.subscriptions,
            components=world.components,
            ingress_authorization=_ingress_authorization(world),
        ),
        children=world.children,
        memo=memo,
        reused=reused,
    )


def _ingress_authorization(world: World) -> dict[tuple[str, str, str], IngressAuthorization]:
    """Per ingress route of a Ready Broker or channel: its audience and applying policies."""
    if not world.ingress_oidc:
        return {}
    routes: list[tuple[tuple[str, str, str], str, str]] = [
        (("broker", ns, name), audience_of(EVENTING, BROKER.kind, ns, name), ns)
        for (ns, name) in world.brokers
    ]
    for (ns, name), channel in world.channels.items():
        group = next((t.group for t in CHANNEL_BUSES if t.kind == channel.kind), MESSAGING)
        routes.append((("channel", ns, name), audience_of(group, channel.kind, ns, name), ns))
    return {
        route: IngressAuthorization(
            audience=audience,
            namespace=namespace,
            policies=tuple(
                policy for _, policy in sorted((world.route_policies.get(route) or {}).items())
            ),
            default_mode=world.default_authorization_mode,
        )
        for route, audience, namespace in routes
    }


# Passes of reconcile() until forward look-ups agree with what they looked up (module docstring):
# a chain of forward look-ups (Trigger -> Sequence -> Service) settles in one pass per link.
MAX_SETTLE_PASSES = 4
