"""The EventPolicy feature: its kind, admission and reconciler, as listed in
broker.server.features."""

from broker.controlplane.catalog import KindReconciler
from broker.features.eventpolicy.kinds import EVENT_POLICY, EVENTPOLICY_KINDS
from broker.features.eventpolicy.reconcile import reconcile_event_policy
from broker.features.feature import Feature

EVENTPOLICY_FEATURE = Feature(
    name="eventpolicy",
    kinds=EVENTPOLICY_KINDS,
    # After every kind it may target (Brokers, channels): it reads their routes from the world.
    reconcilers=(KindReconciler(EVENT_POLICY.group, EVENT_POLICY.kind, reconcile_event_policy),),
)
