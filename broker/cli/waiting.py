"""``cemesh apply --wait``: after applying, show how many objects are Ready until all are.

:func:`readiness` reads an object's ``Ready`` condition (pure); :func:`wait_ready` polls the
applied objects and shows the count as a progress bar on a terminal (click's), a line per change
otherwise, and fails naming the objects still not Ready (with their Ready message) at the timeout.
Objects without conditions (Secrets, ConfigMaps) count as Ready.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click

from broker.cli.client import ApiClient
from broker.cli.failures import CliError
from broker.cli.manifests import object_name, object_namespace, object_type
from broker.controlplane.catalog import ResourceType

WAIT_HELP = "Then wait up to SECONDS (60) until every applied object is Ready, showing how many."
POLL_INTERVAL = 0.5  # seconds between two looks at the objects still not Ready

Applied = tuple[ResourceType, str, str]  # kind, namespace, name


def applied_key(obj: Mapping[str, Any], default_namespace: str) -> Applied:
    """What ``--wait`` follows of an applied manifest object."""
    return object_type(obj), object_namespace(obj, default_namespace), object_name(obj)


def readiness(obj: Mapping[str, Any]) -> tuple[bool, str]:
    """(Ready, why not): True when its Ready condition is True, or it has no conditions."""
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, Mapping) else None
    if not conditions:  # a kind without conditions (Secret, ConfigMap): nothing to wait for
        return True, ""
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        return True, ""
    return ready.get("status") == "True", str(ready.get("message") or ready.get("reason") or "")


def not_ready_message(waiting: Mapping[Applied, str], total: int, timeout: float) -> str:
    """The error once ``timeout`` passed: how many, which, and why each is not Ready."""
    names = "; ".join(
        f"{rtype.kind.lower()}/{name}: {why or 'not Ready'}"
        for (rtype, _, name), why in waiting.items()
    )
    return f"{len(waiting)} of {total} not Ready after {timeout:g} s: {names}"


def wait_ready(api: ApiClient, applied: Sequence[Applied], timeout: float) -> None:
    """Poll ``applied`` until every one is Ready, showing the count; CliError at ``timeout``."""
    deadline = time.monotonic() + timeout
    total = len(applied)
    waiting: dict[Applied, str] = dict.fromkeys(applied, "")
    bar: Any = None
    if sys.stderr.isatty():
        bar = click.progressbar(length=total, label="Ready", file=sys.stderr)
        bar.__enter__()
    shown = 0 if bar is not None else -1
    try:
        while True:
            for key in list(waiting):
                ready, why = readiness(api.get(*key))
                if ready:
                    del waiting[key]
                else:
                    waiting[key] = why
            done = total - len(waiting)
            if bar is not None:
                bar.update(done - shown)
            elif done != shown:
                click.echo(f"Ready: {done}/{total}", err=True)
            shown = done
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise CliError(not_ready_message(waiting, total, timeout))
            time.sleep(POLL_INTERVAL)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
