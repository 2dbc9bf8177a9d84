"""Helpers for flow tests: subscribers that reply with an event, and waiting on a condition.

A :class:`~tests.support.subscriber.RecordingSubscriber` answers with whatever its ``respond``
returns; :func:`appender` and :func:`replying` build ``respond`` functions that answer
``200`` with a CloudEvent (binary mode), as a Sequence step or a Parallel filter does.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from broker.core import binding
from broker.core.events import CloudEvent
from tests.support.subscriber import Received, Reply

ACCEPTED: Reply = (202, [], b"")


def reply_with(event: CloudEvent) -> Reply:
    """``200`` with ``event`` in binary mode: a reply."""
    headers, body = binding.to_binary(event)
    return 200, headers, body


def replying(
    transform: Callable[[CloudEvent], CloudEvent | None],
) -> Callable[[Received], Reply]:
    """Answer each event with ``transform(event)``; ``None`` answers ``202`` (no reply)."""

    def respond(received: Received) -> Reply:
        assert received.event is not None, received.body
        reply = transform(received.event)
        return ACCEPTED if reply is None else reply_with(reply)

    return respond


def appended(event: CloudEvent, suffix: str, type_: str | None = None) -> CloudEvent:
    """``event`` with ``suffix`` appended to its JSON ``message`` (the Knative docs' appender)."""
    data = orjson.loads(event.data or b"{}")
    data["message"] = f"{data.get('message', '')}{suffix}"
    changed = event.evolve(set={"type": type_} if type_ else None)
    changed.data = orjson.dumps(data)
    return changed


def appender(suffix: str, type_: str | None = None) -> Callable[[Received], Reply]:
    """A step that replies with the event's ``message`` plus ``suffix`` (and maybe a new type)."""
    return replying(lambda event: appended(event, suffix, type_))


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait until ``condition()`` holds, checking every few milliseconds; fail after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            # Counters such as Metrics.loops_stopped signal no event when they move: poll them.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout:g}s") from None


async def ready_object(
    client: Any,
    path: str,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> dict[str, Any]:
    """GET ``path`` (an object of the API) until its Ready condition is True; return it.

    A Service is Ready only once a replica listens, so a flow pointing at Services is applied
    and checked after this, not at once."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                obj = (await client.get(path)).json()
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return dict(obj)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{path} not Ready within {timeout:g}s: {obj}") from None


async def services_ready(client: Any, namespace: str = "default") -> None:
    """Wait until every Service of ``namespace`` is Ready (its replica listens)."""
    base = f"/apis/serving.knative.dev/v1/namespaces/{namespace}/services"
    for item in (await client.get(base)).json()["items"]:
        await ready_object(client, f"{base}/{item['metadata']['name']}")


SAMPLES = Path(__file__).resolve().parent / "sample_services.py"


def with_command(manifest: str, *args: str) -> list[dict[str, Any]]:
    """The docs' Services, each given a local ``command`` that does its image's job."""
    docs = [doc for doc in yaml.safe_load_all(manifest) if doc]
    for doc in docs:
        [container] = doc["spec"]["template"]["spec"]["containers"]
        container["command"] = [sys.executable, str(SAMPLES), *args]
    return docs


def displayed(path: Path) -> list[dict[str, Any]]:
    """The events the sample event-display Service wrote to ``path`` (one JSON line each)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
