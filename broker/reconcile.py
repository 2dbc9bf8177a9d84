"""Reconcile: stored resources in, their statuses and the data plane's Snapshot out. Pure.

:func:`reconcile` looks at every stored object at once and decides, for each, the ``status`` it
should have now (conditions with a summary ``Ready``, K163; addresses; resolved URIs) and which
of them the data plane runs (:class:`~broker.spec.Snapshot`: Brokers and Channels that are Ready,
Triggers and Subscriptions that are Ready, with URLs resolved, durations in seconds, filters
compiled and the effective delivery policy chosen).

Kinds are handled in phases (:data:`RECONCILERS`) so each sees what it depends on: addressables
first (Broker, InMemoryChannel, Channel), then Subscriptions (they need their Channel and add
themselves to its subscriber list), then Triggers (they need their Broker). Destinations
resolve through :data:`ADDRESS_RESOLVERS`, a table keyed by (API group, kind): a later kind that
has an address (Knative Service, Sequence, Parallel) adds one row.

With ingress OIDC on, Brokers and channels publish ``status.address.audience`` (Knative's
``<group>/<kind>/<namespace>/<name>``, lower case), and the snapshot carries, per ingress route,
that audience and the EventPolicies that apply (:mod:`broker.eventpolicy.reconcile` adds them).

One rule resolves every subscriber, reply, sink and dead-letter sink, whichever kind asks
(Trigger, Subscription, Sequence and Parallel through their Subscriptions, every source, a
SinkBinding): :meth:`_World.resolve`. A reference resolves when the object exists and can take
events: it is Ready, or, not Ready, it still has an address (``status.address.url``: a Service
whose new Revision failed still serves its last good route), as Knative's resolver reads the
address. Otherwise it is ``DestinationNotFound`` / ``DestinationNotReady`` with the target's
own reason in the message.

Phases mean a kind may look up the readiness of a kind reconciled after it (a Trigger's
subscriber is a Service or a Sequence). Such a forward look-up reads the status of the previous
pass (at first, the stored one), and :func:`reconcile` runs the phases again, with the statuses
just computed, until every forward look-up saw what its target now says (at most
:data:`MAX_SETTLE_PASSES` passes), so the answer never depends on the order of the phases.

Nothing here raises for a bad stored object: a field that no longer parses makes that object not
Ready with a reason, and every other object is still reconciled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, cast
from urllib.parse import urljoin

import orjson
import yaml

from broker import spec as runtime
from broker.auth.identity import delivery_subject
from broker.auth.policy import AuthorizationMode, CompiledPolicy, IngressAuthorization
from broker.dispatch.filters import (
    FILTER_PAYLOAD_ANNOTATION,
    FILTER_PAYLOAD_ENABLED,
    compile_trigger_filter,
)
from broker.durations import parse_duration
from broker.errors import InvalidResource
from broker.events import now_rfc3339
from broker.resources import (
    BROKER,
    BROKER_CLASS_ANNOTATION,
    CHANNEL,
    CHANNEL_BUSES,
    CONFIG_MAP,
    DELIVERY_ORDER_ANNOTATION,
    DEPENDENCY_ANNOTATION,
    EVENTING,
    IN_MEMORY_CHANNEL,
    KAFKA_CHANNEL,
    MESSAGING,
    SECRET,
    SUBSCRIPTION,
    TRIGGER,
    ResourceType,
    channel_type,
    trigger_broker,
)
from broker.spec import (
    BrokerSpec,
    ChannelSpec,
    DeliveryPolicy,
    Snapshot,
    SubscriptionSpec,
    TriggerSpec,
)

__all__ = [
    "ADDRESS_RESOLVERS",
    "OWNER_KINDS",
    "Address",
    "Conditions",
    "Reconciled",
    "Unresolvable",
    "World",
    "audience_of",
    "broker_url",
    "channel_url",
    "owner_reference",
    "reconcile",
    "register_reconciler",
]

# The broker class of Knative's Kafka broker: a Broker of that class is backed by Kafka.
KAFKA_BROKER_CLASS = "Kafka"

Status = Literal["True", "False", "Unknown"]
Obj = Mapping[str, Any]
ObjKey = tuple[str, str, str, str]  # (API group, kind, namespace, name)


@dataclass(frozen=True)
class Reconciled:
    """The result of one reconcile pass."""

    statuses: dict[str, dict[str, Any]]  # by metadata.uid: the status each object should have now
    snapshot: Snapshot
    # Objects owned by others (ownerReferences, controller) that must exist, as desired now.
    children: list[dict[str, Any]] = field(default_factory=list)


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


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _key_of(obj: Obj) -> ObjKey:
    metadata = obj["metadata"]
    return (_group(obj["apiVersion"]), obj["kind"], metadata["namespace"], metadata["name"])


def _describe(kind: str, namespace: str, name: str) -> str:
    return f'{kind} "{namespace}/{name}"'


def _sets_any(delivery: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether a delivery spec sets any field at all (K66, K124: then it replaces the parent's)."""
    return isinstance(delivery, Mapping) and any(v is not None for v in delivery.values())


class _UnresolvableError(Exception):
    """A destination has no URL now. ``reason`` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Conditions:
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


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )


def _serves(status: Mapping[str, Any] | None) -> tuple[bool | None, bool]:
    """(Ready, has an address) of a status; (None, False) when there is none."""
    if status is None:
        return None, False
    ready = _ready_condition(status)
    address = status.get("address")
    url = address.get("url") if isinstance(address, Mapping) else None
    return (ready is not None and ready.get("status") == "True"), bool(url)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """The delivery spec in force for an object, and its dead-letter sink resolved."""

    spec: Mapping[str, Any] | None  # None: the server default
    dead_letter_uri: str | None = None
    failure: tuple[str, str] | None = None  # (reason, message) when the sink does not resolve
    dead_letter_audience: str | None = None
    dead_letter_ca_certs: str | None = None

    @property
    def configured(self) -> bool:
        return self.spec is not None and self.spec.get("deadLetterSink") is not None


def _base_status(obj: Obj, conditions: _Conditions) -> dict[str, Any]:
    generation = obj["metadata"].get("generation") or 0
    return {"observedGeneration": int(generation), "conditions": conditions.summary()}


# --- the world one pass sees --------------------------------------------------------------------


@dataclass
class _World:
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
    parent_delivery: dict[ObjKey, _Delivery] = field(default_factory=dict)
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
        self.forward[uid] = _serves(previous)
        return previous

    def is_ready(self, obj: Obj) -> bool | None:
        """Ready as computed in this pass (or the previous one, module docstring); None when
        never computed."""
        return _serves(self._status(obj))[0]

    def has_address(self, obj: Obj) -> bool:
        return _serves(self._status(obj))[1]

    def resolve(
        self, destination: Mapping[str, Any], namespace: str, *, require_ready: bool
    ) -> str:
        """The URL of a Destination (K159-K161), or _UnresolvableError."""
        return self.resolve_address(destination, namespace, require_ready=require_ready).url

    def resolve_address(
        self, destination: Mapping[str, Any], namespace: str, *, require_ready: bool
    ) -> Address:
        """A Destination's URL with its token audience and CA certificates, or
        _UnresolvableError. The destination's own ``audience`` and ``CACerts`` win over those
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
                raise _UnresolvableError(
                    "DestinationInvalid", "the destination has neither ref nor uri"
                )
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
        api_version, kind = str(ref.get("apiVersion", "")), str(ref.get("kind", ""))
        name = str(ref.get("name", ""))
        ref_namespace = str(ref.get("namespace") or namespace)
        what = _describe(kind, ref_namespace, name)
        resolver = ADDRESS_RESOLVERS.get((_group(api_version), kind))
        if resolver is None:
            supported = ", ".join(k for _, k in ADDRESS_RESOLVERS)
            raise _UnresolvableError(
                "DestinationNotSupported",
                f"cannot resolve {what} ({api_version}): only {supported} references "
                "and uri resolve in this version",
            )
        target = self.find((_group(api_version), kind, ref_namespace, name))
        if target is None:
            raise _UnresolvableError("DestinationNotFound", f"{what} does not exist")
        if require_ready and self.is_ready(target) is False and not self.has_address(target):
            ready = _ready_condition(self._status(target) or {}) or {}
            why = ready.get("message") or ready.get("reason") or ""
            raise _UnresolvableError(
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
        sink: _Delivery | None = None,
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


AddressResolver = Callable[[Obj, _World], str]

# How a referenced object turns into a URL, by (API group, kind). Later kinds add rows.
ADDRESS_RESOLVERS: dict[tuple[str, str], AddressResolver] = {
    (EVENTING, BROKER.kind): lambda obj, world: broker_url(
        world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
    ),
    (MESSAGING, CHANNEL.kind): lambda obj, world: channel_url(
        world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
    ),
    **{
        (channel.group, channel.kind): lambda obj, world: channel_url(
            world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"]
        )
        for channel in CHANNEL_BUSES
    },
}

_CHANNEL_KINDS = frozenset(
    {(MESSAGING, CHANNEL.kind), *((channel.group, channel.kind) for channel in CHANNEL_BUSES)}
)


# --- per kind -----------------------------------------------------------------------------------


def _own_delivery(obj: Obj, world: _World, *, require_ready: bool) -> _Delivery:
    """``spec.delivery`` of ``obj`` with its dead-letter sink resolved (K58, K135)."""
    delivery = (obj.get("spec") or {}).get("delivery")
    if not _sets_any(delivery):
        return _Delivery(None)
    sink = delivery.get("deadLetterSink")
    if sink is None:
        return _Delivery(delivery)
    try:
        address = world.resolve_address(
            sink, obj["metadata"]["namespace"], require_ready=require_ready
        )
    except _UnresolvableError as exc:
        return _Delivery(delivery, failure=(exc.reason, f"dead letter sink: {exc.message}"))
    return _Delivery(
        delivery,
        address.url,
        dead_letter_audience=address.audience,
        dead_letter_ca_certs=address.ca_certs,
    )


def _effective_delivery(obj: Obj, world: _World, parent: ObjKey | None) -> _Delivery:
    """The delivery of a Trigger/Subscription: its own, else its parent's, else the default.

    K66/K124: a child that sets any delivery field uses only its own spec, never a field merge;
    otherwise the parent's (Broker/Channel) spec as a whole applies.
    """
    own = _own_delivery(obj, world, require_ready=True)
    if own.spec is not None or parent is None or parent not in world.parent_delivery:
        return own
    inherited = world.parent_delivery[parent]
    if inherited.failure is not None:
        reason, message = inherited.failure
        return _Delivery(inherited.spec, failure=(reason, f"inherited from {parent[1]}: {message}"))
    return inherited


def _set_dead_letter_condition(conditions: _Conditions, delivery: _Delivery) -> None:
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


def _reconcile_addressable(
    obj: Obj, world: _World, url: str, https_url: str | None = None
) -> tuple[dict[str, Any], bool]:
    """What Brokers and Channels share: address, dead-letter sink, the delivery children inherit.

    Returns the status and whether the object is Ready.
    """
    conditions = _Conditions(obj, world.now)
    delivery = _own_delivery(obj, world, require_ready=False)
    _set_dead_letter_condition(conditions, delivery)
    try:  # check the durations here, so a bad one shows on this object, not on every child
        world.policy(delivery.spec, "spec.delivery", delivery.dead_letter_uri)
    except InvalidResource as exc:
        conditions.set("DeliveryValid", "False", "InvalidDelivery", str(exc))
        delivery = _Delivery(delivery.spec, failure=("InvalidDelivery", str(exc)))
    ready = delivery.failure is None
    if ready:
        conditions.set("Addressable", "True")
    else:
        conditions.set("Addressable", "Unknown", "NotReady", "no address until the spec resolves")
    world.parent_delivery[_key_of(obj)] = delivery
    status = _base_status(obj, conditions)
    if ready:
        listed = addresses(url, https_url, world.ca_certs)
        if world.ingress_oidc:  # Knative sets the audience only with authentication-oidc on
            metadata = obj["metadata"]
            audience = audience_of(
                _group(obj["apiVersion"]), obj["kind"], metadata["namespace"], metadata["name"]
            )
            for entry in listed:
                entry["audience"] = audience
        status["address"] = dict(listed[-1])
        status["addresses"] = listed
    if delivery.dead_letter_uri is not None:
        status["deadLetterSinkUri"] = delivery.dead_letter_uri
    return status, ready


def _broker_channel(obj: Obj, world: _World) -> ResourceType:
    """The channel kind that backs a Broker: from its class, ``spec.config``, or the default.

    ``spec.config`` may reference a channel kind directly (``kind: KafkaChannel``), or, as in
    Knative, a ConfigMap whose ``channel-template-spec`` (or ``channelTemplateSpec``) names one;
    the Knative Kafka broker class (``Kafka``) means Kafka. Raises _UnresolvableError.
    """
    annotations = obj["metadata"].get("annotations") or {}
    if annotations.get(BROKER_CLASS_ANNOTATION) == KAFKA_BROKER_CLASS:
        # A Kafka-class Broker's spec.config names Kafka client settings (Knative's
        # kafka-broker-config: bootstrap.servers, ...), not a channel template; cemesh takes
        # those from its own kafka_* settings, so the ConfigMap is neither read nor required.
        return KAFKA_CHANNEL
    config = (obj.get("spec") or {}).get("config")
    namespace = obj["metadata"]["namespace"]
    if isinstance(config, Mapping):
        kind = str(config.get("kind", ""))
        if kind == CONFIG_MAP.kind:
            name = str(config.get("name", ""))
            config_namespace = str(config.get("namespace") or namespace)
            config_map = world.find(("", CONFIG_MAP.kind, config_namespace, name))
            if config_map is None:
                raise _UnresolvableError(
                    "ConfigNotFound", f"ConfigMap {config_namespace}/{name} does not exist"
                )
            data = config_map.get("data") or {}
            text = data.get("channel-template-spec") or data.get("channelTemplateSpec")
            if not text:
                raise _UnresolvableError(
                    "ConfigInvalid",
                    f"ConfigMap {config_namespace}/{name} has no channel-template-spec key",
                )
            try:
                template = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise _UnresolvableError(
                    "ConfigInvalid", f"channel-template-spec is not YAML: {exc}"
                ) from None
            kind = str((template or {}).get("kind", "")) if isinstance(template, dict) else ""
        backing = channel_type(kind)
        if backing is None:
            available = ", ".join(t.kind for t in CHANNEL_BUSES)
            raise _UnresolvableError(
                "ConfigInvalid",
                f"spec.config names {kind or 'no kind'}; channel kinds: {available}",
            )
        return backing
    return world.default_channel


def _without_readiness(
    obj: Obj, world: _World, status: dict[str, Any], type_: str, reason: str, message: str
) -> dict[str, Any]:
    """``status`` with condition ``type_`` False (so Ready False) and no address."""
    conditions = _Conditions(obj, world.now)
    for condition in status.get("conditions", []):
        if condition["type"] not in ("Ready", "Addressable"):
            conditions.set(
                condition["type"],
                condition["status"],
                condition.get("reason", ""),
                condition.get("message", ""),
            )
    conditions.set("Addressable", "Unknown", "NotReady", "no address until it is Ready")
    conditions.set(type_, "False", reason, message)
    kept = {k: v for k, v in status.items() if k not in ("conditions", "address", "addresses")}
    return {**kept, **_base_status(obj, conditions)}


def _bus_unavailable(world: _World, bus: str) -> str | None:
    """Why ``bus`` cannot be used right now (it failed to open), or None."""
    return world.unavailable_buses.get(bus)


def _reconcile_broker(obj: Obj, world: _World) -> None:
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    url = broker_url(world.base_url, namespace, name)  # K26, K36
    https = world.https_base_url
    https_url = None if https is None else broker_url(https, namespace, name)
    status, ready = _reconcile_addressable(obj, world, url, https_url)
    try:
        backing = _broker_channel(obj, world)
    except _UnresolvableError as exc:
        status = _without_readiness(obj, world, status, "ChannelReady", exc.reason, exc.message)
        ready = False
    else:
        # Knative's MT broker reports its backing channel in status.annotations.
        status["annotations"] = {
            "knative.dev/channelAPIVersion": backing.api_version,
            "knative.dev/channelKind": backing.kind,
            "knative.dev/channelName": f"{name}-kne-trigger",
        }
        why = _bus_unavailable(world, CHANNEL_BUSES[backing])
        if why is not None:
            status = _without_readiness(obj, world, status, "ChannelReady", "BusUnavailable", why)
            ready = False
    world.statuses[metadata["uid"]] = status
    if ready:
        world.brokers[(namespace, name)] = BrokerSpec(
            namespace=namespace,
            name=name,
            uid=metadata["uid"],
            topic=runtime.broker_topic(namespace, name),
            bus=CHANNEL_BUSES[backing],
        )


def _reconcile_backing_channel(obj: Obj, world: _World) -> None:
    """A channel implementation (InMemoryChannel, KafkaChannel, ...): an address on its bus."""
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    url = channel_url(world.base_url, namespace, name)
    https = world.https_base_url
    https_url = None if https is None else channel_url(https, namespace, name)
    status, ready = _reconcile_addressable(obj, world, url, https_url)
    backing = channel_type(obj["kind"])
    why = None if backing is None else _bus_unavailable(world, CHANNEL_BUSES[backing])
    if why is not None:
        status = _without_readiness(obj, world, status, "BusReady", "BusUnavailable", why)
        ready = False
    status["subscribers"] = []  # filled by the Subscriptions (K141)
    world.statuses[metadata["uid"]] = status
    if ready and backing is not None:
        world.channels[(namespace, name)] = ChannelSpec(
            namespace=namespace,
            name=name,
            uid=metadata["uid"],
            kind=obj["kind"],
            topic=runtime.channel_topic(namespace, name),
            bus=CHANNEL_BUSES[backing],
        )


def _reconcile_channel(obj: Obj, world: _World) -> None:
    """A generic Channel owns a backing channel of its template's kind, with its own name (as
    Knative names it); the Channel's address is the backing channel's (K136, K140)."""
    metadata = obj["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    spec = obj.get("spec") or {}
    template = spec.get("channelTemplate") or {}
    backing = channel_type(str(template.get("kind", ""))) or world.default_channel
    child_spec = dict(template.get("spec") or {})
    if spec.get("delivery") is not None:
        child_spec["delivery"] = spec["delivery"]
    world.children.append(
        {
            "apiVersion": backing.api_version,
            "kind": backing.kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"messaging.knative.dev/channel": name},
                "ownerReferences": [owner_reference(obj)],
            },
            "spec": child_spec,
        }
    )
    conditions = _Conditions(obj, world.now)
    child = world.find((backing.group, backing.kind, namespace, name))
    child_ready = child is not None and world.is_ready(child)
    status: dict[str, Any]
    if child is None:
        conditions.set(
            "BackingChannelReady", "Unknown", "Creating", f"creating {backing.kind} {name}"
        )
    elif not child_ready:
        conditions.set(
            "BackingChannelReady", "False", "BackingChannelNotReady", f"{backing.kind} not Ready"
        )
    else:
        conditions.set("BackingChannelReady", "True")
    status = _base_status(obj, conditions)
    status["channel"] = {
        "apiVersion": backing.api_version,
        "kind": backing.kind,
        "name": name,
        "namespace": namespace,
    }
    status["subscribers"] = []  # filled by the Subscriptions (K141)
    if child is not None and child_ready:
        child_status = world.statuses[child["metadata"]["uid"]]
        for key in ("address", "addresses", "deadLetterSinkUri"):
            if key in child_status:
                status[key] = child_status[key]
        world.parent_delivery[_key_of(obj)] = world.parent_delivery[_key_of(child)]
    world.statuses[metadata["uid"]] = status


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


def _dependency(obj: Obj, world: _World, conditions: _Conditions) -> None:
    """``knative.dev/dependency`` (K69): the Trigger waits for that object to be Ready."""
    text = (obj["metadata"].get("annotations") or {}).get(DEPENDENCY_ANNOTATION)
    if not text:
        conditions.set("DependencyReady", "True")
        return
    try:
        ref = orjson.loads(text)
        key = (
            _group(str(ref["apiVersion"])),
            str(ref["kind"]),
            str(ref.get("namespace") or obj["metadata"]["namespace"]),
            str(ref["name"]),
        )
    except (ValueError, KeyError, TypeError):
        conditions.set(
            "DependencyReady", "False", "DependencyInvalid", f"{DEPENDENCY_ANNOTATION}: {text!r}"
        )
        return
    what = _describe(key[1], key[2], key[3])
    target = world.find(key)
    if target is None:
        conditions.set("DependencyReady", "False", "DependencyDoesNotExist", f"{what} not found")
        return
    status = world.statuses.get(target["metadata"]["uid"]) or target.get("status") or {}
    ready = _ready_condition(status)
    if ready is None:
        conditions.set("DependencyReady", "Unknown", "DependencyUnknown", f"{what} has no status")
    elif ready.get("status") == "True":
        conditions.set("DependencyReady", "True")
    else:
        conditions.set(
            "DependencyReady",
            "False" if ready.get("status") == "False" else "Unknown",
            str(ready.get("reason") or "DependencyNotReady"),
            f"{what} is not Ready: {ready.get('message') or 'no message'}",
        )


_TRIGGER_PREREQUISITES = ("BrokerReady", "SubscriberResolved", "DeadLetterSinkResolved")


def _reconcile_trigger(obj: Obj, world: _World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    conditions = _Conditions(obj, world.now)
    status_fields: dict[str, Any] = {}

    # BrokerReady (K56): the Trigger may come first; it waits, not Ready, until the Broker is.
    broker = trigger_broker(spec)
    broker_key = (EVENTING, BROKER.kind, namespace, broker)
    broker_obj = world.find(broker_key)
    if broker_obj is None:
        conditions.set(
            "BrokerReady",
            "False",
            "BrokerDoesNotExist",
            f'Broker "{broker}" does not exist in namespace "{namespace}"',
        )
    elif (namespace, broker) not in world.brokers:
        ready = _ready_condition(world.statuses.get(broker_obj["metadata"]["uid"]) or {}) or {}
        conditions.set(
            "BrokerReady",
            "False",
            str(ready.get("reason") or "BrokerNotReady"),
            f'Broker "{broker}" is not Ready: {ready.get("message") or "no message"}',
        )
    else:
        conditions.set("BrokerReady", "True")

    # SubscriberResolved (K57): subscriberUri is "" while it does not resolve.
    subscriber = Address("")
    try:
        subscriber = world.resolve_address(
            spec.get("subscriber") or {}, namespace, require_ready=True
        )
    except _UnresolvableError as exc:
        conditions.set("SubscriberResolved", "False", exc.reason, f"subscriber: {exc.message}")
    else:
        conditions.set("SubscriberResolved", "True")
    subscriber_uri = subscriber.url
    status_fields["subscriberUri"] = subscriber_uri

    # DeadLetterSinkResolved (K58) for the delivery in force (K66).
    delivery = _effective_delivery(obj, world, broker_key if broker_obj is not None else None)
    _set_dead_letter_condition(conditions, delivery)
    if delivery.dead_letter_uri is not None:
        status_fields["deadLetterSinkUri"] = delivery.dead_letter_uri

    _dependency(obj, world, conditions)

    # SubscriptionReady: the data plane runs the Trigger (K61) once everything above holds.
    trigger_spec: TriggerSpec | None = None
    waiting = [
        t
        for t in (*_TRIGGER_PREREQUISITES, "DependencyReady")
        if conditions.get(t)["status"] != "True"
    ]
    if waiting:
        message = f"waiting for {', '.join(waiting)}"
        conditions.set("SubscriptionReady", "Unknown", "NotSubscribed", message)
    else:
        try:
            annotations = metadata.get("annotations") or {}
            predicate, filter_text = compile_trigger_filter(
                spec,
                payload=annotations.get(FILTER_PAYLOAD_ANNOTATION) == FILTER_PAYLOAD_ENABLED,
            )
            policy = world.policy(
                delivery.spec, "spec.delivery", delivery.dead_letter_uri, delivery
            )
        except InvalidResource as exc:  # stored before a rule tightened: report, do not crash
            conditions.set("SubscriptionReady", "False", "InvalidSpec", str(exc))
        else:
            order = (metadata.get("annotations") or {}).get(DELIVERY_ORDER_ANNOTATION)
            trigger_spec = TriggerSpec(
                namespace=namespace,
                name=name,
                uid=uid,
                broker=broker,
                topic=runtime.broker_topic(namespace, broker),
                group=runtime.trigger_group(uid),
                subscriber_uri=subscriber_uri,
                delivery=policy,
                filter=predicate,
                filter_source=filter_text,
                ordered=order == "ordered",
                subscriber_audience=subscriber.audience,
                subscriber_ca_certs=subscriber.ca_certs,
                identity=delivery_subject(EVENTING, TRIGGER.kind, namespace, name),
            )
            conditions.set("SubscriptionReady", "True")
    world.statuses[uid] = {**_base_status(obj, conditions), **status_fields}
    if trigger_spec is not None:
        world.triggers[uid] = trigger_spec


def _channel_condition(conditions: _Conditions, world: _World, key: ObjKey) -> Obj | None:
    """ChannelReady (K156): the Subscription may come first and waits for its Channel."""
    what = _describe(key[1], key[2], key[3])
    if key[:2] not in _CHANNEL_KINDS:
        kinds = ", ".join(sorted(kind for _, kind in _CHANNEL_KINDS))
        conditions.set(
            "ChannelReady",
            "False",
            "ChannelNotSupported",
            f"{what} is not a channel kind served here; channel kinds: {kinds}",
        )
        return None
    channel = world.find(key)
    if channel is None:
        conditions.set("ChannelReady", "False", "ChannelNotFound", f"{what} does not exist")
    elif not world.is_ready(channel):
        conditions.set("ChannelReady", "False", "ChannelNotReady", f"{what} is not Ready")
    else:
        conditions.set("ChannelReady", "True")
    return channel


def _reconcile_subscription(obj: Obj, world: _World) -> None:
    metadata = obj["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = obj.get("spec") or {}
    conditions = _Conditions(obj, world.now)

    ref = spec.get("channel") or {}
    channel_name = str(ref.get("name", ""))
    channel_key = (
        _group(str(ref.get("apiVersion", ""))),
        str(ref.get("kind", "")),
        namespace,
        channel_name,
    )
    channel = _channel_condition(conditions, world, channel_key)

    # ReferencesResolved (K155): subscriber, reply and dead-letter sink, each "" if it fails.
    failures: list[tuple[str, str]] = []

    def resolve(destination: Mapping[str, Any], what: str) -> Address:
        try:
            return world.resolve_address(destination, namespace, require_ready=True)
        except _UnresolvableError as exc:
            failures.append((exc.reason, f"{what}: {exc.message}"))
            return Address("")

    subscriber = resolve(spec.get("subscriber") or {}, "subscriber")
    physical: dict[str, str] = {"subscriberUri": subscriber.url}
    reply_uri: str | None = None
    reply = Address("")
    if spec.get("reply") is not None:
        reply = resolve(spec["reply"], "reply")
        reply_uri = physical["replyUri"] = reply.url
    delivery = _effective_delivery(obj, world, channel_key if channel is not None else None)
    if delivery.failure is not None:
        failures.append(delivery.failure)
    if delivery.configured:
        physical["deadLetterSinkUri"] = delivery.dead_letter_uri or ""
    if failures:
        conditions.set("ReferencesResolved", "False", *failures[0])
    else:
        conditions.set("ReferencesResolved", "True")

    subscription_spec: SubscriptionSpec | None = None
    if channel is None or failures or not world.is_ready(channel):
        conditions.set(
            "AddedToChannel", "Unknown", "NotAdded", "waiting for ChannelReady, ReferencesResolved"
        )
    else:
        try:
            policy = world.policy(
                delivery.spec, "spec.delivery", delivery.dead_letter_uri, delivery
            )
        except InvalidResource as exc:  # stored before a rule tightened: report, do not crash
            conditions.set("AddedToChannel", "False", "InvalidSpec", str(exc))
        else:
            subscription_spec = SubscriptionSpec(
                namespace=namespace,
                name=name,
                uid=uid,
                channel=channel_name,
                topic=runtime.channel_topic(namespace, channel_name),
                group=runtime.subscription_group(uid),
                subscriber_uri=physical["subscriberUri"],
                reply_uri=reply_uri,
                delivery=policy,
                ordered=(metadata.get("annotations") or {}).get(DELIVERY_ORDER_ANNOTATION)
                == "ordered",
                subscriber_audience=subscriber.audience,
                subscriber_ca_certs=subscriber.ca_certs,
                reply_audience=reply.audience,
                reply_ca_certs=reply.ca_certs,
                identity=delivery_subject(MESSAGING, SUBSCRIPTION.kind, namespace, name),
            )
            conditions.set("AddedToChannel", "True")
    world.statuses[uid] = {**_base_status(obj, conditions), "physicalSubscription": physical}
    if subscription_spec is not None and channel is not None:
        world.subscriptions[uid] = subscription_spec
        generation = int(metadata.get("generation") or 0)
        world.statuses[channel["metadata"]["uid"]]["subscribers"].append(  # K141
            {"uid": uid, "observedGeneration": generation, "ready": "True"}
        )


def _reconcile_secret(obj: Obj, world: _World) -> None:
    world.statuses[obj["metadata"]["uid"]] = {}


Reconciler = Callable[[Obj, _World], None]

# (API group, kind) -> reconciler, in phase order: every kind sees the kinds before it. Kinds of
# feature packages come after these (register_reconciler); as destinations they resolve through
# ADDRESS_RESOLVERS, which needs no status of theirs, so any kind may reference them.
RECONCILERS: list[tuple[tuple[str, str], Reconciler]] = [
    ((SECRET.group, SECRET.kind), _reconcile_secret),
    ((CONFIG_MAP.group, CONFIG_MAP.kind), _reconcile_secret),
    ((EVENTING, BROKER.kind), _reconcile_broker),
    *(((channel.group, channel.kind), _reconcile_backing_channel) for channel in CHANNEL_BUSES),
    ((MESSAGING, CHANNEL.kind), _reconcile_channel),  # after the backing channels it owns
    ((MESSAGING, SUBSCRIPTION.kind), _reconcile_subscription),
    ((EVENTING, TRIGGER.kind), _reconcile_trigger),
]

# Kinds whose owned objects (controller ownerReferences) the controller creates and deletes.
OWNER_KINDS: set[str] = {CHANNEL.kind}


def register_reconciler(
    group: str, kind: str, reconciler: Reconciler, *, owns_children: bool = False
) -> None:
    """Reconcile objects of (``group``, ``kind``) with ``reconciler``, after every kind so far.

    ``owns_children``: the reconciler adds owned objects to ``world.children``, which the
    controller then keeps in the store (and deletes when no longer wanted).
    """
    RECONCILERS.append(((group, kind), reconciler))
    if owns_children:
        OWNER_KINDS.add(kind)


# Names for the feature packages' reconcilers (sources, serving, flows).
World = _World
Conditions = _Conditions
Unresolvable = _UnresolvableError
base_status = _base_status
key_of = _key_of
ready_condition = _ready_condition


def reconcile(
    objects: Sequence[Mapping[str, Any]],
    *,
    base_url: str,
    default_delivery: DeliveryPolicy,
    default_channel: str = IN_MEMORY_CHANNEL.kind,
    unavailable_buses: Mapping[str, str] | None = None,
    now: str | None = None,
    ingress_oidc: bool = False,
    default_authorization_mode: AuthorizationMode = "allow-same-namespace",
    https_base_url: str | None = None,
    ca_certs: str | None = None,
) -> Reconciled:
    """Statuses for ``objects`` (stored resources, with metadata.uid) and the Snapshot to run.

    Objects of kinds this module does not reconcile get no entry in ``statuses``. Brokers and
    channels on a bus named in ``unavailable_buses`` (it failed to open) are not Ready and stay
    out of the snapshot, so that one unreachable bus does not stop everything else.
    ``ingress_oidc``: senders must present tokens (audiences published, EventPolicies compiled
    into the snapshot); ``default_authorization_mode`` decides where no EventPolicy applies.
    """
    stored = {
        obj["metadata"]["uid"]: obj["status"]
        for obj in objects
        if isinstance(obj.get("status"), Mapping)
    }
    prior: Mapping[str, Mapping[str, Any]] = stored
    for _ in range(MAX_SETTLE_PASSES):
        world = _World(
            base_url=base_url.rstrip("/"),
            default_delivery=default_delivery,
            default_channel=channel_type(default_channel) or IN_MEMORY_CHANNEL,
            now=now or now_rfc3339(),
            unavailable_buses=unavailable_buses or {},
            objects={_key_of(obj): obj for obj in objects},
            prior=prior,
            ingress_oidc=ingress_oidc,
            default_authorization_mode=default_authorization_mode,
            https_base_url=None if https_base_url is None else https_base_url.rstrip("/"),
            ca_certs=ca_certs,
        )
        for kind_key, reconciler in RECONCILERS:
            for obj in objects:
                if (_group(obj["apiVersion"]), obj["kind"]) == kind_key:
                    reconciler(obj, world)
        settled = all(
            _serves(world.statuses[uid]) == seen
            for uid, seen in world.forward.items()
            if uid in world.statuses  # kinds nobody reconciles keep what they have
        )
        if settled:
            break
        prior = {**stored, **world.statuses}
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
    )


def _ingress_authorization(world: _World) -> dict[tuple[str, str, str], IngressAuthorization]:
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

# Feature packages register their kinds' reconcilers (after everything above exists).
from broker.eventpolicy import reconcile as _eventpolicy  # noqa: E402, F401
from broker.flows import reconcile as _flows  # noqa: E402, F401
from broker.serving import reconcile as _serving  # noqa: E402, F401
from broker.sources import reconcile as _sources  # noqa: E402, F401
