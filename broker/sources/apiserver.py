"""ApiServerSource: Kubernetes objects as CloudEvents (K187-K193), the way Knative's adapter does.

What this module owns:

- the event mapping (:func:`to_cloudevent`, pure): types ``dev.knative.apiserver.resource.*``
  (``Resource`` mode, data = the object) and ``dev.knative.apiserver.ref.*`` (``Reference``
  mode, data = ``{kind, namespace, name, apiVersion}``); ``source`` = the API server URL;
  ``subject`` = Knative's guessed self link ``/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>``;
  extensions ``kind``, ``name``, ``namespace``, ``apiversion`` for Trigger filters;
- admission of the resource's spec (:func:`admit_api_server_source`);
- the watcher (:class:`ApiServerWatcher`): one :class:`broker.kube.watch.CollectionWatch`
  (the project's one list + watch: bookmarks, resume from the last resourceVersion, relist
  after 410 Gone or when no progress is made within a bound, backoff) per resource and
  namespace, whose changes it turns into events;
- its health (:class:`_Health`): a client configuration that cannot be loaded
  (``KubeconfigUnavailable``), an API server that cannot be reached (``ApiServerUnreachable``),
  that answers with an error (``ApiServerRejected``) or whose watch stalled (``WatchStalled``,
  then relisted) goes to ``on_state`` and the log only when the state changes (one line when
  watching fails, one when it works again), never per retry, and without tracebacks: the
  source's status says why it is not Ready;
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
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from broker.errors import CemeshError, InvalidResource
from broker.events import CloudEvent, new_event
from broker.kube.client import KubeConnection, load_client_configuration
from broker.kube.store import guess_plural
from broker.kube.watch import (
    ADD,
    DELETE,
    UNREACHABLE,
    UPDATE,
    Backoff,
    CollectionWatch,
    Expired,
    WatchFailed,
    list_collection,
)

log = logging.getLogger(__name__)

REFERENCE_MODE = "Reference"
RESOURCE_MODE = "Resource"
MODES = (REFERENCE_MODE, RESOURCE_MODE)

# eventing:pkg/apis/sources/constants.go (K187, K188)
RESOURCE_EVENT_TYPES = {c: f"dev.knative.apiserver.resource.{c}" for c in (ADD, UPDATE, DELETE)}
REF_EVENT_TYPES = {c: f"dev.knative.apiserver.ref.{c}" for c in (ADD, UPDATE, DELETE)}

OnEvent = Callable[[CloudEvent], Awaitable[None]]


# -- The event mapping (pure) ---------------------------------------------------------------


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


# -- The watcher (I/O) ----------------------------------------------------------------------

NO_CONFIG = "KubeconfigUnavailable"

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

    def report(self, part: object, problem: Problem) -> None:
        if problem is None:
            self.ok(part)
        else:
            self.failed(part, *problem)

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


class ApiServerWatcher:
    """Watches Kubernetes resources and hands each change, as a CloudEvent, to ``on_event``.

    One :class:`~broker.kube.watch.CollectionWatch` per resource (and namespace watched): LIST,
    then WATCH with bookmarks, resuming from the last resourceVersion after a dropped
    connection, relisting after 410 Gone or when the watch makes no progress within
    ``progress_bound`` (an API server whose etcd came back empty), and then emitting only the
    differences from the last known state. ``on_event`` is awaited before the next change of
    the same resource is read (back-pressure, per-resource order); an exception it raises is
    logged and the event dropped, as Knative does after its send retries (K193).

    ``ready`` is set once every collection has been listed and watches are starting: changes
    made after that are all reported. The first LIST announces nothing (module docstring).
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
        progress_bound: float = 150.0,
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
        self.progress_bound = progress_bound
        self.page_size = page_size
        self.source = ""  # the API server URL, known once connected (K189)
        self.ready = asyncio.Event()
        self._watches: dict[WatchTarget, CollectionWatch] = {}
        self.health = _Health(on_state)

    def watch_of(self, target: WatchTarget | None = None) -> CollectionWatch:
        """The collection watch of ``target`` (the only one when None)."""
        if target is None:
            (target,) = self._watches
        return self._watches[target]

    def resource_version(self, target: WatchTarget | None = None) -> str | None:
        """The last resourceVersion seen for ``target`` (the only one when None)."""
        return self.watch_of(target).resource_version

    @property
    def targets(self) -> list[WatchTarget]:
        return list(self._watches)

    async def wait_for_resource_version(
        self, value: str, target: WatchTarget | None = None
    ) -> None:
        """Wait until ``target``'s resourceVersion is ``value`` (tests; bound it with a timeout)."""
        await self.watch_of(target).wait_for_resource_version(value)

    async def run(self) -> None:
        """Watch until cancelled."""
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
        async with KubeConnection(configuration) as connection:
            namespaces = await self._namespaces(connection)
            for resource in self.resources:
                selector = label_selector_string(resource.get("selector"))
                for namespace in namespaces:
                    target = WatchTarget(
                        str(resource["apiVersion"]), str(resource["kind"]), namespace, selector
                    )
                    if target not in self._watches:
                        self._watches[target] = self._collection_watch(connection, target)
            if not self._watches:
                log.warning("no namespace matches spec.namespaceSelector; nothing to watch")
                self.ready.set()
                await asyncio.Event().wait()
            async with asyncio.TaskGroup() as group:
                for watch in self._watches.values():
                    group.create_task(watch.run())
                group.create_task(self._set_ready_when_synced())

    def _collection_watch(self, connection: KubeConnection, target: WatchTarget) -> CollectionWatch:
        async def on_change(change: str, obj: dict[str, Any]) -> None:
            await self._emit(change, obj)

        return CollectionWatch(
            connection,
            target.path,
            label_selector=target.label_selector,
            on_change=on_change,
            announce_initial=False,  # like Knative's Reflector into a no-op Replace
            on_problem=lambda problem: self.health.report(target, problem),
            backoff=self.backoff,
            watch_timeout=self.watch_timeout,
            progress_bound=self.progress_bound,
            page_size=self.page_size,
        )

    async def _set_ready_when_synced(self) -> None:
        for watch in self._watches.values():
            await watch.synced.wait()
        self.ready.set()

    async def _namespaces(self, connection: KubeConnection) -> list[str | None]:
        """The namespaces to watch: one, all (None), or those a namespaceSelector matches."""
        selector = self.namespace_selector
        if selector is None:
            return [self.namespace]
        if not (selector.get("matchLabels") or selector.get("matchExpressions")):
            return [None]  # an empty selector matches every namespace
        attempt = 0
        while True:
            try:
                items, _ = await list_collection(
                    connection, "/api/v1/namespaces", label_selector_string(selector)
                )
                names: list[str | None] = []
                names.extend(sorted(str(_meta(ns).get("name")) for ns in items))
                self.health.ok("namespaces")
                return names
            except (WatchFailed, Expired) as exc:
                attempt += 1
                reason = exc.reason if isinstance(exc, WatchFailed) else UNREACHABLE
                self.health.failed("namespaces", reason, f"listing namespaces: {exc}")
                await asyncio.sleep(self.backoff.delay(attempt))

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
# Imported late: broker.sources.kinds imports this module at its bottom to register the kind.

from broker.errors import DeliveryError  # noqa: E402
from broker.sources.base import Source, SourceKind  # noqa: E402
from broker.sources.kinds import API_SERVER_SOURCE, register_source_kind  # noqa: E402


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
            progress_bound=self.context.settings.kube_watch_progress_bound,
            on_event=self._send,
            on_state=lambda problem, source: self.report(problem, source_uri=source or None),
        )
        await watcher.run()

    async def _send(self, event: CloudEvent) -> None:
        try:
            await self.sink.send(event)
        except DeliveryError as exc:
            self.log.warning("event dropped: %s", exc.message)


register_source_kind(
    SourceKind(
        resource=API_SERVER_SOURCE,
        runner=ApiServerSource,
        check=admit_api_server_source,
        event_types=event_types,
    )
)
