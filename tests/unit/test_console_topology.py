"""The mesh as a graph (broker/controlplane/topology.py): nodes, edges, colours, columns."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.controlplane.topology import ADDRESSABLE, REPLICAS, ROUTE, SOURCE, TARGET, topology
from broker.server.features import CATALOG


def obj(kind: str, name: str, spec: dict[str, Any] | None = None, **extra: Any) -> Any:
    rtype = next(t for t in CATALOG.kinds if t.kind == kind)
    body = {"metadata": {"name": name, "namespace": "default", **extra.pop("metadata", {})}}
    return rtype, {**body, "spec": spec or {}, **extra}


def ready(status: str, reason: str = "") -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": status, "reason": reason}]}


def service_ref(name: str) -> dict[str, Any]:
    return {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}}


def test_sources_brokers_triggers_and_subscribers_are_linked_in_columns() -> None:
    graph = topology(
        [
            obj("Broker", "default", status=ready("True")),
            obj("Trigger", "orders", {"broker": "default", "subscriber": {"uri": "http://x/"}}),
            obj("Trigger", "audit", {"broker": "default", "subscriber": service_ref("auditor")}),
            obj("Service", "auditor", status=ready("True")),
            obj(
                "PingSource",
                "tick",
                {
                    "sink": {
                        "ref": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Broker",
                            "name": "default",
                        }
                    }
                },
            ),
        ]
    )
    tiers = {n["name"]: n["tier"] for n in graph["nodes"]}
    assert tiers == {
        "tick": SOURCE,
        "default": ADDRESSABLE,
        "orders": ROUTE,
        "audit": ROUTE,
        "auditor": TARGET,
        "http://x/": TARGET,
    }
    edges = {
        (e["source"].rsplit("/", 1)[-1], e["target"].rsplit("/", 1)[-1], e["label"])
        for e in graph["edges"]
    }
    assert edges == {
        ("tick", "default", "sink"),
        ("default", "orders", "trigger"),
        ("default", "audit", "trigger"),
        ("orders", "", "subscriber"),  # url:http://x/ ends with a slash
        ("audit", "auditor", "subscriber"),
    }
    broker = next(n for n in graph["nodes"] if n["kind"] == "Broker")
    assert broker["ready"]["status"] == "True"
    assert broker["path"] == "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default"


def test_an_object_without_a_ready_condition_is_unknown_and_a_broken_reference_shows() -> None:
    graph = topology([obj("Trigger", "t", {"broker": "gone", "subscriber": service_ref("nope")})])
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["t"]["ready"]["status"] == "Unknown"
    for name in ("gone", "nope"):
        assert nodes[name]["missing"] and nodes[name]["ready"]["status"] == "False"
        assert nodes[name]["path"] is None


def test_revisions_carry_replicas_and_hang_off_their_service() -> None:
    owner = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"}
    graph = topology(
        [
            obj("Service", "fn"),
            obj(
                "Revision",
                "fn-00001",
                metadata={"ownerReferences": [owner]},
                status={"desiredReplicas": 2, "actualReplicas": 1, **ready("True")},
            ),
        ]
    )
    revision = next(n for n in graph["nodes"] if n["kind"] == "Revision")
    assert revision["tier"] == REPLICAS and revision["replicas"] == {"desired": 2, "actual": 1}
    assert [e["label"] for e in graph["edges"]] == ["owns"]


def test_subscriptions_reply_and_dead_letter_sinks_are_edges() -> None:
    channel = {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "c"}
    graph = topology(
        [
            obj("Channel", "c"),
            obj(
                "Subscription",
                "s",
                {
                    "channel": channel,
                    "subscriber": {"uri": "http://a/"},
                    "reply": {"uri": "http://b/"},
                    "delivery": {"deadLetterSink": {"uri": "http://dead/"}},
                },
            ),
        ]
    )
    labels = sorted(e["label"] for e in graph["edges"])
    assert labels == ["deadLetterSink", "reply", "subscriber", "subscription"]


def test_malformed_specs_draw_what_they_can_and_never_raise() -> None:
    graph = topology(
        [
            obj("Trigger", "t", {"broker": "", "subscriber": "not a mapping"}),
            obj("Subscription", "s", {"channel": "c", "delivery": []}),
            obj("Broker", "b", status={"conditions": ["bad", {"type": "Ready"}]}),
        ]
    )
    assert graph["edges"] == []
    assert {n["name"] for n in graph["nodes"]} == {"t", "s", "b"}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=5,
)
FIELDS = st.sampled_from(
    ["broker", "channel", "sink", "subscriber", "reply", "delivery", "ref", "uri", "kind", "name"]
)
SPECS = st.dictionaries(FIELDS, JSON | st.dictionaries(FIELDS, JSON, max_size=4), max_size=5)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Broker", "Trigger", "Subscription", "PingSource", "Revision"]),
            st.text(min_size=1, max_size=5),
            SPECS,
            JSON,
            JSON,
        ),
        max_size=6,
    )
)
def test_any_shape_of_stored_objects_gives_a_graph_whose_edges_join_its_nodes(
    stored: list[tuple[str, str, dict[str, Any], Any, Any]],
) -> None:
    objects = [
        obj(kind, name, spec, status=status, metadata={"ownerReferences": owners})
        for kind, name, spec, status, owners in stored
    ]
    graph = topology(objects)
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["source"] in ids and e["target"] in ids for e in graph["edges"])
    assert all(n["ready"]["status"] for n in graph["nodes"])
