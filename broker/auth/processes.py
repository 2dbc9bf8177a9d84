"""Which objects start a local process, and who applied them (pure).

Two kinds run a command on cemesh's host as cemesh's own user: a ``ContainerSource``
(``sources.knative.dev``) and a ``Service`` (``serving.knative.dev``) when the invoker's
backend is ``process``; both carry it as ``spec.template.spec.containers[0].command`` (+
``args``). Creating or changing such an object needs the :data:`~broker.auth.rbac.PROCESSES`
permission, and ``CEMESH_ALLOW_PROCESSES=false`` refuses it for everyone.

The API stamps every object it writes with :data:`APPLIED_BY` (the authenticated subject; a
value in the request body is never kept), and the code that starts processes logs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

APPLIED_BY = "cemesh.dev/applied-by"

_SOURCES = "sources.knative.dev"
_SERVING = "serving.knative.dev"


def _group(api_version: object) -> str:
    return str(api_version).rpartition("/")[0] if isinstance(api_version, str) else ""


def process_command(obj: Mapping[str, Any], invoker_backend: str) -> list[str] | None:
    """The argv ``obj`` would run as a local process, or None when it runs none.

    ``obj`` is an admitted object (its shape checked). A ContainerSource or process-backend
    Service with only an ``image`` runs nothing (it is not Ready), so it needs no permission.
    """
    kind, group = obj.get("kind"), _group(obj.get("apiVersion"))
    runs = (kind, group) == ("ContainerSource", _SOURCES) or (
        (kind, group) == ("Service", _SERVING) and invoker_backend == "process"
    )
    if not runs:
        return None
    template = (obj.get("spec") or {}).get("template") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    container = containers[0] if containers and isinstance(containers[0], Mapping) else {}
    command = container.get("command")
    if not command:
        return None
    return [str(part) for part in [*command, *(container.get("args") or [])]]


def applied_by(metadata: Mapping[str, Any]) -> str:
    """Who applied the object with this ``metadata`` ("" when made by cemesh itself)."""
    return str((metadata.get("annotations") or {}).get(APPLIED_BY) or "")
