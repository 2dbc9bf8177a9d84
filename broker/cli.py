"""The ``cemesh`` command line: ``serve``, ``apply``, ``get``, ``delete``, ``send``, ``db upgrade``.

It talks to a running cemesh over its Kubernetes-style REST API (``--server`` / ``CEMESH_URL``)
the way kubectl and kn talk to Kubernetes. The module has two halves:

- pure functions (no I/O): loading manifests (:func:`load_documents`), the apply decision
  (:func:`apply_decision`), tables (:func:`render_table`, one row of :data:`COLUMNS` per kind),
  Secret redaction (:func:`redact`), ``--to`` resolution (:func:`resolve_target`) and the event
  built by ``send`` (:func:`build_event`);
- thin I/O: :class:`ApiClient` (httpx, short timeouts) and the click commands.

Every failure ends as ONE line on stderr, ``error: ...``, and a non-zero exit; a traceback is
never shown (:class:`_Cli` maps the cemesh error tree, HTTP transport errors and Kubernetes
``Status`` bodies to that line).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import errno
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
import yaml

from broker.errors import CemeshError, InvalidResource
from broker.events import AttributeValue, CloudEvent, new_event
from broker.resources import TYPES, ResourceType, type_for_kind, type_for_name

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_NAMESPACE = "default"
REDACTED = "<redacted>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Management calls wait for a controller sync; a few seconds is plenty on one host, and a
# short connect timeout makes "nothing listens there" quick to report.
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=3.0)

Decision = Literal["created", "configured", "unchanged"]


# --------------------------------------------------------------------------- errors


class CliError(click.ClickException):
    """A failure reported as one ``error: ...`` line on stderr (by ``_Cli.main``), exit 1."""


class Unreachable(CliError):
    """No answer at all (refused, timed out, DNS): later requests would fail the same way."""


class ApiError(CliError):
    """The server answered with an error ``Status`` (or another non-2xx body)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True, slots=True)
class Document:
    """One object read from a manifest, with where it came from (for messages)."""

    obj: dict[str, Any]
    source: str  # "file.yaml" or "file.yaml (document 2)"


class ManifestError(CemeshError):
    """A manifest (file or one of its documents) is not something cemesh can apply."""


def parse_manifest(text: str, source: str) -> list[Any]:
    """The documents of one YAML (multi-document) or JSON text, empty documents left out."""
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            # JSON proper first: exact numbers and error messages; YAML would accept it too.
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:
                docs = list(yaml.safe_load_all(text))
            else:
                docs = loaded if isinstance(loaded, list) else [loaded]
        else:
            docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{source}: not valid YAML{line}: {problem}") from exc
    return [doc for doc in docs if doc is not None]


def load_documents(text: str, source: str) -> tuple[list[Document], list[str]]:
    """The Kubernetes objects in a manifest and one message per document that is not one.

    ``List`` objects (``kind: List`` or ``FooList`` with ``items``) are expanded in place, like
    kubectl does. A document without ``apiVersion`` and ``kind`` is reported, not sent.
    """
    raw = parse_manifest(text, source)
    documents: list[Document] = []
    problems: list[str] = []
    many = len(raw) > 1
    for index, doc in enumerate(raw, start=1):
        where = f"{source} (document {index})" if many else source
        for obj in _expand_lists(doc):
            problem = _not_an_object(obj)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                documents.append(Document(obj, where))
    return documents, problems


def _expand_lists(doc: Any) -> Iterator[Any]:
    if (
        isinstance(doc, dict)
        and str(doc.get("kind", "")).endswith("List")
        and isinstance(doc.get("items"), list)
    ):
        for item in doc["items"]:
            yield from _expand_lists(item)
    else:
        yield doc


def _not_an_object(obj: Any) -> str | None:
    """Why ``obj`` is not a Kubernetes object, or None when it is one."""
    if not isinstance(obj, dict):
        return f"not a Kubernetes object (a {type(obj).__name__}, expected a mapping)"
    missing = [key for key in ("apiVersion", "kind") if not obj.get(key)]
    if missing:
        return "not a Kubernetes object: " + " and ".join(missing) + " not set"
    if not isinstance(obj.get("metadata", {}), dict):
        return "metadata must be a mapping"
    return None


def manifest_files(path: Path, *, recursive: bool = False) -> list[Path]:
    """``path`` itself, or the .yaml/.yml/.json files of a directory in name order."""
    if not path.is_dir():
        return [path]
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES
    )


def object_type(obj: Mapping[str, Any]) -> ResourceType:
    """The served kind of ``obj``; ManifestError naming kind and apiVersion when not served."""
    kind, api_version = str(obj.get("kind")), str(obj.get("apiVersion"))
    try:
        return type_for_kind(api_version, kind)
    except InvalidResource as exc:
        if exc.field == "kind":
            raise ManifestError(
                f"kind {kind} ({api_version}) is not served by cemesh yet; it serves "
                + ", ".join(t.kind for t in TYPES)
            ) from exc
        raise ManifestError(exc.reason) from exc


def object_name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidResource("metadata.name", "required")
    return name


def object_namespace(obj: Mapping[str, Any], default: str) -> str:
    """``metadata.namespace`` when set, else the ``-n`` namespace (itself "default")."""
    namespace = (obj.get("metadata") or {}).get("namespace")
    return namespace if isinstance(namespace, str) and namespace else default


def qualified_kind(rtype: ResourceType) -> str:
    """``trigger.eventing.knative.dev``, or ``secret`` for the core group (kubectl's form)."""
    kind = rtype.kind.lower()
    return f"{kind}.{rtype.group}" if rtype.group else kind


def object_ref(rtype: ResourceType, name: str) -> str:
    """``broker.eventing.knative.dev/default``: how apply names an object."""
    return f"{qualified_kind(rtype)}/{name}"


# --------------------------------------------------------------------------- apply decision


def desired_state(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What apply compares: every top-level field but metadata/status, plus labels/annotations.

    A Secret's ``stringData`` is folded into ``data`` (base64) the way the API server stores it,
    so re-applying a ``stringData`` Secret is "unchanged".
    """
    metadata = obj.get("metadata") or {}
    state: dict[str, Any] = {
        key: value
        for key, value in obj.items()
        if key not in ("apiVersion", "kind", "metadata", "status", "stringData")
    }
    string_data = obj.get("stringData")
    if isinstance(string_data, dict) and string_data:
        data = dict(state.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        state["data"] = data
    # An empty mapping and an absent one mean the same to the server.
    state = {key: value for key, value in state.items() if value not in (None, {}, [])}
    state["labels"] = metadata.get("labels") or {}
    state["annotations"] = metadata.get("annotations") or {}
    return state


def apply_decision(
    new: Mapping[str, Any],
    stored: Mapping[str, Any],
    *,
    defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Decision:
    """Whether applying ``new`` over ``stored`` changes anything: "unchanged" or "configured".

    The server defaults fields on admission (a Broker's class annotation, a Trigger's empty
    filter...). ``defaults`` applies the same admission to ``new`` so such fields do not make
    every re-apply look like a change; when it fails the object is compared as written.
    """
    candidate = dict(new)
    if defaults is not None:
        try:
            candidate = defaults(copy.deepcopy(dict(new)))
        except Exception:
            candidate = dict(new)
    return "unchanged" if desired_state(candidate) == desired_state(stored) else "configured"


def admission_defaults(
    namespace: str, stored: Mapping[str, Any]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The server's own admission (validation + defaults) of a replacement for ``stored``."""
    from broker.resources import admit

    def defaults(obj: dict[str, Any]) -> dict[str, Any]:
        return admit(obj, namespace=namespace, old=copy.deepcopy(dict(stored)))

    return defaults


def with_version(obj: Mapping[str, Any], namespace: str, resource_version: Any) -> dict[str, Any]:
    """``obj`` for a PUT: namespace set, and the stored resourceVersion (optimistic lock)."""
    body = copy.deepcopy(dict(obj))
    metadata = body.setdefault("metadata", {})
    metadata["namespace"] = namespace
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    body.pop("status", None)
    return body


# --------------------------------------------------------------------------- redaction


def redact(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with every Secret value replaced by ``<redacted>``.

    Applies to a Secret (``data``, ``stringData``, and kubectl's last-applied annotation, which
    embeds them) and to every Secret inside a list's ``items``; other objects are copied as is.
    """
    result = copy.deepcopy(dict(obj))
    if isinstance(result.get("items"), list):
        result["items"] = [
            redact(item) if isinstance(item, dict) else item for item in result["items"]
        ]
    if result.get("kind") != "Secret":
        return result
    for field in ("data", "stringData"):
        if isinstance(result.get(field), dict):
            result[field] = {key: REDACTED for key in result[field]}
    annotations = (result.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        for key in annotations:
            if key.endswith("last-applied-configuration"):
                annotations[key] = REDACTED
    return result


# --------------------------------------------------------------------------- tables


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


# --------------------------------------------------------------------------- send


def resolve_target(to: str, server: str, default_namespace: str = DEFAULT_NAMESPACE) -> str:
    """The URL ``--to`` names: a URL, or ``broker:NS/NAME`` / ``channel:NS/NAME`` on ``server``."""
    if to.startswith(("http://", "https://")):
        return to
    kind, sep, ref = to.partition(":")
    if sep and kind in ("broker", "channel") and ref:
        namespace, _, name = ref.rpartition("/")
        namespace = namespace or default_namespace
        if name and "/" not in namespace:
            prefix = "/channels" if kind == "channel" else ""
            return f"{server.rstrip('/')}{prefix}/{namespace}/{name}"
    raise click.BadParameter(
        f"{to!r}: expected an http(s) URL, broker:NAMESPACE/NAME or channel:NAMESPACE/NAME",
        param_hint="'--to'",
    )


def parse_extensions(values: Iterable[str]) -> dict[str, AttributeValue]:
    """``k=v`` pairs as extension attributes; names as CloudEvents allows (lowercase a-z0-9)."""
    extensions: dict[str, AttributeValue] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint="'--extension'")
        if not (name.isascii() and name.isalnum() and name == name.lower()):
            raise click.BadParameter(
                f"{name!r}: attribute names are lowercase letters and digits only",
                param_hint="'--extension'",
            )
        extensions[name] = text
    return extensions


def default_content_type(data: bytes) -> str:
    """application/json when ``data`` parses as JSON, else text/plain."""
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "text/plain"
    return "application/json"


def build_event(
    *,
    type: str,
    source: str,
    data: bytes | None,
    content_type: str | None,
    id: str | None,
    subject: str | None,
    extensions: Mapping[str, AttributeValue],
) -> CloudEvent:
    attributes: dict[str, AttributeValue] = dict(extensions)
    if subject is not None:
        if not subject:  # C9: when present, subject is non-empty
            raise click.BadParameter("must not be empty", param_hint="'--subject'")
        attributes["subject"] = subject
    if data is not None and content_type is None:
        content_type = default_content_type(data)
    return new_event(
        type=type,
        source=source,
        data=data,
        datacontenttype=content_type,
        id=id,
        extensions=attributes,
    )


def server_message(response: httpx.Response) -> str:
    """The ``message`` of a JSON error body (Status or ingress), else the text, else the reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # Status bodies and the ingress say "message"; FastAPI's own errors say "detail".
        for key in ("message", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    text = response.text.strip()
    return (
        text.splitlines()[0] if text else response.reason_phrase or f"HTTP {response.status_code}"
    )


# --------------------------------------------------------------------------- misc pure helpers


def mask_password(url: str) -> str:
    """``postgresql://user:***@host/db``: a URL safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def settings_error(exc: Exception) -> str:
    """One line for a bad configuration (pydantic ValidationError or the config file's error)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for error in errors():
            field = ".".join(str(part) for part in error.get("loc", ()))
            parts.append(f"{field}: {error.get('msg')}" if field else str(error.get("msg")))
        if parts:
            return "invalid configuration: " + "; ".join(parts)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    cause = exc.__cause__
    # PyYAML's messages span several lines (with a caret drawing); keep line and problem.
    if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
        first = f"{first.split(': ')[0]} (line {cause.problem_mark.line + 1}): {cause.problem}"
    return f"invalid configuration: {first}"


def hide_secret(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ``***``."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def transport_reason(exc: BaseException) -> str:
    """ "connection refused", "timed out"...: why a request never got an answer."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            if seen.errno == errno.ECONNREFUSED:
                return "connection refused"
            return (seen.strerror or os.strerror(seen.errno)).lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text.split("] ", 1)[-1].lower() if text else type(exc).__name__


# --------------------------------------------------------------------------- HTTP client


class ApiClient:
    """The management API of one cemesh, over httpx (sync). Errors become :class:`CliError`."""

    def __init__(self, server: str, *, timeout: httpx.Timeout = HTTP_TIMEOUT) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc, hint=True) from exc

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON body of a 2xx answer; :class:`ApiError` with the server's message otherwise."""
        response = self.request(method, path, **kwargs)
        if response.is_success:
            try:
                body = response.json()
            except ValueError as exc:
                raise CliError(
                    f"{self.server}{path} did not answer JSON; is {self.server} a cemesh?"
                ) from exc
            return body if isinstance(body, dict) else {"items": body}
        raise api_error(response)

    def list(
        self, rtype: ResourceType, namespace: str | None, selector: str | None
    ) -> dict[str, Any]:
        path = rtype.collection_path(namespace) if namespace else all_namespaces_path(rtype)
        params = {"labelSelector": selector} if selector else None
        return self.call("GET", path, params=params)

    def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self.call("GET", f"{rtype.collection_path(namespace)}/{name}")

    def create(self, rtype: ResourceType, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", rtype.collection_path(namespace), json=obj)

    def replace(
        self, rtype: ResourceType, namespace: str, name: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        return self.call("PUT", f"{rtype.collection_path(namespace)}/{name}", json=obj)

    def delete(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self.call("DELETE", f"{rtype.collection_path(namespace)}/{name}")


def all_namespaces_path(rtype: ResourceType) -> str:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else f"/api/{rtype.version}"
    return f"{prefix}/{rtype.plural}"


def api_error(response: httpx.Response) -> ApiError:
    reason = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            reason = str(body.get("reason") or "")
    except ValueError:
        pass
    return ApiError(response.status_code, reason, server_message(response))


def unreachable(url: str, exc: BaseException, *, hint: bool) -> Unreachable:
    suffix = "; is 'cemesh serve' running?" if hint else ""
    return Unreachable(
        f"cannot reach {'cemesh at ' if hint else ''}{url} ({transport_reason(exc)}){suffix}"
    )


# --------------------------------------------------------------------------- commands


class _Cli(click.Group):
    """The root group: turns every failure into one ``error:`` line, never a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            # Usage errors too: one line (click would print the usage block and "Error: ...").
            message = exc.format_message()
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CemeshError as exc:
            raise CliError(exc.message) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"HTTP error: {exc}") from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}") from exc
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            raise CliError(f"unexpected {type(exc).__name__}: {exc}") from exc


@dataclass
class _State:
    server: str
    _api: ApiClient | None = None

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            self._api = ApiClient(self.server)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


pass_state = click.make_pass_decorator(_State)

namespace_option = click.option(
    "-n",
    "--namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Namespace of the objects (a manifest's metadata.namespace wins).",
)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="CEMESH_URL",
    default=DEFAULT_SERVER,
    show_default=True,
    help="The cemesh to talk to (env CEMESH_URL).",
)
@click.version_option(package_name="cemesh", prog_name="cemesh")
@click.pass_context
def cli(ctx: click.Context, server: str) -> None:
    """cemesh: a CloudEvents event mesh with the Knative Eventing model.

    Run it with 'cemesh serve'; manage Brokers, Triggers, Channels, Subscriptions and Secrets
    with 'apply', 'get' and 'delete' (Knative YAML applies unchanged); send events with 'send'.
    """
    state = _State(server.rstrip("/"))
    ctx.obj = state
    ctx.call_on_close(state.close)


@cli.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8080).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of settings (env CEMESH_CONFIG); flags override env, env overrides the file.",
)
def serve(host: str | None, port: int | None, config_file: Path | None) -> None:
    """Run cemesh (ingress, dispatcher, management API) until SIGTERM or Ctrl-C."""
    settings = load_settings(host=host, port=port, config=config_file)
    from broker.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from broker.app import serve as run

    run(settings)


def load_settings(**overrides: Any) -> Any:
    """Settings with the given flags on top of env and config file; one error line when bad."""
    from broker.config import Settings

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise CliError(settings_error(exc)) from exc


@cli.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    help="Manifest file, directory of .yaml/.yml/.json files, or - for stdin. Repeatable.",
)
@click.option("-R", "--recursive", is_flag=True, help="Also read directories' subdirectories.")
@namespace_option
@pass_state
def apply(state: _State, files: tuple[str, ...], recursive: bool, namespace: str) -> None:
    """Create or replace the objects of Knative YAML/JSON manifests (kubectl apply).

    Prints '<kind>/<name> created', 'configured' or 'unchanged' per object. Objects that fail
    (kinds cemesh does not serve, invalid fields) print one error line each; the others are
    still applied, and the exit status is 1.
    """
    failed = False
    for document in _documents(files, recursive):
        if isinstance(document, str):
            _error_line(document)
            failed = True
            continue
        try:
            click.echo(apply_one(state.api, document.obj, namespace))
        except Unreachable:
            raise  # every other object would fail the same way
        except (CliError, CemeshError) as exc:
            _error_line(f"{_describe(document)}: {_message(exc)}")
            failed = True
    if failed:
        sys.exit(1)


def apply_one(api: ApiClient, obj: dict[str, Any], default_namespace: str) -> str:
    """Apply one object; the line to print (``broker.eventing.knative.dev/x created``)."""
    rtype = object_type(obj)
    name = object_name(obj)
    namespace = object_namespace(obj, default_namespace)
    body = with_version(obj, namespace, None)
    try:
        api.create(rtype, namespace, body)
        return f"{object_ref(rtype, name)} created"
    except ApiError as exc:
        if exc.status != 409 or exc.reason == "Conflict":
            raise
    stored = api.get(rtype, namespace, name)
    decision = apply_decision(obj, stored, defaults=admission_defaults(namespace, stored))
    if decision == "configured":
        version = (stored.get("metadata") or {}).get("resourceVersion")
        api.replace(rtype, namespace, name, with_version(obj, namespace, version))
    return f"{object_ref(rtype, name)} {decision}"


def _documents(files: Iterable[str], recursive: bool) -> Iterator[Document | str]:
    """Every object of every manifest, or a message (str) for what cannot be read."""
    for given in files:
        if given == "-":
            sources: list[tuple[str, str]] = [("<stdin>", sys.stdin.read())]
        else:
            path = Path(given)
            if not path.exists():
                yield f"{given}: no such file or directory"
                continue
            sources = []
            for file in manifest_files(path, recursive=recursive):
                try:
                    sources.append((str(file), file.read_text(encoding="utf-8")))
                except (OSError, UnicodeDecodeError) as exc:
                    yield f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            if path.is_dir() and not sources:
                yield f"{given}: no .yaml, .yml or .json files in this directory"
        for source, text in sources:
            try:
                documents, problems = load_documents(text, source)
            except ManifestError as exc:
                yield exc.message
                continue
            yield from problems
            yield from documents


def _describe(document: Document) -> str:
    """How an apply/delete error names its object: kind/name, else its source."""
    obj = document.obj
    name = (obj.get("metadata") or {}).get("name")
    try:
        rtype = object_type(obj)
    except ManifestError:
        kind = str(obj.get("kind")).lower()
        group = str(obj.get("apiVersion")).rpartition("/")[0]
        label = f"{kind}.{group}" if group else kind
        return f"{label}/{name}" if name else f"{label} in {document.source}"
    return object_ref(rtype, name) if name else f"{qualified_kind(rtype)} in {document.source}"


def _message(exc: Exception) -> str:
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, CemeshError):
        return exc.message
    return str(exc)


def _error_line(message: str) -> None:
    click.echo(f"error: {message}", err=True)


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "yaml", "json"]),
    default="table",
    help="Output format (default: a table).",
)
@click.option("-l", "--selector", help="Label selector, e.g. app=web,tier!=db.")
@pass_state
def get(
    state: _State,
    kind: str,
    name: str | None,
    namespace: str,
    all_namespaces: bool,
    output: str,
    selector: str | None,
) -> None:
    """Show objects of KIND (broker, trigger, channel, imc, kc, subscription, cm, secret...).

    Secret values are never printed: the table shows the number of keys, and with -o yaml/json
    every value in data (and stringData) is replaced by "<redacted>".
    """
    rtype = type_for_name(kind)
    if name and selector:
        raise click.UsageError("a name and a label selector (-l) cannot be given together")
    if name:
        obj = state.api.get(rtype, namespace, name)
        items: list[dict[str, Any]] = [obj]
        document: dict[str, Any] = obj
    else:
        listed = state.api.list(rtype, None if all_namespaces else namespace, selector)
        items = list(listed.get("items") or [])
        document = {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}
    if output in ("yaml", "json"):
        click.echo(render_objects(redact(document), output).rstrip("\n"))
        return
    if not items:
        click.echo(empty_message(None if all_namespaces else namespace), err=True)
        return
    click.echo(
        render_table(
            rtype.kind,
            items,
            now=datetime.now(UTC),
            all_namespaces=all_namespaces,
            wide=output == "wide",
        )
    )


@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@namespace_option
@click.option(
    "-f", "--filename", "files", multiple=True, help="Delete the objects of these manifests."
)
@pass_state
def delete(
    state: _State, kind: str | None, names: tuple[str, ...], namespace: str, files: tuple[str, ...]
) -> None:
    """Delete objects: KIND NAME... or -f FILE."""
    targets: list[tuple[ResourceType, str, str] | str] = []
    if files:
        if kind:
            raise click.UsageError("give either KIND NAME... or -f FILE, not both")
        for document in _documents(files, recursive=False):
            if isinstance(document, str):
                targets.append(document)
                continue
            try:
                obj = document.obj
                targets.append(
                    (object_type(obj), object_namespace(obj, namespace), object_name(obj))
                )
            except CemeshError as exc:
                targets.append(f"{_describe(document)}: {exc.message}")
    elif kind and names:
        rtype = type_for_name(kind)
        targets.extend((rtype, namespace, name) for name in names)
    else:
        raise click.UsageError("give KIND NAME... or -f FILE")
    failed = False
    for target in targets:
        if isinstance(target, str):
            _error_line(target)
            failed = True
            continue
        rtype, ns, name = target
        try:
            state.api.delete(rtype, ns, name)
        except ApiError as exc:  # not found, ...: say so and go on with the others
            _error_line(exc.format_message())
            failed = True
            continue
        click.echo(f'{qualified_kind(rtype)} "{name}" deleted')
    if failed:
        sys.exit(1)


@cli.command()
@click.option(
    "--to",
    "target",
    required=True,
    help="An http(s) URL, broker:NAMESPACE/NAME or channel:NAMESPACE/NAME (on --server).",
)
@click.option("--type", "event_type", required=True, help="The event's type attribute.")
@click.option("--source", default="cemesh/cli", show_default=True, help="The event's source.")
@click.option("--id", "event_id", help="The event's id (default: a new UUID).")
@click.option("--data", help="The event's data; @FILE reads it from a file.")
@click.option(
    "--content-type",
    help="datacontenttype (default: application/json if --data is JSON, else text/plain).",
)
@click.option("--subject", help="The event's subject attribute.")
@click.option(
    "-e", "--extension", "extensions", multiple=True, help="Extension NAME=VALUE. Repeatable."
)
@click.option(
    "--mode",
    type=click.Choice(["binary", "structured"]),
    default="binary",
    show_default=True,
    help="CloudEvents HTTP content mode.",
)
@pass_state
def send(
    state: _State,
    target: str,
    event_type: str,
    source: str,
    event_id: str | None,
    data: str | None,
    content_type: str | None,
    subject: str | None,
    extensions: tuple[str, ...],
    mode: str,
) -> None:
    """Send one CloudEvent over HTTP (like 'kn event send')."""
    from broker import binding

    url = resolve_target(target, state.server)
    event = build_event(
        type=event_type,
        source=source,
        data=_read_data(data),
        content_type=content_type,
        id=event_id,
        subject=subject,
        extensions=parse_extensions(extensions),
    )
    encode = binding.to_structured if mode == "structured" else binding.to_binary
    headers, body = encode(event)
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT) as http:
            response = http.post(url, headers=list(headers), content=body)
    except httpx.TransportError as exc:
        raise unreachable(url, exc, hint=url.startswith(state.server + "/")) from exc
    if not response.is_success:
        raise CliError(
            f"event {event.id} not accepted ({response.status_code}): {server_message(response)}"
        )
    click.echo(f"event {event.id} accepted ({response.status_code})")


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror or exc}", param_hint="'--data'"
            ) from exc
    return data.encode()


@cli.group()
def db() -> None:
    """The resource store's schema."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of settings (env CEMESH_CONFIG).",
)
@click.option("--database-url", help="Overrides the configured database_url.")
def upgrade(revision: str, config_file: Path | None, database_url: str | None) -> None:
    """Migrate the store's schema (database_url from the settings) to REVISION."""
    settings = load_settings(config=config_file, database_url=database_url)
    from broker.store import migrate

    url = settings.database_url
    shown = mask_password(url)
    try:
        asyncio.run(migrate.upgrade(url, revision))
    except Exception as exc:  # StoreError, alembic's CommandError...: said in one line
        text = exc.message if isinstance(exc, CemeshError) else str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CliError(f"cannot upgrade {shown}: {hide_secret(first, url)}") from exc
    click.echo(f"database {shown} upgraded to {revision}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``cemesh`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="cemesh")
    raise SystemExit(0)  # cli.main exits itself in standalone mode; this keeps mypy honest


if __name__ == "__main__":
    main()
