"""The flows feature (Sequence, Parallel): kinds, reconcilers, addresses, as listed in
broker.server.features. Both own their channels and Subscriptions (``owns_children``)."""

from broker.controlplane.catalog import KindReconciler
from broker.features.feature import Feature
from broker.features.flows.kinds import FLOWS_KINDS, PARALLEL, SEQUENCE
from broker.features.flows.reconcile import (
    parallel_url,
    reconcile_parallel,
    reconcile_sequence,
    sequence_url,
)

FLOWS_FEATURE = Feature(
    name="flows",
    kinds=FLOWS_KINDS,
    reconcilers=(
        KindReconciler(SEQUENCE.group, SEQUENCE.kind, reconcile_sequence, owns_children=True),
        KindReconciler(PARALLEL.group, PARALLEL.kind, reconcile_parallel, owns_children=True),
    ),
    address_resolvers={
        (SEQUENCE.group, SEQUENCE.kind): sequence_url,
        (PARALLEL.group, PARALLEL.kind): parallel_url,
    },
)
