"""ContainerSource and SinkBinding (``sources.knative.dev/v1``): user code that sends to a sink.

What this module owns:

- admission of a ContainerSource's ``spec.template`` (:func:`admit_container_source`) and of a
  SinkBinding's ``spec.subject`` (:func:`admit_sink_binding`); ``spec.sink`` and
  ``spec.ceOverrides`` are admitted for every source kind by :mod:`broker.features.sources.kinds`;
- the environment Knative's SinkBinding injects comes from :mod:`broker.features.sinkbinding`
  (``K_SINK`` and ``K_CE_OVERRIDES``, K185, K178/K179), which serving uses too;
- the local form of a ContainerSource (:func:`container_process_spec`, pure): there is no
  Kubernetes to pull and run the image, so cemesh runs the first container's ``command`` +
  ``args`` as a child process (:mod:`broker.features.supervisor`) with the container's ``env`` plus
  K_SINK and K_CE_OVERRIDES, in ``workingDir`` when given, restarted with backoff when it exits
  (as the Deployment Knative makes for it would restart its pod);
- the :class:`ContainerSource` runner, registered with :mod:`broker.features.sources` at the bottom.

Kubernetes semantics kept: ``$(VAR)`` in ``command``/``args`` expands to the container's
variables (K_SINK included), ``$(VAR)`` in an env value to the variables listed before it,
``$$`` is a literal ``$``, an unknown ``$(VAR)`` stays as written. An ``image`` without
``command`` applies (Knative YAML unchanged) but the source is not Ready (``NotRunnable``: the
image's entrypoint cannot be run here). Not available locally, with an admission error that says
so: ``env[].valueFrom``, ``envFrom``, ``initContainers`` and more than one container. Other
container fields (ports, resources, probes, volumes, ...) are accepted and ignored. Knative also
requires ``name`` and ``image`` on each container; cemesh does not need them and accepts their
absence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from broker.controlplane.resources import check_process_text
from broker.controlplane.shapes import require_mapping, type_name
from broker.core.errors import InvalidResource
from broker.core.labels import check_label_selector
from broker.features.sinkbinding import binding_env
from broker.features.sources.base import PrepareContext, Source, SourceKind, SourceNotReady
from broker.features.sources.kinds import CONTAINER_SOURCE, SINK_BINDING
from broker.features.supervisor import ProcessSpec, SupervisedProcess, exit_summary

log = logging.getLogger(__name__)


_CONTAINERS = "spec.template.spec.containers"
_CONTAINER = f"{_CONTAINERS}[0]"
# Restart policy for a ContainerSource's process: like a pod's CrashLoopBackOff (10 s doubling
# to 5 min) but quicker to start, since a local process starts in milliseconds.
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
CRASH_LOOP_EXITS = 3  # exits in a row (no healthy run between) that make a crash loop
HEALTHY_RUN = 10.0  # seconds a run must last to count as healthy (and reset the backoff)
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL (a pod's default is 30)


def _string_list(value: object, field: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidResource(field, f"must be a list of strings, got {type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidResource(
                f"{field}[{index}]", f"must be a string, got {type_name(item)} {item!r}; quote it"
            )
        check_process_text(item, f"{field}[{index}]")
    return value


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, ``$$`` -> ``$``, rest as written."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$" or index + 1 == len(text):
            out.append(char)
            index += 1
            continue
        following = text[index + 1]
        if following == "$":
            out.append("$")
            index += 2
            continue
        if following == "(":
            end = text.find(")", index + 2)
            if end != -1:
                name = text[index + 2 : end]
                out.append(variables[name] if name in variables else text[index : end + 1])
                index = end + 1
                continue
        out.append(char)
        index += 1
    return "".join(out)


# --- ContainerSource ----------------------------------------------------------------------------


def _container(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """``spec.template.spec.containers[0]`` of an admitted ContainerSource spec."""
    container: Mapping[str, Any] = spec["template"]["spec"]["containers"][0]
    return container


def admit_container_source(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Check a ContainerSource's ``spec.template`` (in place); InvalidResource names the field.

    ``spec.sink`` and ``spec.ceOverrides`` are checked for every source by
    :mod:`broker.features.sources.kinds`.
    """
    spec = obj["spec"]
    if spec.get("template") is None:
        raise InvalidResource(
            "spec.template",
            "is required: a pod template whose container's command cemesh runs locally",
        )
    template = require_mapping(spec["template"], "spec.template", "a pod template (with spec)")
    pod = require_mapping(
        template.get("spec"), "spec.template.spec", "a pod spec (with containers)"
    )
    containers = pod.get("containers")
    if not containers:
        raise InvalidResource(_CONTAINERS, "is required: one container with a command to run")
    if not isinstance(containers, list):
        raise InvalidResource(_CONTAINERS, f"must be a list, got {type_name(containers)}")
    if len(containers) > 1:
        raise InvalidResource(
            _CONTAINERS,
            f"has {len(containers)} containers; cemesh runs one container's command per "
            "ContainerSource: keep one, or make one ContainerSource per command",
        )
    if pod.get("initContainers"):
        raise InvalidResource(
            "spec.template.spec.initContainers",
            "is not supported: cemesh runs the container's command locally, without a pod; "
            "run the init steps from that command",
        )
    container = require_mapping(containers[0], _CONTAINER, "a container (with command)")
    for key in ("name", "image", "workingDir"):
        value = container.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidResource(f"{_CONTAINER}.{key}", f"must be a string, got {value!r}")
        check_process_text(value or "", f"{_CONTAINER}.{key}")
    command = container.get("command")
    if not command:
        if not container.get("image"):
            raise InvalidResource(f"{_CONTAINER}.command", _not_runnable(None))
        # Knative YAML with only an image applies unchanged; the source is not Ready, and its
        # status says to add a command (see _prepare).
    else:
        _string_list(command, f"{_CONTAINER}.command")
    if container.get("args") is not None:
        _string_list(container["args"], f"{_CONTAINER}.args")
    if container.get("envFrom"):
        raise InvalidResource(
            f"{_CONTAINER}.envFrom",
            "is not supported: cemesh runs the command locally, without Kubernetes; "
            "list the variables in env with inline values",
        )
    env = container.get("env")
    if env is not None:
        if not isinstance(env, list):
            raise InvalidResource(
                f"{_CONTAINER}.env", f"must be a list of {{name, value}}, got {type_name(env)}"
            )
        for index, item in enumerate(env):
            _check_env_var(item, f"{_CONTAINER}.env[{index}]")


def _check_env_var(item: object, field: str) -> None:
    var = require_mapping(item, field, "an object with name and value")
    name = var.get("name")
    if not isinstance(name, str) or not name or "=" in name or "\0" in name:
        raise InvalidResource(
            f"{field}.name", f"must be a non-empty variable name without '=', got {name!r}"
        )
    if var.get("valueFrom") is not None:
        raise InvalidResource(
            f"{field}.valueFrom",
            f"is not supported ({name}): cemesh runs the command locally, without Kubernetes "
            "secrets, config maps or the downward API; give the value inline in value",
        )
    value = var.get("value")
    if value is not None and not isinstance(value, str):
        raise InvalidResource(
            f"{field}.value", f"must be a string, got {type_name(value)} {value!r}; quote it"
        )
    if isinstance(value, str):
        check_process_text(value, f"{field}.value")


def container_process_spec(
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    sink_uri: str,
    ce_overrides: Mapping[str, str],
    applied_by: str = "",
) -> ProcessSpec:
    """The child process that stands for an admitted ContainerSource ``spec`` (pure).

    argv = ``command`` + ``args``; env = the container's ``env`` then ``K_SINK`` and
    ``K_CE_OVERRIDES`` (appended after it, as the SinkBinding Knative makes for the source
    does, so they win over the user's); cwd = ``workingDir``.
    """
    container = _container(spec)
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        env[var["name"]] = expand(var.get("value") or "", env)
    env.update(binding_env(sink_uri, ce_overrides))
    argv = [*container["command"], *(container.get("args") or [])]
    return ProcessSpec(
        name=f"containersource/{namespace}/{name}",
        command=tuple(expand(arg, env) for arg in argv),
        env=env,
        cwd=container.get("workingDir") or None,
        applied_by=applied_by,
    )


# --- SinkBinding --------------------------------------------------------------------------------


def admit_sink_binding(obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    """Check and default a SinkBinding's ``spec.subject`` (in place), as Knative does.

    The subject (a ``tracker.Reference``) needs ``apiVersion`` and ``kind``, and exactly one of
    ``name`` and ``selector``; its ``namespace`` defaults to, and must equal, the binding's.
    ``spec.sink`` and ``spec.ceOverrides`` are checked by :mod:`broker.features.sources.kinds`.
    """
    spec = obj["spec"]
    namespace = obj["metadata"]["namespace"]
    if spec.get("subject") is None:
        raise InvalidResource(
            "spec.subject",
            "is required: the workload (apiVersion, kind, and name or selector) to bind",
        )
    subject = dict(
        require_mapping(
            spec["subject"], "spec.subject", "an object (apiVersion, kind, name or selector)"
        )
    )
    for key in ("apiVersion", "kind"):
        value = subject.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidResource(f"spec.subject.{key}", f"is required, got {value!r}")
    subject_namespace = subject.get("namespace")
    if subject_namespace in (None, ""):
        subject["namespace"] = namespace
    elif subject_namespace != namespace:
        raise InvalidResource(
            "spec.subject.namespace",
            f"must be empty or this SinkBinding's namespace {namespace!r}, "
            f"not {subject_namespace!r}",
        )
    name, selector = subject.get("name"), subject.get("selector")
    if name not in (None, "") and selector is not None:
        raise InvalidResource("spec.subject", "give name or selector, not both")
    if name not in (None, ""):
        if not isinstance(name, str):
            raise InvalidResource("spec.subject.name", f"must be a string, got {name!r}")
    elif selector is not None:
        check_label_selector(selector, "spec.subject.selector")
    else:
        raise InvalidResource("spec.subject", "needs name or selector; neither is set")
    spec["subject"] = subject


# --- the runner ---------------------------------------------------------------------------------


class ContainerSource(Source):
    """Runs a ContainerSource's command as a supervised child process until stopped.

    A command that exits :data:`CRASH_LOOP_EXITS` times in a row (no run lasting
    :data:`HEALTHY_RUN` seconds in between) is reported as ``CrashLoopBackOff`` with its last
    exit code and output, so the source is not Ready while it keeps being restarted with
    backoff; a run that lasts makes it Ready again.
    """

    _process: SupervisedProcess | None = None
    _exits = 0
    _healthy: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        spec = self.spec
        process_spec = container_process_spec(
            spec.namespace,
            spec.name,
            spec.spec,
            spec.sink_uri,
            spec.ce_overrides,
            applied_by=spec.applied_by,
        )
        self._process = SupervisedProcess(
            process_spec,
            backoff_initial=BACKOFF_INITIAL,
            backoff_max=BACKOFF_MAX,
            stop_grace=STOP_GRACE,
            reset_after=HEALTHY_RUN,
            logger=log,
            on_start=self._started,
            on_exit=self._exited,
        )
        try:
            await self._process.start()
            await asyncio.Event().wait()  # the supervisor restarts it; we only wait to stop
        finally:
            if self._healthy is not None:
                self._healthy.cancel()
            await self._process.stop()

    def _started(self, pid: int) -> None:
        self._healthy = asyncio.get_running_loop().call_later(HEALTHY_RUN, self._ran_long_enough)

    def _ran_long_enough(self) -> None:
        self._exits = 0
        self.report(None)

    def _exited(self, code: int) -> None:
        if self._healthy is not None:
            self._healthy.cancel()
            self._healthy = None
        self._exits += 1
        if self._exits >= CRASH_LOOP_EXITS and self._process is not None:
            self.report(
                (
                    "CrashLoopBackOff",
                    f"the command exited {self._exits} times in a row and is restarted with "
                    f"backoff; last exit {exit_summary(code, self._process.tail)}",
                )
            )

    async def close(self) -> None:
        if self._process is not None:
            await self._process.stop()


def _not_runnable(image: object) -> str:
    pulled = f"pull or run the image {image!r}" if image else "pull or run images"
    return (
        "is required: cemesh runs the container's command locally as a child process "
        f"(with K_SINK and K_CE_OVERRIDES set) and does not {pulled}; set command (and "
        "args) to the program to run, e.g. command: [python, heartbeats.py]"
    )


def _prepare(obj: Mapping[str, Any], context: PrepareContext) -> Mapping[str, Any]:
    """Not Ready (NotRunnable) while the container has an image but no command to run."""
    containers = ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    container = containers[0] if isinstance(containers, list) and containers else {}
    if not container.get("command"):
        raise SourceNotReady(
            "NotRunnable", f"{_CONTAINER}.command {_not_runnable(container.get('image'))}"
        )
    return {}


CONTAINER_SOURCE_KIND = SourceKind(
    resource=CONTAINER_SOURCE,
    runner=ContainerSource,
    check=admit_container_source,
    prepare=_prepare,
)
# What a SinkBinding can bind here: workloads cemesh runs and can inject K_SINK into.
BINDABLE = {("serving.knative.dev/v1", "Service")}


def _prepare_sink_binding(obj: Mapping[str, Any], context: PrepareContext) -> Mapping[str, Any]:
    """Not Ready when the subject is a kind cemesh cannot inject into (a batch/v1 Job, a
    Deployment: cemesh runs no pods), or a named subject that does not exist."""
    subject = (obj.get("spec") or {}).get("subject") or {}
    api_version, kind = str(subject.get("apiVersion", "")), str(subject.get("kind", ""))
    if (api_version, kind) not in BINDABLE:
        bindable = ", ".join(f"{k} ({v})" for v, k in sorted(BINDABLE))
        raise SourceNotReady(
            "SubjectNotBindable",
            f"spec.subject: cannot bind {kind} ({api_version}): cemesh injects K_SINK only into "
            f"the replicas it runs, of {bindable}",
        )
    name = subject.get("name")
    namespace = str(subject.get("namespace") or obj["metadata"]["namespace"])
    if name and context.find(api_version.split("/")[0], kind, namespace, str(name)) is None:
        raise SourceNotReady(
            "SubjectNotFound", f"spec.subject: {kind} {namespace}/{name} does not exist"
        )
    return {}


# SinkBinding runs nothing: its sink and ceOverrides reach its subject (K_SINK, K_CE_OVERRIDES).
SINK_BINDING_KIND = SourceKind(
    resource=SINK_BINDING,
    runner=None,
    check=admit_sink_binding,
    prepare=_prepare_sink_binding,
)
