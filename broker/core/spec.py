"""Frozen runtime specs the data plane runs on, built from resources by
``broker/controlplane/reconcile.py``.

The data plane (ingress, dispatcher) never sees resource dicts or the store: it is handed one
immutable :class:`Snapshot` at a time and swaps it in whole. Everything here is already
resolved: URLs are absolute, durations are seconds, filters are compiled, the effective delivery
policy (Trigger's own, else its Broker's, else the configured default: K66, K124) is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from broker.core.events import EventFilter, match_all
from broker.core.ingress_authorization import IngressAuthorization


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """A resolved ``DeliverySpec`` (K112)."""

    retry: int = 0
    backoff_policy: Literal["linear", "exponential"] = "exponential"
    backoff_delay: float = 0.0  # seconds
    timeout: float = 30.0  # seconds, per attempt
    retry_after_max: float = 0.0  # seconds; 0 = Retry-After ignored
    dead_letter_uri: str | None = None
    format: Literal["binary", "json"] = "binary"
    dead_letter_audience: str | None = None  # tokens for the dead-letter sink carry this aud
    dead_letter_ca_certs: str | None = None  # PEM its https certificate must chain to


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    namespace: str
    name: str
    uid: str
    topic: str
    bus: str = "memory"


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    namespace: str
    name: str
    uid: str
    kind: str
    topic: str
    bus: str = "memory"


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """A Ready Trigger: consume the broker's topic as ``group``, filter, deliver."""

    namespace: str
    name: str
    uid: str
    broker: str  # broker name (same namespace)
    topic: str
    group: str
    subscriber_uri: str
    delivery: DeliveryPolicy
    filter: EventFilter = field(default=match_all, compare=False)
    filter_source: str = ""  # canonical text of the filter, so spec equality sees filter changes
    ordered: bool = False
    subscriber_audience: str | None = None
    subscriber_ca_certs: str | None = None
    identity: str = ""  # sub of the delivery tokens sent on this Trigger's behalf


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """A Ready Subscription: consume the channel's topic as ``group``, deliver, reply."""

    namespace: str
    name: str
    uid: str
    channel: str
    topic: str
    group: str
    subscriber_uri: str
    reply_uri: str | None
    delivery: DeliveryPolicy
    ordered: bool = False
    subscriber_audience: str | None = None
    subscriber_ca_certs: str | None = None
    reply_audience: str | None = None
    reply_ca_certs: str | None = None
    identity: str = ""  # sub of the delivery tokens sent on this Subscription's behalf


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the data plane needs, at one point in time."""

    brokers: Mapping[tuple[str, str], BrokerSpec] = field(default_factory=dict)
    channels: Mapping[tuple[str, str], ChannelSpec] = field(default_factory=dict)
    triggers: Mapping[str, TriggerSpec] = field(default_factory=dict)  # by uid
    subscriptions: Mapping[str, SubscriptionSpec] = field(default_factory=dict)  # by uid
    # The runtime components' specs (sources, invoker, ...): component name -> key -> spec.
    components: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # With ingress OIDC on: per ingress route ("broker"|"channel", namespace, name), the audience
    # senders' tokens must carry and the EventPolicies that apply, compiled. Empty when off.
    ingress_authorization: Mapping[tuple[str, str, str], IngressAuthorization] = field(
        default_factory=dict
    )


def broker_topic(namespace: str, name: str) -> str:
    """Bus topic of a Broker. Namespaces have no dots, so the name is unambiguous."""
    return f"cemesh.broker.{namespace}.{name}"


def channel_topic(namespace: str, name: str) -> str:
    """Bus topic of a Channel."""
    return f"cemesh.channel.{namespace}.{name}"


def trigger_group(uid: str) -> str:
    return f"cemesh.trigger.{uid}"


def subscription_group(uid: str) -> str:
    return f"cemesh.subscription.{uid}"
