"""Sources through a real cemesh's API: EventTypes they register, bad specs, unresolvable sinks.

Issue 4 items 1, 4 and 6: K184 a source realizes the EventTypes it produces (and they go with
it), K181 status.sinkUri and Ready, K163 a False Ready carries a reason; every statically
checkable mistake gets a 422 naming the field at apply time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.cli import table_rows
from broker.features.sources.base import SourceKind
from broker.server.features import default_features
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

EVENT_TYPES = "/apis/eventing.knative.dev/v1beta2/namespaces/default/eventtypes"
GITHUB_SOURCES = "/apis/sources.knative.dev/v1alpha1/namespaces/default/githubsources"
PING_SOURCES = "/apis/sources.knative.dev/v1/namespaces/default/pingsources"

BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
"""

SECRET = """
apiVersion: v1
kind: Secret
metadata:
  name: gh
stringData:
  secretToken: s3cret
"""

SINK = """  sink:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default"""

GITHUB = f"""
apiVersion: sources.knative.dev/v1alpha1
kind: GitHubSource
metadata:
  name: repo
spec:
  ownerAndRepository: knative/eventing
  eventTypes: [push, pull_request]
  secretToken:
    secretKeyRef: {{name: gh, key: secretToken}}
{SINK}
"""

PING = f"""
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata:
  name: beat
spec:
  schedule: "0 * * * *"
  data: hello
{SINK}
"""


async def event_types(mesh: RunningCemesh) -> dict[str, dict]:
    response = await mesh.client.get(EVENT_TYPES)
    assert response.status_code == 200, response.text
    return {item["spec"]["type"]: item for item in response.json()["items"]}


def ready(obj: dict) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


async def test_sources_register_their_event_types_and_take_them_away(tmp_path: Path) -> None:
    """K184 / issue 4 item 6: the GitHubSource's and PingSource's types are listed as EventTypes
    (type, source, the sink Broker as reference, owned by the source); deleting a source
    deletes its EventTypes and no other."""
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(BROKER)
        await mesh.apply(SECRET)
        [github] = await mesh.apply(GITHUB)
        [ping] = await mesh.apply(PING)

        listed = await event_types(mesh)
        assert set(listed) == {
            "dev.knative.source.github.push",
            "dev.knative.source.github.pull_request",
            "dev.knative.sources.ping",
        }
        push = listed["dev.knative.source.github.push"]
        assert push["spec"]["source"] == "https://github.com/knative/eventing"
        assert push["spec"]["reference"]["kind"] == "Broker"
        assert push["spec"]["reference"]["name"] == "default"
        assert push["metadata"]["ownerReferences"][0]["uid"] == github["metadata"]["uid"]
        assert ready(push)["status"] == "True"
        beat = listed["dev.knative.sources.ping"]
        assert beat["spec"]["source"] == "/apis/v1/namespaces/default/pingsources/beat"
        assert beat["metadata"]["ownerReferences"][0]["uid"] == ping["metadata"]["uid"]

        rows = table_rows("EventType", list(listed.values()), now=datetime.now(UTC))
        assert rows[0] == ["NAME", "TYPE", "SOURCE", "READY", "AGE"]
        assert {row[1] for row in rows[1:]} == set(listed)

        assert (await mesh.client.delete(f"{GITHUB_SOURCES}/repo")).status_code == 200
        assert set(await event_types(mesh)) == {"dev.knative.sources.ping"}
        assert (await mesh.client.delete(f"{PING_SOURCES}/beat")).status_code == 200
        assert await event_types(mesh) == {}


async def test_source_status_reports_sink_uri_and_webhook_url(tmp_path: Path) -> None:
    """K181: status.sinkUri and Ready; the GitHubSource's webhook URL is in its status; the
    CLI's table shows SINK, READY, REASON."""
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(BROKER)
        await mesh.apply(SECRET)
        [_] = await mesh.apply(GITHUB)
        github = (await mesh.client.get(f"{GITHUB_SOURCES}/repo")).json()
        assert ready(github)["status"] == "True"
        assert github["status"]["sinkUri"] == f"{mesh.url}/default/default"
        assert github["status"]["webhookUrl"] == f"{mesh.url}/sources/github/default/repo"
        rows = table_rows("GitHubSource", [github], now=datetime.now(UTC))
        assert rows[0] == ["NAME", "SINK", "READY", "REASON", "AGE"]
        assert rows[1][:4] == ["repo", f"{mesh.url}/default/default", "True", ""]


async def test_unresolvable_sinks_leave_the_source_not_ready_with_a_reason(
    tmp_path: Path,
) -> None:
    """Issue 4 item 4: a sink of a kind cemesh does not know, or a Broker that does not exist,
    is accepted (it may appear later) but the source is not Ready, with a reason (K163); it
    becomes Ready when the Broker appears."""
    async with running_cemesh(tmp_path) as mesh:
        [unknown] = await mesh.apply(
            PING.replace("kind: Broker", "kind: Unicorn").replace("name: beat", "name: odd")
        )
        odd = (await mesh.client.get(f"{PING_SOURCES}/odd")).json()
        assert unknown["metadata"]["name"] == "odd"
        assert ready(odd)["status"] == "False"
        assert ready(odd)["reason"]
        assert "sinkUri" not in odd["status"]

        await mesh.apply(PING)
        beat = (await mesh.client.get(f"{PING_SOURCES}/beat")).json()
        assert ready(beat)["status"] == "False"
        assert ready(beat)["reason"]
        assert "sink" in ready(beat)["message"]

        await mesh.apply(BROKER)
        beat = (await mesh.client.get(f"{PING_SOURCES}/beat")).json()
        assert ready(beat)["status"] == "True", beat["status"]


@pytest.mark.parametrize(
    ("manifest", "field"),
    [
        (PING.replace('"0 * * * *"', '"every hour"'), "spec.schedule"),
        (PING.replace('"0 * * * *"', '"0 * * * *"\n  timezone: Mars/Base'), "spec.timezone"),
        (PING.replace("data: hello", "data: a\n  dataBase64: YQ=="), "spec.dataBase64"),
        (PING.replace(SINK, ""), "spec.sink"),
        (PING.replace("      kind: Broker\n", ""), "spec.sink.ref.kind"),
        (
            GITHUB.replace("    secretKeyRef: {name: gh, key: secretToken}\n", "    {}\n"),
            "spec.secretToken.secretKeyRef",
        ),
        (
            GITHUB.replace("{name: gh, key: secretToken}", "{name: gh}"),
            "spec.secretToken.secretKeyRef.key",
        ),
        (GITHUB.replace("[push, pull_request]", "[push, shove]"), "spec.eventTypes[1]"),
        (GITHUB.replace("knative/eventing", "knative/eventing/extra"), "spec.ownerAndRepository"),
    ],
)
async def test_bad_source_specs_get_422_naming_the_field(
    tmp_path: Path, manifest: str, field: str
) -> None:
    """Issue 4 item 4: bad cron, unknown time zone, missing secret ref fields, ... -> 422."""
    import yaml

    doc = yaml.safe_load(manifest)
    path = GITHUB_SOURCES if doc["kind"] == "GitHubSource" else PING_SOURCES
    async with running_cemesh(tmp_path) as mesh:
        response = await mesh.client.post(path, json=doc)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["details"]["causes"][0]["field"] == field, body
        assert field in body["message"]


# --- the README's "Writing a source" example, run as written ---------------------------------


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Writing a source", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def heartbeat_kind() -> SourceKind:
    """The README's HeartbeatSource, defined by running the example as written. Nothing is
    registered anywhere: only an app built with it in its feature list serves it."""
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    kind = namespace["HEARTBEAT"]
    assert isinstance(kind, SourceKind)
    return kind


async def test_readme_custom_source_example_runs(
    tmp_path: Path, heartbeat_kind: SourceKind
) -> None:
    """Issue 4 item 1: the documented custom source, listed in the app's features, is admitted
    (422 naming its field), reconciled (EventType), run and stopped."""
    heartbeats = "/apis/sources.example.com/v1/namespaces/default/heartbeatsources"
    features = default_features(extra_sources=[heartbeat_kind])
    async with (
        running_cemesh(tmp_path, features=features) as mesh,
        RecordingSubscriber() as sink,
    ):
        manifest = {
            "apiVersion": "sources.example.com/v1",
            "kind": "HeartbeatSource",
            "metadata": {"name": "pulse"},
            "spec": {"intervalSeconds": 0.01, "sink": {"uri": sink.url}},
        }
        bad = {**manifest, "spec": {**manifest["spec"], "intervalSeconds": -1}}
        response = await mesh.client.post(heartbeats, json=bad)
        assert response.status_code == 422
        assert response.json()["details"]["causes"][0]["field"] == "spec.intervalSeconds"

        await mesh.apply(manifest)
        received = await sink.wait_for(3)
        assert [r.event.type for r in received[:3] if r.event] == ["com.example.heartbeat"] * 3
        assert [r.body for r in received[:2]] == [b'{"beat": 1}', b'{"beat": 2}']
        assert set(await event_types(mesh)) == {"com.example.heartbeat"}
        pulse = (await mesh.client.get(f"{heartbeats}/pulse")).json()
        assert pulse["status"]["sinkUri"] == sink.url

        assert (await mesh.client.delete(f"{heartbeats}/pulse")).status_code == 200
        assert await event_types(mesh) == {}
