"""ApiServerSource: Kubernetes objects as CloudEvents (K187-K193), the way Knative's adapter does.

What this module owns:

- the event mapping (:func:`to_cloudevent`, pure): types ``dev.knative.apiserver.resource.*``
  (``Resource`` mode, data = the object) and ``dev.knative.apiserver.ref.*`` (``Reference``
  mode, data = ``{kind, namespace, name, apiVersion}``); ``source`` = the API server URL;
  ``subject`` = Knative's guessed self link ``/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>``;
  extensions ``kind``, ``name``, ``namespace``, ``apiversion`` for Trigger filters;
- admission of the resource's spec (:func:`admit_api_server_source`);
- the watcher (:class:`ApiServerWatcher`): LIST then WATCH per resource with bookmarks,
  resuming from the last resourceVersion after a dropped connection and relisting after
  410 Gone, so that nothing is lost and nothing is sent twice;
- its health (:class:`_Health`): a client configuration that cannot be loaded
  (``KubeconfigUnavailable``), an API server that cannot be reached (``ApiServerUnreachable``)
  or that answers with an error (``ApiServerRejected``) is retried with exponential backoff
  (:class:`Backoff`, capped), which starts over once a LIST or WATCH succeeds (so one blip on a
  healthy watch reconnects at once); the state goes to ``on_state`` and the log only when it
  changes (one line when watching fails, one when it works again), never per retry, and
  without tracebacks: the source's status says why it is not Ready;
- the :class:`ApiServerSource` runner plugged into :mod:`broker.sources` at the bottom.

Knative's adapter feeds a client-go Reflector into a ``cache.Store`` whose ``Replace`` does
nothing, so the initial LIST (and a relist) emits no event: objects that exist when the source
starts are not announced. This watcher does the same at start. After a 410 it does better than
Knative, which silently skips what happened during the gap: it diffs the relist against the
last known state and emits add/update/delete for exactly the changes.

Simplifications, on purpose: the plural in URLs and subjects is guessed from the kind
(``meta.UnsafeGuessKindToResource``, as Knative does) rather than discovered; a
``namespaceSelector`` is resolved to namespaces once when the watcher starts (Knative's
controller re-resolves it when namespaces change); ``filters`` (an experimental feature) and
``serviceAccountName`` are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from broker.errors import CemeshError, DeliveryError, InvalidResource
from broker.events import CloudEvent, new_event
from broker.sources.base import Source, SourceKind
from broker.sources.kinds import API_SERVER_SOURCE

log = logging.getLogger(__name__)

REFERENCE_MODE = "Reference"
RESOURCE_MODE = "Resource"
MODES = (REFERENCE_MODE, RESOURCE_MODE)

# eventing:pkg/apis/sources/constants.go (K187, K188)
ADD, UPDATE, DELETE = "add", "update", "delete"
RESOURCE_EVENT_TYPES = {c: f"dev.knative.apiserver.resource.{c}" for c in (ADD, UPDATE, DELETE)}
REF_EVENT_TYPES = {c: f"dev.knative.apiserver.ref.{c}" for c in (ADD, UPDATE, DELETE)}

_WATCH_TYPES = {"ADDED": ADD, "MODIFIED": UPDATE, "DELETED": DELETE}

OnEvent = Callable[[CloudEvent], Awaitable[None]]


# -- The event mapping (pure) ---------------------------------------------------------------


def guess_plural(kind: str) -> str:
    """The resource name Kubernetes' ``UnsafeGuessKindToResource`` guesses from a kind."""
    singular = kind.lower()
    if not singular or singular.endswith("endpoints"):
        return singular
    if singular.endswith("s"):
        return singular + "es"
    if singular.endswith("y"):
        return singular[:-1] + "ies"
    return singular + "s"


def self_link(api_version: str, kind: str, namespace: str, name: str) -> str:
    """Knative's ``createSelfLink`` (K190): core objects get ``/apis/v1/...`` too."""
    version = api_version
    # A group with no version (no "/") but dotted gets "/versionUnknown", as in Knative.
    if "." in version and "/" not in version:
        version += "/versionUnknown"
    return f"/apis/{version}/namespaces/{namespace}/{guess_plural(kind)}/{name}"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def object_reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """Reference-mode data (K188): a corev1.ObjectReference, Go's field order and omitempty."""
    meta = _meta(obj)
    fields = (
        ("kind", obj.get("kind")),
        ("namespace", meta.get("namespace")),
        ("name", meta.get("name")),
        ("apiVersion", obj.get("apiVersion")),
    )
    return {key: str(value) for key, value in fields if value}


def to_cloudevent(change: str, obj: Mapping[str, Any], *, mode: str, source: str) -> CloudEvent:
    """The CloudEvent Knative's ApiServerSource sends for ``change`` (add|update|delete) of ``obj``.

    ``mode`` is ``Resource`` (data = the whole object, K187) or ``Reference`` (data = its
    reference, K188). ``id`` is a new UUID and ``time`` now (K186, K189).
    """
    if change not in RESOURCE_EVENT_TYPES:
        raise ValueError(f"unknown change {change!r}: expected add, update or delete")
    meta = _meta(obj)
    kind = str(obj.get("kind") or "")
    api_version = str(obj.get("apiVersion") or "")
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    if mode == RESOURCE_MODE:
        event_type = RESOURCE_EVENT_TYPES[change]
        # Go's json.Marshal of an unstructured object writes map keys sorted.
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    else:
        event_type = REF_EVENT_TYPES[change]
        data = orjson.dumps(object_reference(obj))
    # K191: copied for Trigger filters. Empty values (a cluster-scoped object's namespace) are
    # left out: an empty extension value says nothing a filter could use.
    attributes = {
        key: value
        for key, value in (
            ("subject", self_link(api_version, kind, namespace, name)),  # K190
            ("kind", kind),
            ("name", name),
            ("namespace", namespace),
            ("apiversion", api_version),
        )
        if value
    }
    return new_event(
        type=event_type,
        source=source,
        data=data,
        datacontenttype="application/json",
        extensions=attributes,
    )


# -- Selectors and the owner filter (pure) --------------------------------------------------

_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def label_selector_string(selector: Mapping[str, Any] | None) -> str:
    """A metav1.LabelSelector as the ``labelSelector`` query string (``LabelSelectorAsSelector``).

    Requirements are sorted by key and values sorted, as Kubernetes prints them; an absent or
    empty selector is ``""`` (everything).
    """
    if not selector:
        return ""
    requirements: list[tuple[str, str]] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        requirements.append((key, f"{key}={value}"))
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = ",".join(sorted(expression.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }[operator]
        requirements.append((key, text))
    return ",".join(text for _, text in sorted(requirements, key=lambda r: r[0]))


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a metav1.LabelSelector (every requirement; empty: all)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any] | None) -> bool:
    """Whether ``obj`` passes the ``spec.owner`` filter (Knative's ``controller`` store).

    With an owner set, only objects whose *controller* owner reference matches the owner's
    apiVersion and kind (each compared only when given) pass.
    """
    if not owner:
        return True
    api_version, kind = owner.get("apiVersion") or "", owner.get("kind") or ""
    for ref in _meta(obj).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return (not api_version or ref.get("apiVersion") == api_version) and (
                not kind or ref.get("kind") == kind
            )
    return False


# -- Admission (pure) -----------------------------------------------------------------------

_GROUP_VERSION = re.compile(r"[^/\s]+(/[^/\s]+)?")


def _check_api_version(value: object, field_: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidResource(field_, "is required (for example 'v1' or 'apps/v1')")
    if not _GROUP_VERSION.fullmatch(value):
        raise InvalidResource(
            field_, f"invalid value {value!r}: expected 'version' or 'group/version'"
        )


def _check_kind(value: object, field_: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidResource(field_, "is required (for example 'Pod')")


def check_label_selector(value: object, field_: str) -> None:
    """A metav1.LabelSelector (matchLabels, matchExpressions); errors name the field."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise InvalidResource(field_, "must be a label selector: {matchLabels, matchExpressions}")
    unknown = set(value) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise InvalidResource(f"{field_}.{sorted(unknown)[0]}", "unknown field of a label selector")
    labels = value.get("matchLabels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise InvalidResource(f"{field_}.matchLabels", "must be a map of label to value")
        for key, item in labels.items():
            if not isinstance(item, str):
                raise InvalidResource(f"{field_}.matchLabels[{key}]", "must be a string")
    expressions = value.get("matchExpressions")
    if expressions is None:
        return
    if not isinstance(expressions, list):
        raise InvalidResource(f"{field_}.matchExpressions", "must be a list")
    for i, expression in enumerate(expressions):
        where = f"{field_}.matchExpressions[{i}]"
        if not isinstance(expression, Mapping):
            raise InvalidResource(where, "must be {key, operator, values}")
        if not isinstance(expression.get("key"), str) or not expression["key"]:
            raise InvalidResource(f"{where}.key", "is required")
        operator = expression.get("operator")
        if operator not in _SELECTOR_OPERATORS:
            raise InvalidResource(
                f"{where}.operator", f"must be one of {', '.join(_SELECTOR_OPERATORS)}"
            )
        values = expression.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidResource(f"{where}.values", "must be a list of strings")
        if operator in ("In", "NotIn") and not values:
            raise InvalidResource(f"{where}.values", f"must be non-empty for {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise InvalidResource(f"{where}.values", f"must be empty for {operator}")


def admit_api_server_source(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Default and validate an ApiServerSource's spec in place (K192; Knative's Validate).

    ``mode`` defaults to ``Reference``. ``sink`` and ``ceOverrides`` are the framework's.
    Raises :class:`~broker.errors.InvalidResource` naming the bad field.
    """
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidResource("spec", "is required")
    mode = spec.setdefault("mode", REFERENCE_MODE)
    if mode not in MODES:
        raise InvalidResource("spec.mode", f"invalid value {mode!r}: Reference or Resource")
    resources = spec.get("resources")
    if not isinstance(resources, list) or not resources:
        raise InvalidResource("spec.resources", "is required: at least one {apiVersion, kind}")
    for i, resource in enumerate(resources):
        where = f"spec.resources[{i}]"
        if not isinstance(resource, Mapping):
            raise InvalidResource(where, "must be {apiVersion, kind, selector}")
        _check_api_version(resource.get("apiVersion"), f"{where}.apiVersion")
        _check_kind(resource.get("kind"), f"{where}.kind")
        check_label_selector(resource.get("selector"), f"{where}.selector")
    owner = spec.get("owner")
    if owner is not None:
        if not isinstance(owner, Mapping):
            raise InvalidResource("spec.owner", "must be {apiVersion, kind}")
        _check_api_version(owner.get("apiVersion"), "spec.owner.apiVersion")
        _check_kind(owner.get("kind"), "spec.owner.kind")
    check_label_selector(spec.get("namespaceSelector"), "spec.namespaceSelector")
    account = spec.get("serviceAccountName")
    if account is not None and not isinstance(account, str):
        raise InvalidResource("spec.serviceAccountName", "must be a string")


def event_types(obj: Mapping[str, Any]) -> list[str]:
    """The event types a source produces, for its mode (EventType registry, K184)."""
    spec = obj.get("spec") or {}
    table = RESOURCE_EVENT_TYPES if spec.get("mode") == RESOURCE_MODE else REF_EVENT_TYPES
    return [table[c] for c in (ADD, UPDATE, DELETE)]


# -- The relist diff (pure) -----------------------------------------------------------------

Key = tuple[str, str]  # (namespace, name)


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = _meta(obj)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _rv(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("resourceVersion") or "")


def diff_states(
    known: Mapping[Key, Mapping[str, Any]], listed: Iterable[Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any]]]:
    """The changes that turn ``known`` into ``listed``: (add|update|delete, object) pairs.

    Same key and resourceVersion is no change. A different ``uid`` under the same name means
    the object was deleted and created again during the gap: delete, then add. Deletes carry
    the last known object (as a watch's DELETED event would).
    """
    changes: list[tuple[str, Mapping[str, Any]]] = []
    seen: set[Key] = set()
    for obj in listed:
        key = object_key(obj)
        seen.add(key)
        before = known.get(key)
        if before is None:
            changes.append((ADD, obj))
        elif _meta(before).get("uid") != _meta(obj).get("uid"):
            changes.append((DELETE, before))
            changes.append((ADD, obj))
        elif _rv(before) != _rv(obj):
            changes.append((UPDATE, obj))
    changes.extend((DELETE, before) for key, before in known.items() if key not in seen)
    return changes


# -- The watcher (I/O) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between failed LIST/WATCH attempts."""

    initial: float = 0.8
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (1 = the first retry)."""
        base = min(self.initial * self.factor ** max(attempt - 1, 0), self.maximum)
        return base * (1 + random.uniform(0, self.jitter))


class _Expired(Exception):
    """The server no longer has our resourceVersion (410 Gone): relist."""


UNREACHABLE = "ApiServerUnreachable"
REJECTED = "ApiServerRejected"
NO_CONFIG = "KubeconfigUnavailable"


class _WatchFailed(Exception):
    """The watch request or stream failed in a way a retry from the same version may fix."""

    def __init__(self, message: str, reason: str = UNREACHABLE) -> None:
        super().__init__(message)
        self.reason = reason


Problem = tuple[str, str] | None  # (reason, message) while watching fails; None when it works
OnState = Callable[[Problem, str], None]  # (problem, the API server URL once known)


class _Health:
    """Which parts of a watcher fail now (config, each collection); reports the first failure,
    or None, to ``on_state`` and the log only when that state changes (module docstring)."""

    def __init__(self, on_state: OnState | None) -> None:
        self.on_state = on_state
        self.failing: dict[object, tuple[str, str]] = {}
        self.reported: Problem = None
        self.source = ""

    def failed(self, part: object, reason: str, message: str) -> None:
        self.failing[part] = (reason, message)
        self._publish()

    def ok(self, part: object) -> None:
        if self.failing.pop(part, None) is not None or self.reported is not None:
            self._publish()

    def _publish(self) -> None:
        problem = next(iter(self.failing.values()), None)
        if (problem and problem[0]) == (self.reported and self.reported[0]):
            return  # the same state: retries say nothing new
        self.reported = problem
        if problem is None:
            log.info("ApiServerSource watching again", extra={"url": self.source})
        else:
            log.warning(
                "ApiServerSource cannot watch (%s): %s; retrying with backoff",
                problem[0],
                problem[1],
                extra={"why": problem[0]},
            )
        if self.on_state is not None:
            self.on_state(problem, self.source)


@dataclass(frozen=True, slots=True)
class WatchTarget:
    """One LIST/WATCH collection: a resource of ``resources[]`` in one namespace (or all)."""

    api_version: str
    kind: str
    namespace: str | None  # None: every namespace
    label_selector: str = ""

    @property
    def path(self) -> str:
        group_version = self.api_version
        prefix = "/api/" if "/" not in group_version else "/apis/"
        scope = "" if self.namespace is None else f"namespaces/{quote(self.namespace, safe='')}/"
        return f"{prefix}{group_version}/{scope}{guess_plural(self.kind)}"


@dataclass
class _Cursor:
    """What one target's loop knows: its last resourceVersion and the objects it has seen."""

    resource_version: str | None = None
    objects: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    synced: bool = False
    connected: bool = False  # the current WATCH got its 200 (the API server works)


async def load_client_configuration(kubeconfig: str | None) -> Any:
    """A kubernetes_asyncio ``Configuration``: from ``kubeconfig``, else in-cluster, else
    ``$KUBECONFIG`` or ``~/.kube/config`` (like client-go's ``BuildConfigFromFlags``)."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig and not os.path.exists(kubeconfig):  # noqa: ASYNC240 (one stat, rarely)
        raise CemeshError(f"the kubeconfig file {kubeconfig} does not exist")
    try:
        if kubeconfig:
            await config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration, persist_config=False
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                # KUBECONFIG is read now: kubernetes_asyncio reads it once, at import.
                await config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None,
                    client_configuration=configuration,
                    persist_config=False,
                )
    except (ConfigException, OSError) as exc:
        where = kubeconfig or (
            "in-cluster service account, then "
            + (os.environ.get("KUBECONFIG") or "~/.kube/config (no $KUBECONFIG)")
        )
        raise CemeshError(
            f"cannot load the Kubernetes client configuration from {where}: {exc}"
        ) from exc
    return configuration


class ApiServerWatcher:
    """Watches Kubernetes resources and hands each change, as a CloudEvent, to ``on_event``.

    For each resource (and each namespace watched): LIST for the current resourceVersion,
    then WATCH from it with bookmarks. Every event and BOOKMARK advances the resourceVersion;
    a dropped connection reconnects (with :class:`Backoff`) from the last one, so nothing is
    missed or repeated; a 410 Gone (HTTP status or ``ERROR`` event) relists and emits only
    the differences from the last known state. ``on_event`` is awaited before the next
    change of the same resource is read (back-pressure, per-resource order); an exception it
    raises is logged and the event dropped, as Knative does after its send retries (K193).

    ``ready`` is set once every collection has been listed and watches are starting: changes
    made after that are all reported.
    """

    def __init__(
        self,
        *,
        resources: list[Mapping[str, Any]],
        mode: str = REFERENCE_MODE,
        owner: Mapping[str, Any] | None = None,
        namespace: str | None = None,
        namespace_selector: Mapping[str, Any] | None = None,
        kubeconfig: str | None = None,
        on_event: OnEvent,
        on_state: OnState | None = None,
        backoff: Backoff | None = None,
        watch_timeout: float = 300.0,
        page_size: int = 500,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be Reference or Resource, not {mode!r}")
        self.resources = [dict(r) for r in resources]
        self.mode = mode
        self.owner = dict(owner) if owner else None
        self.namespace = namespace
        self.namespace_selector = namespace_selector
        self.kubeconfig = kubeconfig
        self.on_event = on_event
        self.backoff = backoff or Backoff()
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.source = ""  # the API server URL, known once connected (K189)
        self.ready = asyncio.Event()
        self._cursors: dict[WatchTarget, _Cursor] = {}
        self._unsynced = 0  # collections not listed yet; ``ready`` is set when it reaches 0
        self._progress = asyncio.Condition()  # notified when a resourceVersion moves
        self._api: Any = None
        self.health = _Health(on_state)

    def resource_version(self, target: WatchTarget | None = None) -> str | None:
        """The last resourceVersion seen for ``target`` (the only one when None)."""
        if target is None:
            (target,) = self._cursors
        return self._cursors[target].resource_version

    @property
    def targets(self) -> list[WatchTarget]:
        return list(self._cursors)

    async def wait_for_resource_version(
        self, value: str, target: WatchTarget | None = None
    ) -> None:
        """Wait until ``target``'s resourceVersion is ``value`` (tests; bound it with a timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.resource_version(target) == value)

    async def _advance(self, cursor: _Cursor, resource_version: str) -> None:
        cursor.resource_version = resource_version
        async with self._progress:
            self._progress.notify_all()

    async def run(self) -> None:
        """Watch until cancelled."""
        from kubernetes_asyncio import client

        attempt = 0
        while True:
            try:
                configuration = await load_client_configuration(self.kubeconfig)
                break
            except CemeshError as exc:
                attempt += 1
                self.health.failed("config", NO_CONFIG, exc.message)
                await asyncio.sleep(self.backoff.delay(attempt))
        self.source = self.health.source = str(configuration.host).rstrip("/")
        self.health.ok("config")
        if self.health.on_state is not None and self.health.reported is None:
            self.health.on_state(None, self.source)  # the source URL is known now
        async with client.ApiClient(configuration) as api:
            self._api = api
            namespaces = await self._namespaces()
            for resource in self.resources:
                selector = label_selector_string(resource.get("selector"))
                for namespace in namespaces:
                    target = WatchTarget(
                        str(resource["apiVersion"]), str(resource["kind"]), namespace, selector
                    )
                    self._cursors.setdefault(target, _Cursor())
            self._unsynced = len(self._cursors)
            if not self._cursors:
                log.warning("no namespace matches spec.namespaceSelector; nothing to watch")
                self.ready.set()
                await asyncio.Event().wait()
            async with asyncio.TaskGroup() as group:
                for target, cursor in self._cursors.items():
                    group.create_task(self._follow(target, cursor))

    async def _namespaces(self) -> list[str | None]:
        """The namespaces to watch: one, all (None), or those a namespaceSelector matches."""
        selector = self.namespace_selector
        if selector is None:
            return [self.namespace]
        if not (selector.get("matchLabels") or selector.get("matchExpressions")):
            return [None]  # an empty selector matches every namespace
        attempt = 0
        while True:
            try:
                items, _ = await self._list("/api/v1/namespaces", label_selector_string(selector))
                names: list[str | None] = []
                names.extend(sorted(str(_meta(ns).get("name")) for ns in items))
                self.health.ok("namespaces")
                return names
            except (_WatchFailed, _Expired) as exc:
                attempt += 1
                reason = exc.reason if isinstance(exc, _WatchFailed) else UNREACHABLE
                self.health.failed("namespaces", reason, f"listing namespaces: {exc}")
                await asyncio.sleep(self.backoff.delay(attempt))

    # One collection's LIST/WATCH loop -----------------------------------------------------

    async def _follow(self, target: WatchTarget, cursor: _Cursor) -> None:
        attempt = 0
        while True:
            cursor.connected = False
            try:
                if cursor.resource_version is None:
                    await self._relist(target, cursor)
                    self.health.ok(target)
                if await self._watch(target, cursor):
                    attempt = 0
                continue
            except _Expired:
                log.info("resourceVersion expired, relisting", extra={"path": target.path})
                cursor.resource_version = None
                continue
            except _WatchFailed as exc:
                if cursor.connected:
                    attempt = 0  # the watch worked until this blip: reconnect at once
                else:
                    self.health.failed(target, exc.reason, str(exc))
                attempt += 1
                log.debug(
                    "watch failed, reconnecting",
                    extra={"path": target.path, "error": str(exc), "attempt": attempt},
                )
            await asyncio.sleep(self.backoff.delay(attempt))

    async def _relist(self, target: WatchTarget, cursor: _Cursor) -> None:
        items, resource_version = await self._list(target.path, target.label_selector)
        if cursor.synced:
            # After a 410: emit what changed while we could not watch (Knative emits nothing).
            for change, obj in diff_states(cursor.objects, items):
                await self._emit(change, obj)
        # The first LIST emits nothing, like Knative's Reflector into a no-op Replace.
        cursor.objects = {object_key(obj): obj for obj in items}
        await self._advance(cursor, resource_version)
        if not cursor.synced:
            cursor.synced = True
            self._unsynced -= 1
            if not self._unsynced:
                self.ready.set()

    async def _list(self, path: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        resource_version = ""
        continue_token = ""
        while True:
            query: list[tuple[str, str]] = [("limit", str(self.page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if continue_token:
                query.append(("continue", continue_token))
            status, body = await self._get(path, query)
            if status == 410:
                raise _Expired(body.decode("utf-8", "replace"))  # a continue token expired
            if status != 200:
                raise _WatchFailed(f"LIST {path} answered {status}: {body[:200]!r}", REJECTED)
            document = orjson.loads(body)
            meta = document.get("metadata") or {}
            if not resource_version:
                resource_version = str(meta.get("resourceVersion") or "")
            kind = str(document.get("kind") or "").removesuffix("List")
            api_version = str(document.get("apiVersion") or "")
            for item in document.get("items") or []:
                # LIST items carry no apiVersion/kind; Knative's unstructured list fills them in.
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                items.append(item)
            continue_token = str(meta.get("continue") or "")
            if not continue_token:
                return items, resource_version

    async def _get(self, path: str, query: list[tuple[str, str]]) -> tuple[int, bytes]:
        import aiohttp

        try:
            response = await self._api.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=60, connect=10),
            )
            async with response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _WatchFailed(f"GET {self.source}{path}: {exc}") from exc

    async def _watch(self, target: WatchTarget, cursor: _Cursor) -> bool:
        """Follow one WATCH stream to its end; True if it ended normally."""
        import aiohttp

        query = [
            ("watch", "1"),
            ("resourceVersion", cursor.resource_version or ""),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(self.watch_timeout))),
        ]
        if target.label_selector:
            query.append(("labelSelector", target.label_selector))
        # The server ends the watch after timeoutSeconds; a read that waits much longer than
        # that means a dead connection, which only a read timeout can tell.
        timeout = aiohttp.ClientTimeout(connect=10, sock_read=self.watch_timeout + 30)
        try:
            response = await self._api.call_api(
                target.path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
            async with response:
                if response.status == 410:
                    raise _Expired(f"WATCH {target.path} answered 410")
                if response.status != 200:
                    body = await response.read()
                    raise _WatchFailed(
                        f"WATCH {target.path} answered {response.status}: {body[:200]!r}",
                        REJECTED,
                    )
                cursor.connected = True
                self.health.ok(target)
                async for line in response.content:
                    if line.strip():
                        await self._handle(target, cursor, orjson.loads(line))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise _WatchFailed(f"WATCH {self.source}{target.path}: {exc}") from exc
        return True

    async def _handle(self, target: WatchTarget, cursor: _Cursor, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise _Expired(str(obj.get("message") or "410 Gone"))
            raise _WatchFailed(f"ERROR event: {obj.get('message') or obj}")
        resource_version = _rv(obj)
        if kind == "BOOKMARK":
            if resource_version:
                await self._advance(cursor, resource_version)
            return
        change = _WATCH_TYPES.get(str(kind))
        if change is None:
            log.warning("unknown watch event type ignored", extra={"type": kind})
            return
        key = object_key(obj)
        before = cursor.objects.get(key)
        if change == DELETE:
            cursor.objects.pop(key, None)
        else:
            cursor.objects[key] = obj
        if resource_version:
            await self._advance(cursor, resource_version)
        if change != DELETE and before is not None and _rv(before) == resource_version:
            return  # already reported (a replayed event): nothing changed
        await self._emit(change, obj)

    async def _emit(self, change: str, obj: Mapping[str, Any]) -> None:
        if not controlled_by(obj, self.owner):
            return
        event = to_cloudevent(change, obj, mode=self.mode, source=self.source)
        try:
            await self.on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Knative logs a failed send and goes on with the next change (K193).
            log.exception("ApiServerSource event not delivered", extra={"id": event.id})


# -- The source kind, as broker.sources runs it ---------------------------------------------


class ApiServerSource(Source):
    """Runs an :class:`ApiServerWatcher` for one ApiServerSource, sending to its sink.

    The watched namespace is the source's own, unless ``spec.namespaceSelector`` is set (an
    empty selector: every namespace), as in Knative. The framework's sender applies
    ``ceOverrides`` and retries; an event it still cannot deliver is logged and dropped (K193).
    """

    async def run(self) -> None:
        spec = self.spec.spec
        watcher = ApiServerWatcher(
            resources=list(spec["resources"]),
            mode=str(spec.get("mode") or REFERENCE_MODE),
            owner=spec.get("owner"),
            namespace=self.spec.namespace,
            namespace_selector=spec.get("namespaceSelector"),
            kubeconfig=self.context.settings.kubeconfig,
            on_event=self._send,
            on_state=lambda problem, source: self.report(problem, source_uri=source or None),
        )
        await watcher.run()

    async def _send(self, event: CloudEvent) -> None:
        try:
            await self.sink.send(event)
        except DeliveryError as exc:
            self.log.warning("event dropped: %s", exc.message)


API_SERVER_SOURCE_KIND = SourceKind(
    resource=API_SERVER_SOURCE,
    runner=ApiServerSource,
    check=admit_api_server_source,
    event_types=event_types,
)
