"""``cemesh get`` output (pure, no I/O): kubectl-style tables and YAML/JSON documents.

Owns :data:`COLUMNS` (one entry per kind: the columns between NAME and AGE), the cell helpers
(:func:`dig`, :func:`ready`, :func:`human_age`...) and rendering (:func:`table_rows`,
:func:`render_table`, :func:`render_objects`). A new kind adds one :data:`COLUMNS` entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml


def condition(obj: Mapping[str, Any], kind: str = "Ready") -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(cond, dict) and cond.get("type") == kind:
            return cond
    return None


def ready(obj: Mapping[str, Any]) -> str:
    cond = condition(obj)
    return str(cond.get("status") or "Unknown") if cond else "Unknown"


def reason(obj: Mapping[str, Any]) -> str:
    cond = condition(obj)
    return str(cond.get("reason") or "") if cond else ""


def dig(obj: Any, *path: str) -> str:
    """The string at ``path`` in nested mappings, "" when any step is missing."""
    for key in path:
        if not isinstance(obj, Mapping):
            return ""
        obj = obj.get(key)
    return "" if obj is None else str(obj)


def human_age(created: str | None, now: datetime) -> str:
    """kubectl's short age (``45s``, ``3m20s``, ``5h``, ``2d3h``, ``400d``, ``3y``)."""
    if not created:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header and how to read its cell from an object."""

    header: str
    cell: Callable[[Mapping[str, Any]], str]
    wide: bool = False  # shown only with ``-o wide``


def _channel_ref(obj: Mapping[str, Any]) -> str:
    channel = (obj.get("spec") or {}).get("channel") or {}
    name = dig(channel, "name")
    return f"{dig(channel, 'kind')}:{name}" if name and channel.get("kind") else name


def _filter_summary(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec") or {}
    attributes = dig(spec, "filter", "attributes")
    if (spec.get("filter") or {}).get("attributes"):
        attributes = ",".join(f"{k}={v}" for k, v in spec["filter"]["attributes"].items())
    return attributes or ("filters" if spec.get("filters") else "")


def _spec_count(obj: Mapping[str, Any], key: str) -> str:
    """How many items ``spec.<key>`` lists (a Sequence's steps, a Parallel's branches)."""
    items = (obj.get("spec") or {}).get(key)
    return str(len(items)) if isinstance(items, list) else "0"


def _service_replicas(obj: Mapping[str, Any]) -> str:
    """Ready/desired replicas over a Service's Revisions (the invoker's autoscaler)."""
    rows = dig_list(obj, "status", "autoscaler")
    actual = sum(int(r.get("actualReplicas") or 0) for r in rows)
    desired = sum(int(r.get("desiredReplicas") or 0) for r in rows)
    return f"{actual}/{desired}"


def _service_scaling(obj: Mapping[str, Any]) -> str:
    return "; ".join(
        f"{r.get('revisionName')}: {r.get('reason')}"
        for r in dig_list(obj, "status", "autoscaler")
        if r.get("reason")
    )


def _policy_subjects(obj: Mapping[str, Any]) -> str:
    subjects = (obj.get("status") or {}).get("from")
    return (
        ", ".join(s for s in subjects if isinstance(s, str)) if isinstance(subjects, list) else ""
    )


def _replayed(obj: Mapping[str, Any]) -> str:
    """A Replay's progress: ``120/1000``, or nothing before it began."""
    total = dig(obj, "status", "total")
    return f"{dig(obj, 'status', 'replayed') or 0}/{total}" if total else ""


def dig_list(obj: Any, *path: str) -> list[Mapping[str, Any]]:
    """The list of objects at ``path`` in nested mappings, [] when missing."""
    for key in path:
        if not isinstance(obj, Mapping):
            return []
        obj = obj.get(key)
    return [item for item in obj if isinstance(item, Mapping)] if isinstance(obj, list) else []


URL = Column("URL", lambda o: dig(o, "status", "address", "url"))
READY = Column("READY", ready)
REASON = Column("REASON", reason)
SUBSCRIBER_URI = Column("SUBSCRIBER_URI", lambda o: dig(o, "status", "subscriberUri"))
DEAD_LETTER_URI = Column(
    "DEAD_LETTER_SINK_URI", lambda o: dig(o, "status", "deadLetterSinkUri"), True
)

# What every channel implementation (InMemoryChannel, KafkaChannel, ...) shows.
CHANNEL_COLUMNS: tuple[Column, ...] = (URL, READY, DEAD_LETTER_URI)

# Per kind, the columns between NAME (and NAMESPACE) and AGE. A new kind adds one entry;
# kinds without one get READY and REASON.
COLUMNS: dict[str, tuple[Column, ...]] = {
    "Broker": (
        URL,
        READY,
        REASON,
        Column(
            "CLASS",
            lambda o: dig(o, "metadata", "annotations", "eventing.knative.dev/broker.class"),
            wide=True,
        ),
        # The channel kind backing the Broker, as Knative's MT broker reports it.
        Column(
            "CHANNEL",
            lambda o: dig(o, "status", "annotations", "knative.dev/channelKind"),
            wide=True,
        ),
    ),
    "Trigger": (
        Column("BROKER", lambda o: dig(o, "spec", "broker")),
        SUBSCRIBER_URI,
        READY,
        REASON,
        Column("FILTER", _filter_summary, wide=True),
        DEAD_LETTER_URI,
    ),
    # kn's channel list: TYPE is the backing channel kind the Channel created.
    "Channel": (Column("TYPE", lambda o: dig(o, "status", "channel", "kind")), *CHANNEL_COLUMNS),
    "InMemoryChannel": CHANNEL_COLUMNS,
    "KafkaChannel": (
        *CHANNEL_COLUMNS,
        Column("PARTITIONS", lambda o: dig(o, "spec", "numPartitions"), wide=True),
        Column("REPLICATION", lambda o: dig(o, "spec", "replicationFactor"), wide=True),
        Column("RETENTION", lambda o: dig(o, "spec", "retentionDuration"), wide=True),
    ),
    "NatsJetStreamChannel": CHANNEL_COLUMNS,
    "PubSubChannel": CHANNEL_COLUMNS,
    "RedisStreamChannel": CHANNEL_COLUMNS,
    "Subscription": (
        Column("CHANNEL", _channel_ref),
        Column(
            "SUBSCRIBER_URI", lambda o: dig(o, "status", "physicalSubscription", "subscriberUri")
        ),
        Column("REPLY_URI", lambda o: dig(o, "status", "physicalSubscription", "replyUri")),
        READY,
        Column("REASON", reason, wide=True),
    ),
    "Secret": (
        Column("TYPE", lambda o: dig(o, "type") or "Opaque"),
        Column("DATA", lambda o: str(len(o.get("data") or {}) + len(o.get("stringData") or {}))),
    ),
    "ConfigMap": (
        Column("DATA", lambda o: str(len(o.get("data") or {}) + len(o.get("binaryData") or {}))),
    ),
    # Sources (kn source list): where they send, and whether they run.
    "GitHubSource": (Column("SINK", lambda o: dig(o, "status", "sinkUri")), READY, REASON),
    "PingSource": (Column("SINK", lambda o: dig(o, "status", "sinkUri")), READY, REASON),
    "ApiServerSource": (Column("SINK", lambda o: dig(o, "status", "sinkUri")), READY, REASON),
    "ContainerSource": (Column("SINK", lambda o: dig(o, "status", "sinkUri")), READY, REASON),
    "SinkBinding": (Column("SINK", lambda o: dig(o, "status", "sinkUri")), READY, REASON),
    # What can be subscribed to (kn eventtype list).
    "EventType": (
        Column("TYPE", lambda o: dig(o, "spec", "type")),
        Column("SOURCE", lambda o: dig(o, "spec", "source")),
        READY,
    ),
    # Flows (kn's sequence/parallel list): address, readiness, and how many steps or branches.
    "Sequence": (URL, READY, REASON, Column("STEPS", lambda o: _spec_count(o, "steps"))),
    "Parallel": (URL, READY, REASON, Column("BRANCHES", lambda o: _spec_count(o, "branches"))),
    # Serving (kn's service/revision list) plus the autoscaler's replicas: ready/desired.
    "Service": (
        Column("URL", lambda o: dig(o, "status", "url")),
        Column("LATEST", lambda o: dig(o, "status", "latestReadyRevisionName")),
        READY,
        REASON,
        Column("REPLICAS", _service_replicas),
        Column("SCALING", _service_scaling, wide=True),
    ),
    "Revision": (
        Column("SERVICE", lambda o: dig(o, "metadata", "labels", "serving.knative.dev/service")),
        Column(
            "GENERATION",
            lambda o: dig(o, "metadata", "labels", "serving.knative.dev/configurationGeneration"),
        ),
        READY,
        REASON,
        Column(
            "REPLICAS",
            lambda o: (
                f"{dig(o, 'status', 'actualReplicas') or 0}"
                f"/{dig(o, 'status', 'desiredReplicas') or 0}"
            ),
        ),
        Column("SCALING", lambda o: dig(o, "status", "autoscaler", "reason"), wide=True),
    ),
    # Ingress authorization: what a policy applies to and whom it lets send.
    "EventPolicy": (
        Column(
            "APPLIES_TO",
            lambda o: ", ".join(
                f"{t.get('kind')}/{t.get('name')}" for t in dig_list(o, "status", "appliesTo")
            ),
        ),
        Column("FROM", _policy_subjects, wide=True),
        READY,
        REASON,
    ),
    "Archive": (
        Column("BROKER", lambda o: dig(o, "spec", "broker")),
        Column("RETENTION", lambda o: dig(o, "spec", "retention")),
        READY,
        REASON,
    ),
    "Replay": (
        Column("ARCHIVE", lambda o: dig(o, "spec", "archive")),
        Column("TRIGGER", lambda o: dig(o, "spec", "trigger")),
        Column("REPLAYED", _replayed),
        Column("SUCCEEDED", lambda o: str((condition(o, "Succeeded") or {}).get("status", ""))),
        REASON,
        Column("FROM", lambda o: dig(o, "spec", "startTime"), wide=True),
        Column("TO", lambda o: dig(o, "spec", "endTime"), wide=True),
    ),
}
DEFAULT_COLUMNS: tuple[Column, ...] = (READY, REASON)


def table_rows(
    kind: str,
    items: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    all_namespaces: bool = False,
    wide: bool = False,
) -> list[list[str]]:
    """Header row then one row per object; the cells of :func:`render_table`."""
    columns = [c for c in COLUMNS.get(kind, DEFAULT_COLUMNS) if wide or not c.wide]
    header = ["NAME", *(["NAMESPACE"] if all_namespaces else []), *(c.header for c in columns)]
    rows = [[*header, "AGE"]]
    for obj in items:
        metadata = obj.get("metadata") or {}
        row = [str(metadata.get("name", ""))]
        if all_namespaces:
            row.append(str(metadata.get("namespace", "")))
        row.extend(column.cell(obj) for column in columns)
        row.append(human_age(metadata.get("creationTimestamp"), now))
        rows.append(row)
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, three spaces apart, like kubectl's tabwriter."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def render_table(
    kind: str,
    items: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    all_namespaces: bool = False,
    wide: bool = False,
) -> str:
    return format_table(table_rows(kind, items, now=now, all_namespaces=all_namespaces, wide=wide))


def render_objects(value: Mapping[str, Any], output: str) -> str:
    """``value`` (object or list, already redacted) as YAML or JSON text."""
    if output == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    return yaml.safe_dump(
        dict(value), sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def empty_message(namespace: str | None) -> str:
    return f"No resources found in {namespace} namespace." if namespace else "No resources found"
