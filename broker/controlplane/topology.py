"""The mesh as a graph (pure): which object sends events to which, for the web console.

:func:`topology` turns stored objects into nodes and edges, from the fields every kind shares
rather than from a list of kinds: a Trigger's ``spec.broker``, a Subscription's ``spec.channel``,
and the destinations ``spec.sink`` (sources), ``spec.subscriber``, ``spec.reply`` and
``spec.delivery.deadLetterSink``, plus ``ownerReferences`` (a Sequence's Channels, a Service's
Revisions). A destination ``uri`` becomes a node of its own; a ``ref`` to an object that is not
among the objects becomes a node marked ``missing``, so a broken reference shows instead of
vanishing.

Each node carries its ``Ready`` condition (``True``/``False``/``Unknown``) with reason and
message, the API path of its object, and a ``tier``, the column it is drawn in: sources,
then Brokers and channels, then Triggers and Subscriptions, then subscribers and Services, then
Revisions. A Revision also carries the invoker's replicas (``status.desiredReplicas`` and
``actualReplicas``, written by :mod:`broker.features.serving.revision_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.controlplane.catalog import ResourceType

SOURCE, ADDRESSABLE, ROUTE, TARGET, REPLICAS = range(5)  # the tiers, left to right
_ROUTES = frozenset({"Trigger", "Subscription"})
_ADDRESSABLES = frozenset({"Broker", "Sequence", "Parallel"})
# Destination fields every kind spells the same way, with the label of their edge.
_DESTINATIONS = (("sink", "sink"), ("subscriber", "subscriber"), ("reply", "reply"))


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else empty: stored objects are user input."""
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def node_id(group: str, kind: str, namespace: str, name: str) -> str:
    return f"{group}/{kind}/{namespace}/{name}"


def _group_of(api_version: Any) -> str:
    text = str(api_version or "")
    return text.rpartition("/")[0] if "/" in text else ""


def tier_of(kind: str, spec: Mapping[str, Any]) -> int:
    """The column a kind is drawn in."""
    if kind in _ROUTES:
        return ROUTE
    if kind == "Revision":
        return REPLICAS
    if kind in _ADDRESSABLES or kind.endswith("Channel"):
        return ADDRESSABLE
    if "sink" in spec:
        return SOURCE
    return TARGET


def readiness(obj: Mapping[str, Any]) -> dict[str, str]:
    """The object's ``Ready`` condition: status (``Unknown`` when there is none), reason,
    message."""
    conditions = _mapping(obj.get("status")).get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return {
                "status": str(condition.get("status") or "Unknown"),
                "reason": str(condition.get("reason") or ""),
                "message": str(condition.get("message") or ""),
            }
    return {"status": "Unknown", "reason": "", "message": ""}


class _Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: dict[tuple[str, str, str], dict[str, str]] = {}

    def edge(self, source: str, target: str, label: str) -> None:
        self.edges.setdefault(
            (source, target, label), {"source": source, "target": target, "label": label}
        )

    def reference(self, group: str, kind: str, namespace: str, name: str) -> str:
        """The node of a referenced object, a ``missing`` placeholder if it is not stored."""
        ident = node_id(group, kind, namespace, name)
        if ident not in self.nodes:
            self.nodes[ident] = {
                "id": ident,
                "kind": kind,
                "group": group,
                "namespace": namespace,
                "name": name,
                "tier": tier_of(kind, {}),
                "ready": {"status": "False", "reason": "NotFound", "message": "not stored"},
                "path": None,
                "missing": True,
            }
        return ident

    def destination(self, origin: str, destination: Any, namespace: str, label: str) -> None:
        """An edge from ``origin`` to what a Destination (``ref`` and/or ``uri``) names."""
        if not isinstance(destination, Mapping):
            return
        ref = destination.get("ref")
        if isinstance(ref, Mapping) and ref.get("kind") and ref.get("name"):
            target = self.reference(
                _group_of(ref.get("apiVersion")),
                str(ref["kind"]),
                str(ref.get("namespace") or namespace),
                str(ref["name"]),
            )
        elif destination.get("uri"):
            uri = str(destination["uri"])
            target = f"url:{uri}"
            self.nodes.setdefault(
                target,
                {
                    "id": target,
                    "kind": "URL",
                    "group": "",
                    "namespace": "",
                    "name": uri,
                    "tier": TARGET,
                    "ready": {"status": "Unknown", "reason": "", "message": "an HTTP endpoint"},
                    "path": None,
                },
            )
        else:
            return
        self.edge(origin, target, label)


def _node(rtype: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    node: dict[str, Any] = {
        "id": node_id(rtype.group, rtype.kind, namespace, name),
        "kind": rtype.kind,
        "group": rtype.group,
        "namespace": namespace,
        "name": name,
        "tier": tier_of(rtype.kind, spec),
        "ready": readiness(obj),
        "path": f"{rtype.collection_path(namespace)}/{name}",
    }
    status = _mapping(obj.get("status"))
    if rtype.kind == "Revision":
        node["replicas"] = {
            "desired": _count(status.get("desiredReplicas")),
            "actual": _count(status.get("actualReplicas")),
        }
    return node


def _edges(graph: _Graph, ident: str, obj: Mapping[str, Any]) -> None:
    """The edges of one stored object (its node exists)."""
    metadata = _mapping(obj.get("metadata"))
    namespace = str(metadata.get("namespace") or "")
    spec = _mapping(obj.get("spec"))
    kind = obj.get("kind")
    if kind == "Trigger" and spec.get("broker"):
        broker = graph.reference("eventing.knative.dev", "Broker", namespace, str(spec["broker"]))
        graph.edge(broker, ident, "trigger")
    channel = spec.get("channel")
    if kind == "Subscription" and isinstance(channel, Mapping) and channel.get("name"):
        origin = graph.reference(
            _group_of(channel.get("apiVersion")),
            str(channel.get("kind") or "Channel"),
            namespace,
            str(channel["name"]),
        )
        graph.edge(origin, ident, "subscription")
    for field, label in _DESTINATIONS:
        graph.destination(ident, spec.get(field), namespace, label)
    delivery = spec.get("delivery")
    if isinstance(delivery, Mapping):
        graph.destination(ident, delivery.get("deadLetterSink"), namespace, "deadLetterSink")
    owners = metadata.get("ownerReferences")
    for owner in owners if isinstance(owners, list) else []:
        if isinstance(owner, Mapping) and owner.get("kind") and owner.get("name"):
            parent = node_id(
                _group_of(owner.get("apiVersion")),
                str(owner["kind"]),
                namespace,
                str(owner["name"]),
            )
            if parent in graph.nodes:  # an owner that is gone draws nothing
                graph.edge(parent, ident, "owns")


def topology(objects: Iterable[tuple[ResourceType, Mapping[str, Any]]]) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [...]}`` of ``objects`` (each with its kind), sorted."""
    graph = _Graph()
    stored: list[tuple[str, Mapping[str, Any]]] = []
    for rtype, obj in objects:
        node = _node(rtype, obj)
        graph.nodes[node["id"]] = node
        stored.append((node["id"], {**obj, "kind": rtype.kind}))
    for ident, obj in stored:  # once every stored object has its node
        _edges(graph, ident, obj)
    nodes = sorted(graph.nodes.values(), key=lambda n: (n["tier"], n["namespace"], n["name"]))
    edges = sorted(graph.edges.values(), key=lambda e: (e["source"], e["target"], e["label"]))
    return {"nodes": nodes, "edges": edges}
