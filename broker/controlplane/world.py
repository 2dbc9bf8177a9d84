"""What one reconcile pass sees and shares: the :class:`World`, conditions, destination resolution.

The world holds every stored object of the pass, the statuses computed so far, and what the
reconcilers build for the data plane (runtime specs, owned children). Every kind's reconciler
(:mod:`broker.controlplane.eventing.reconcile`, and the features' ``reconcile`` modules) works
through it.

One rule resolves every subscriber, reply, sink and dead-letter sink, whichever kind asks
(Trigger, Subscription, Sequence and Parallel through their Subscriptions, every source, a
SinkBinding): :meth:`World.resolve`. A reference resolves when the object exists and can take
events: it is Ready, or, not Ready, it still has an address (``status.address.url``: a Service
whose new Revision failed still serves its last good route), as Knative's resolver reads the
address. Otherwise it is ``DestinationNotFound`` / ``DestinationNotReady`` with the target's
own reason in the message. How a referenced kind turns into a URL is the catalog's
``address_resolvers`` (:class:`~broker.controlplane.catalog.Catalog`), keyed by (API group, kind).

A reconciler may look up the readiness of a kind reconciled after it (a forward look-up); it reads
the previous pass's status and :func:`broker.controlplane.reconcile.reconcile` runs again until they
agree. Pure: nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, cast
from urllib.parse import urljoin

from broker.controlplane.catalog import ResourceType
from broker.core.durations import parse_duration
from broker.core.ingress_authorization import AuthorizationMode, CompiledPolicy
from broker.core.spec import (
    BrokerSpec,
    ChannelSpec,
    DeliveryPolicy,
    SubscriptionSpec,
    TriggerSpec,
)

Status = Literal["True", "False", "Unknown"]
Obj = Mapping[str, Any]
ObjKey = tuple[str, str, str, str]  # (API group, kind, namespace, name)
# How a referenced object of one kind turns into a URL (a Destination's ref).
AddressResolver = Callable[[Obj, "World"], str]


def broker_url(base_url: str, namespace: str, name: str) -> str:
    """Address of a Broker (K26, K36)."""
    return f"{base_url.rstrip('/')}/{namespace}/{name}"


def channel_url(base_url: str, namespace: str, name: str) -> str:
    """Address of a Channel or InMemoryChannel."""
    return f"{base_url.rstrip('/')}/channels/{namespace}/{name}"


def audience_of(group: str, kind: str, namespace: str, name: str) -> str:
    """The OIDC audience of an addressable, as Knative's ``GetAudience`` (lower case)."""
    return f"{group}/{kind}/{namespace}/{name}".lower()


# --- small helpers ------------------------------------------------------------------------------


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def key_of(obj: Obj) -> ObjKey:
    metadata = obj["metadata"]
    return (group_of(obj["apiVersion"]), obj["kind"], metadata["namespace"], metadata["name"])


def reference_key(ref: Mapping[str, Any], namespace: str) -> ObjKey:
    """The key of the object a reference (a Destination's ``ref``) names; its namespace
    defaults to the referrer's ``namespace``."""
    return (
        group_of(str(ref.get("apiVersion", ""))),
        str(ref.get("kind", "")),
        str(ref.get("namespace") or namespace),
        str(ref.get("name", "")),
    )


def destination_references(destination: object, namespace: str) -> tuple[ObjKey, ...]:
    """The keys of the objects resolving ``destination`` reads (:meth:`World.resolve`)."""
    if not isinstance(destination, Mapping):
        return ()
    ref = destination.get("ref")
    return (reference_key(ref, namespace),) if isinstance(ref, Mapping) else ()


def describe(kind: str, namespace: str, name: str) -> str:
    return f'{kind} "{namespace}/{name}"'


def sets_any(delivery: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether a delivery spec sets any field at all (K66, K124: then it replaces the parent's)."""
    return isinstance(delivery, Mapping) and any(v is not None for v in delivery.values())


class Unresolvable(Exception):
    """A destination has no URL now. ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Conditions:
    """Builds a status's conditions, keeping lastTransitionTime when a status did not change."""

    def __init__(self, obj: Obj, now: str) -> None:
        previous = (obj.get("status") or {}).get("conditions") or []
        self._previous = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
        self._now = now
        self._items: list[dict[str, str]] = []

    def set(self, type_: str, status: Status, reason: str = "", message: str = "") -> None:
        if status == "False" and not reason:  # K163: False always carries a reason
            reason = f"{type_}False"
        before = self._previous.get(type_)
        since = (
            before["lastTransitionTime"]
            if before and before.get("status") == status and before.get("lastTransitionTime")
            else self._now
        )
        self._items.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            }
        )

    def get(self, type_: str) -> dict[str, str]:
        return next(c for c in self._items if c["type"] == type_)

    def not_true(self, types: tuple[str, ...]) -> list[str]:
        """Those of ``types`` whose condition (each set) is not True, in the order of ``types``.

        One pass over the conditions for all of them (a Trigger asks for four, 10,000 times in
        a start's reconcile), not one :meth:`get` each.
        """
        first: dict[str, str] = {}
        for condition in self._items:
            first.setdefault(condition["type"], condition["status"])
        return [type_ for type_ in types if first[type_] != "True"]

    def summary(self) -> list[dict[str, str]]:
        """``[Ready, *sub-conditions]``: Ready is the first False, else first Unknown, else True."""
        worst = next((c for c in self._items if c["status"] == "False"), None)
        worst = worst or next((c for c in self._items if c["status"] == "Unknown"), None)
        if worst is None:
            self.set("Ready", "True")
        else:
            self.set("Ready", cast(Status, worst["status"]), worst["reason"], worst["message"])
        ready = self._items.pop()
        return [ready, *self._items]


def ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )


def serves(status: Mapping[str, Any] | None) -> tuple[bool | None, bool]:
    """(Ready, has an address) of a status; (None, False) when there is none."""
    if status is None:
        return None, False
    ready = ready_condition(status)
    address = status.get("address")
    url = address.get("url") if isinstance(address, Mapping) else None
    return (ready is not None and ready.get("status") == "True"), bool(url)


@dataclass(frozen=True, slots=True)
class Delivery:
    """The delivery spec in force for an object, and its dead-letter sink resolved."""

    spec: Mapping[str, Any] | None  # None: the server default
    dead_letter_uri: str | None = None
    failure: tuple[str, str] | None = None  # (reason, message) when the sink does not resolve
    dead_letter_audience: str | None = None
    dead_letter_ca_certs: str | None = None

    @property
    def configured(self) -> bool:
        return self.spec is not None and self.spec.get("deadLetterSink") is not None


def base_status(obj: Obj, conditions: Conditions) -> dict[str, Any]:
    generation = obj["metadata"].get("generation") or 0
    return {"observedGeneration": int(generation), "conditions": conditions.summary()}


# --- the world one pass sees --------------------------------------------------------------------


@dataclass
class World:
    base_url: str
    default_delivery: DeliveryPolicy
    default_channel: ResourceType  # the kind that backs Brokers and template-less Channels
    now: str
    unavailable_buses: Mapping[str, str]  # bus name -> why it cannot be used now
    objects: dict[ObjKey, Obj]
    https_base_url: str | None = None  # base of https addresses, when HTTPS is served
    ca_certs: str | None = None  # PEM of the CA behind them (their CACerts)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The delivery of Brokers and Channels, as their Triggers and Subscriptions inherit it.
    parent_delivery: dict[ObjKey, Delivery] = field(default_factory=dict)
    brokers: dict[tuple[str, str], BrokerSpec] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelSpec] = field(default_factory=dict)
    triggers: dict[str, TriggerSpec] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionSpec] = field(default_factory=dict)
    # Objects that resources own and cemesh keeps in the store (a Channel's backing channel).
    children: list[dict[str, Any]] = field(default_factory=list)
    # Runtime specs of the components (sources, invoker): component name -> key -> spec.
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Ingress OIDC (Knative's authentication-oidc) and who may send when no EventPolicy applies.
    ingress_oidc: bool = False
    default_authorization_mode: AuthorizationMode = "allow-same-namespace"
    # The EventPolicies that apply to each ingress route ("broker"|"channel", namespace, name).
    route_policies: dict[tuple[str, str, str], dict[str, CompiledPolicy]] = field(
        default_factory=dict
    )
    # Statuses of the previous pass (at first, the stored ones), for forward look-ups.
    prior: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # uid -> what a forward look-up saw of it (readiness, address): checked after the pass.
    forward: dict[str, tuple[bool | None, bool]] = field(default_factory=dict)
    # (API group, kind) -> how a Destination's ref to such an object resolves (the catalog's).
    # A resolver reads only the target object and the world's settings, no other object
    # (broker.controlplane.incremental relies on it).
    address_resolvers: Mapping[tuple[str, str], AddressResolver] = field(default_factory=dict)

    def find(self, key: ObjKey) -> Obj | None:
        return self.objects.get(key)

    def _status(self, obj: Obj) -> Mapping[str, Any] | None:
        """``obj``'s status as this pass computed it, else as the previous pass did (and noted
        as a forward look-up)."""
        uid = obj["metadata"]["uid"]
        computed = self.statuses.get(uid)
        if computed is not None:
            return computed
        previous = self.prior.get(uid)
        self.forward[uid] = serves(previous)
        return previous

    def is_ready(self, obj: Obj) -> bool | None:
        """Ready as computed in this pass (or the previous one, module docstring); None when
        never computed."""
        return serves(self._status(obj))[0]

    def has_address(self, obj: Obj) -> bool:
        return serves(self._status(obj))[1]

    def resolve(
        self, destination: Mapping[str, Any], namespace: str, *, require_ready: bool
    ) -> str:
        """The URL of a Destination (K159-K161), or Unresolvable."""
        return self.resolve_address(destination, namespace, require_ready=require_ready).url

    def resolve_address(
        self, destination: Mapping[str, Any], namespace: str, *, require_ready: bool
    ) -> Address:
        """A Destination's URL with its token audience and CA certificates, or
        Unresolvable. The destination's own ``audience`` and ``CACerts`` win over those
        in a referenced object's ``status.address`` (Knative's resolver)."""
        audience = destination.get("audience") or None
        ca_certs = destination.get("CACerts") or None
        ref = destination.get("ref")
        if isinstance(ref, Mapping):
            url, published = self._resolve_ref(destination, ref, namespace, require_ready)
            audience = audience or published.get("audience") or None
            ca_certs = ca_certs or published.get("CACerts") or None
        else:
            url = str(destination.get("uri") or "")
            if not url:
                raise Unresolvable("DestinationInvalid", "the destination has neither ref nor uri")
        return Address(url, audience, ca_certs)

    def _resolve_ref(
        self,
        destination: Mapping[str, Any],
        ref: Mapping[str, Any],
        namespace: str,
        require_ready: bool,
    ) -> tuple[str, Mapping[str, Any]]:
        """The URL of a referenced object and its ``status.address`` (``{}`` when none)."""
        uri = destination.get("uri") or ""
        api_version = str(ref.get("apiVersion", ""))
        key = reference_key(ref, namespace)
        what = describe(*key[1:])
        resolver = self.address_resolvers.get(key[:2])
        if resolver is None:
            supported = ", ".join(k for _, k in self.address_resolvers)
            raise Unresolvable(
                "DestinationNotSupported",
                f"cannot resolve {what} ({api_version}): only {supported} references "
                "and uri resolve in this version",
            )
        target = self.find(key)
        if target is None:
            raise Unresolvable("DestinationNotFound", f"{what} does not exist")
        if require_ready and self.is_ready(target) is False and not self.has_address(target):
            ready = ready_condition(self._status(target) or {}) or {}
            why = ready.get("message") or ready.get("reason") or ""
            raise Unresolvable(
                "DestinationNotReady", f"{what} is not Ready" + (f": {why}" if why else "")
            )
        address = resolver(target, self)
        status = self.statuses.get(target["metadata"].get("uid", "")) or target.get("status") or {}
        published = status.get("address") if isinstance(status, Mapping) else None
        url = urljoin(address, uri) if uri else address  # K160
        return url, published if isinstance(published, Mapping) else {}

    def policy(
        self,
        delivery: Mapping[str, Any] | None,
        field_: str,
        dead_letter_uri: str | None,
        sink: Delivery | None = None,
    ) -> DeliveryPolicy:
        """A DeliverySpec as a DeliveryPolicy; None means the server default. ``sink``: the
        resolved delivery whose dead-letter audience and CA certificates go along.

        Unset fields take the DeliveryPolicy defaults, except ``timeout``, which is a server
        setting when not given.
        """
        if delivery is None:
            return self.default_delivery
        base = DeliveryPolicy()

        def seconds(name: str, otherwise: float) -> float:
            text = delivery.get(name)
            return otherwise if text is None else parse_duration(text, f"{field_}.{name}")

        return DeliveryPolicy(
            retry=int(delivery.get("retry") or base.retry),
            backoff_policy=delivery.get("backoffPolicy") or base.backoff_policy,
            backoff_delay=seconds("backoffDelay", base.backoff_delay),
            timeout=seconds("timeout", self.default_delivery.timeout),
            retry_after_max=seconds("retryAfterMax", base.retry_after_max),
            dead_letter_uri=dead_letter_uri,
            format=delivery.get("format") or base.format,
            dead_letter_audience=None if sink is None else sink.dead_letter_audience,
            dead_letter_ca_certs=None if sink is None else sink.dead_letter_ca_certs,
        )


@dataclass(frozen=True, slots=True)
class Address:
    """A resolved destination: its URL, the audience of tokens for it, the CAs it chains to."""

    url: str
    audience: str | None = None
    ca_certs: str | None = None


def owner_reference(obj: Obj) -> dict[str, Any]:
    """An ownerReference to ``obj`` marking it as the controller of the owned object."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --- delivery ------------------------------------------------------------------------------------


def own_delivery(obj: Obj, world: World, *, require_ready: bool) -> Delivery:
    """``spec.delivery`` of ``obj`` with its dead-letter sink resolved (K58, K135)."""
    delivery = (obj.get("spec") or {}).get("delivery")
    if not sets_any(delivery):
        return Delivery(None)
    sink = delivery.get("deadLetterSink")
    if sink is None:
        return Delivery(delivery)
    try:
        address = world.resolve_address(
            sink, obj["metadata"]["namespace"], require_ready=require_ready
        )
    except Unresolvable as exc:
        return Delivery(delivery, failure=(exc.reason, f"dead letter sink: {exc.message}"))
    return Delivery(
        delivery,
        address.url,
        dead_letter_audience=address.audience,
        dead_letter_ca_certs=address.ca_certs,
    )


def effective_delivery(obj: Obj, world: World, parent: ObjKey | None) -> Delivery:
    """The delivery of a Trigger/Subscription: its own, else its parent's, else the default.

    K66/K124: a child that sets any delivery field uses only its own spec, never a field merge;
    otherwise the parent's (Broker/Channel) spec as a whole applies.
    """
    own = own_delivery(obj, world, require_ready=True)
    if own.spec is not None or parent is None or parent not in world.parent_delivery:
        return own
    inherited = world.parent_delivery[parent]
    if inherited.failure is not None:
        reason, message = inherited.failure
        return Delivery(inherited.spec, failure=(reason, f"inherited from {parent[1]}: {message}"))
    return inherited


def set_dead_letter_condition(conditions: Conditions, delivery: Delivery) -> None:
    if delivery.failure is not None:
        conditions.set("DeadLetterSinkResolved", "False", *delivery.failure)
    elif delivery.dead_letter_uri is not None:
        conditions.set("DeadLetterSinkResolved", "True")
    else:
        conditions.set(
            "DeadLetterSinkResolved",
            "True",
            "DeadLetterSinkNotConfigured",
            "No dead letter sink is configured.",
        )


def addresses(url: str, https_url: str | None, ca_certs: str | None) -> list[dict[str, Any]]:
    """An addressable's ``status.addresses``, the preferred one (``status.address``) last.

    Knative's transport encryption: with https served, the https address is the one to use
    and carries ``CACerts`` (when configured); when plain http is served too, both are listed.
    """
    http: dict[str, Any] = {"name": "http", "url": url}
    if https_url is None:
        return [http]
    https: dict[str, Any] = {"name": "https", "url": https_url}
    if ca_certs:
        https["CACerts"] = ca_certs
    return [https] if https_url == url else [http, https]
