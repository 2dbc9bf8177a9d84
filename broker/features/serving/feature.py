"""The serving feature (Knative Service, Revision): kinds, reconcilers, address and the invoker
component that runs the Revisions, as listed in broker.server.features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.controlplane.catalog import KindReconciler
from broker.features.feature import Feature
from broker.features.serving.invoker import Invoker
from broker.features.serving.kinds import REVISION, SERVICE, SERVING_KINDS, service_url
from broker.features.serving.reconcile import reconcile_revision, reconcile_service


def _service_address(obj: Mapping[str, Any], world: Any) -> str:
    return service_url(world.base_url, obj["metadata"]["namespace"], obj["metadata"]["name"])


SERVING_FEATURE = Feature(
    name="serving",
    kinds=SERVING_KINDS,
    reconcilers=(
        # Revisions first: a Service reads its Revisions' readiness from the same pass.
        KindReconciler(REVISION.group, REVISION.kind, reconcile_revision),
        KindReconciler(SERVICE.group, SERVICE.kind, reconcile_service, owns_children=True),
    ),
    address_resolvers={(SERVICE.group, SERVICE.kind): _service_address},
    component=Invoker,
)
