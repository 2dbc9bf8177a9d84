"""Where a Revision's replicas run: the contract between the invoker and its backends.

The invoker decides how many replicas each Revision should have (the autoscaler) and routes
requests to the ready ones (the activator); a backend makes the replicas exist: ``process``
(the embedded default, child processes on free loopback ports) or ``kubernetes`` (an existing
Deployment scaled through its scale subresource, routed to its ready endpoints).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RevisionRef:
    """One Revision of one Service."""

    namespace: str
    service: str
    revision: str


@dataclass(frozen=True, slots=True)
class Replica:
    """One ready replica: an id unique within its Revision and the base URL it answers on."""

    id: str
    url: str  # e.g. http://127.0.0.1:43121 (no trailing slash)


class Backend(Protocol):
    """Makes a Revision's replicas exist and says which are ready."""

    async def ensure(
        self, revision: RevisionRef, template: Mapping[str, Any], replicas: int
    ) -> None:
        """Bring ``revision`` to ``replicas`` replicas (0 = none), built from ``template``
        (the Revision's spec: containers, containerConcurrency, timeoutSeconds, annotations).
        Returns once the change is under way; replicas become ready later."""
        ...

    def ready(self, revision: RevisionRef) -> list[Replica]:
        """The replicas of ``revision`` that answer now (cheap: called per request)."""
        ...

    async def wait_ready(self, revision: RevisionRef, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``revision`` has a ready replica; False after ``timeout`` seconds."""
        ...

    async def forget(self, revision: RevisionRef) -> None:
        """``revision`` is gone: stop its replicas (process) or leave the Deployment alone."""
        ...

    async def stop(self) -> None:
        """Stop every replica this backend started. Idempotent."""
        ...
