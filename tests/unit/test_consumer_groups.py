"""Which consumer group a deleted Trigger or Subscription leaves on its bus (controller rule)."""

from __future__ import annotations

from broker.controlplane.controller import GROUP_KINDS, consumer_group_of
from broker.core.spec import broker_topic, channel_topic, subscription_group, trigger_group


def test_a_trigger_retires_its_group_on_its_brokers_topic() -> None:
    trigger = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t", "namespace": "team", "uid": "u1"},
        "spec": {"broker": "default"},
    }
    assert consumer_group_of(trigger) == (broker_topic("team", "default"), trigger_group("u1"))


def test_a_subscription_retires_its_group_on_its_channels_topic() -> None:
    subscription = {
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "Subscription",
        "metadata": {"name": "s", "uid": "u2"},  # no namespace: the default one
        "spec": {"channel": {"kind": "InMemoryChannel", "name": "orders"}},
    }
    assert consumer_group_of(subscription) == (
        channel_topic("default", "orders"),
        subscription_group("u2"),
    )


def test_only_triggers_and_subscriptions_own_groups() -> None:
    assert {kind for _, kind in GROUP_KINDS} == {"Trigger", "Subscription"}
