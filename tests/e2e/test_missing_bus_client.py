"""A bus whose client library is not installed never breaks the server (issue 11, item 4).

cemesh runs as a real child process in which the bus's client cannot be imported: a
``sitecustomize`` module in a directory on ``PYTHONPATH`` installs an import hook that raises
``ModuleNotFoundError`` for the client's package, as if the extra had never been installed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import CEMESH, cemesh_process

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"


def _collection(api_version: str, plural: str) -> str:
    return f"/apis/{api_version}/namespaces/default/{plural}"


# bus -> (the package its client installs, the channel kind on that bus, its collection)
OPTIONAL_BUSES: dict[str, tuple[str, str, str, str]] = {
    "kafka": ("aiokafka", "messaging.knative.dev/v1beta1", "KafkaChannel", "kafkachannels"),
    "nats": (
        "nats",
        "messaging.knative.dev/v1alpha1",
        "NatsJetStreamChannel",
        "natsjetstreamchannels",
    ),
    "redis": (
        "redis",
        "messaging.cemesh.dev/v1alpha1",
        "RedisStreamChannel",
        "redisstreamchannels",
    ),
    "pubsub": (
        "google.pubsub_v1",
        "messaging.cemesh.dev/v1alpha1",
        "PubSubChannel",
        "pubsubchannels",
    ),
}

# (bus, a package its extra installs): the Kafka bus needs both of its client libraries by
# default (librdkafka moves records, aiokafka sends admin requests).
MISSING = [
    *((bus, package) for bus, (package, *_) in sorted(OPTIONAL_BUSES.items())),
    ("kafka", "confluent_kafka"),
]
MISSING_IDS = [f"{bus}-{package}" for bus, package in MISSING]

_BLOCKER = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def _without_client(tmp_path: Path, package: str) -> dict[str, str]:
    """Environment in which ``import <package>`` fails in every Python child process."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_BLOCKER.format(blocked=package))
    return {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}


def _ready(obj: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def _eventually(check: Any, timeout: float = 20.0) -> Any:  # noqa: ASYNC109
    """Poll ``check()`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):  # noqa: ASYNC110 (a server's state, over HTTP)
            await asyncio.sleep(0.1)
    return result


@pytest.mark.parametrize(("bus", "package"), MISSING, ids=MISSING_IDS)
async def test_a_channel_on_a_bus_without_its_client_applies_not_ready_and_the_rest_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bus: str, package: str
) -> None:
    _, api_version, kind, plural = OPTIONAL_BUSES[bus]
    for name, value in _without_client(tmp_path, package).items():
        monkeypatch.setenv(name, value)
    hint = f"pip install 'cemesh[{bus}]'"
    async with cemesh_process(tmp_path) as mesh, mesh.client() as client:
        channels = _collection(api_version, plural)
        channel = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "orders"}}
        created = await client.post(channels, json=channel)
        assert created.status_code == 201, created.text
        broker = {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "picky"},
            "spec": {"config": {"apiVersion": api_version, "kind": kind}},
        }
        created = await client.post(BROKERS, json=broker)
        assert created.status_code == 201, created.text

        async def not_ready(path: str) -> dict[str, Any] | None:
            obj = (await client.get(path)).json()
            conditions = (obj.get("status") or {}).get("conditions") or []
            ready = [c for c in conditions if c["type"] == "Ready"]
            return ready[0] if ready and ready[0]["status"] == "False" else None

        for path in (f"{channels}/orders", f"{BROKERS}/picky"):
            condition = await _eventually(lambda path=path: not_ready(path))
            assert condition["reason"] == "BusUnavailable", condition
            assert hint in condition["message"], condition

        # Everything on the installed default bus keeps working: creates, readiness, events.
        default = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}
        created = await client.post(BROKERS, json={**default, "metadata": {"name": "default"}})
        assert created.status_code == 201, created.text
        assert _ready(created.json())["status"] == "True", created.json()
        accepted = await client.post(
            "/default/default",
            headers={"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
        )
        assert accepted.status_code == 202, accepted.text
        refused = await client.post("/default/picky", headers={"ce-specversion": "1.0"})
        assert refused.status_code == 404  # a not-Ready broker has no ingress, but no 5xx
        readyz = await client.get("/readyz")
        assert readyz.status_code == 503 and hint in readyz.text
    assert "Traceback" not in mesh.log()
    assert mesh.log().count("bus client not installed") == 1  # said once, not on every poll


@pytest.mark.parametrize(("bus", "package"), MISSING, ids=MISSING_IDS)
async def test_serve_whose_default_channel_needs_a_missing_client_stops_with_one_line(
    tmp_path: Path, bus: str, package: str
) -> None:
    _, _, kind, _ = OPTIONAL_BUSES[bus]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEMESH_")}
    env.update(_without_client(tmp_path, package))
    env["CEMESH_DEFAULT_CHANNEL"] = kind
    env["CEMESH_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}"
    process = await asyncio.create_subprocess_exec(
        str(CEMESH),
        "serve",
        "--port",
        "1",  # never reached: it must stop before listening
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    assert lines[0].startswith("error: ") and f"pip install 'cemesh[{bus}]'" in lines[0]
    assert kind in lines[0]
    assert stdout == b""
