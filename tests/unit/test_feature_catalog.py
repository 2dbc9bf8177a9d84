"""The kinds cemesh serves come from one explicit feature list, not from what was imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from broker.controlplane.catalog import Admission, Catalog, KindReconciler, ResourceType
from broker.controlplane.reconcile import reconcile
from broker.core.errors import InvalidResource, NotFound
from broker.core.spec import DeliveryPolicy
from broker.features.feature import Feature, build_catalog
from broker.features.sources.base import SourceKind
from broker.server.features import CATALOG, FEATURES, default_features

HEAVY = (
    "sqlalchemy",
    "httpx",
    "broker.controlplane.store",
    "broker.features.components",
    "broker.features.sources",
)


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import broker.controlplane.resources",
        "import broker.controlplane.catalog, broker.controlplane.admission,"
        " broker.controlplane.eventing.kinds",
        "import broker.controlplane.reconcile, broker.controlplane.world,"
        " broker.controlplane.eventing.reconcile",
    ],
)
def test_importing_the_resource_model_loads_neither_store_nor_http_client(statement: str) -> None:
    loaded = _modules_loaded_by(statement)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == [], heavy


def test_importing_the_resource_model_serves_no_feature_kind() -> None:
    """Nothing registers on import: the feature packages are not even loaded."""
    loaded = _modules_loaded_by(
        "import broker.controlplane.resources, broker.controlplane.reconcile"
    )
    features = (
        "broker.features.flows",
        "broker.features.serving",
        "broker.features.sources",
        "broker.features.eventpolicy",
    )
    assert [m for m in loaded if m.startswith(features)] == []


def test_catalog_serves_exactly_the_listed_features_kinds() -> None:
    listed = [t for feature in FEATURES for t in feature.kinds]
    assert list(CATALOG.kinds) == listed
    assert [f.name for f in FEATURES] == [
        "eventing",
        "eventpolicy",
        "flows",
        "serving",
        "sources",
        "archive",
    ]


def test_a_catalog_without_a_feature_does_not_serve_its_kinds() -> None:
    without_serving = build_catalog(f for f in FEATURES if f.name != "serving")
    with pytest.raises(NotFound, match="ksvc"):
        without_serving.type_for_name("ksvc")
    with pytest.raises(InvalidResource, match="unknown kind 'Service'"):
        without_serving.type_for_kind("serving.knative.dev/v1", "Service")
    assert "Service" not in without_serving.owner_kinds
    assert ("serving.knative.dev", "Service") not in without_serving.address_resolvers


def test_owner_kinds_are_the_kinds_whose_reconcilers_own_children() -> None:
    assert {"Channel", "Sequence", "Parallel", "Service", "PingSource"} <= CATALOG.owner_kinds
    assert "Trigger" not in CATALOG.owner_kinds


def test_two_features_serving_one_kind_are_refused() -> None:
    kind = ResourceType("example.com", ("v1",), "Thing", "things")
    one = Feature("one", kinds={kind: Admission()})
    with pytest.raises(ValueError, match="Thing"):
        build_catalog([one, Feature("two", kinds={kind: Admission()})])


def test_extra_source_kinds_are_served_and_reconciled_when_listed() -> None:
    heartbeat = ResourceType("sources.example.com", ("v1",), "HeartbeatSource", "heartbeats")
    catalog = build_catalog(default_features(extra_sources=[SourceKind(heartbeat, runner=None)]))
    assert catalog.type_for_name("heartbeats") == heartbeat
    assert any(r.kind == "HeartbeatSource" and r.owns_children for r in catalog.reconcilers)
    with pytest.raises(NotFound):
        CATALOG.type_for_name("heartbeats")  # the default list is untouched


def test_reconcilers_run_in_the_listed_order() -> None:
    """Phase order is the reconcilers' order in the catalog, not the order objects come in."""
    seen: list[str] = []

    def note(obj: Mapping[str, Any], world: object) -> None:
        seen.append(str(obj["kind"]))

    first = ResourceType("example.com", ("v1",), "First", "firsts")
    second = ResourceType("example.com", ("v1",), "Second", "seconds")
    catalog = Catalog.of(
        [(second, Admission()), (first, Admission())],
        [KindReconciler(first.group, "First", note), KindReconciler(second.group, "Second", note)],
    )
    objects = [
        {
            "apiVersion": "example.com/v1",
            "kind": kind,
            "metadata": {"uid": kind, "name": "x", "namespace": "default"},
        }
        for kind in ("Second", "First")
    ]
    reconcile(objects, catalog=catalog, base_url="http://h", default_delivery=DeliveryPolicy())
    assert seen == ["First", "Second"]
