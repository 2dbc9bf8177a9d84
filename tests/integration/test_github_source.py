"""GitHubSource through a real cemesh: answers, ceOverrides, sink refusal, missing secret.

The replay test (marker ``shared_conformance``, an extra conformance pass) POSTs octokit's
example payloads from ``../shared/fixtures/github`` byte for byte, signed as GitHub signs; the
project's own deliveries of many kinds run in test_github_deliveries.py.
K197 type, K198 source/id/data, K199 subject and extensions, K200 answers, K179
ceOverrides, K181 status.sinkUri.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import shared_fixture_dir
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import RecordingSubscriber

SECRET = "It's a Secret to Everybody"
REPO = "Codertocat/Hello-World"
WEBHOOK = "/sources/github/default/hello"

BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
"""

WEBHOOK_SECRET = f"""
apiVersion: v1
kind: Secret
metadata:
  name: github-secret
stringData:
  secretToken: "{SECRET}"
"""


@dataclass(frozen=True)
class Delivery:
    path: Path
    event: str  # X-GitHub-Event
    action: str

    @property
    def body(self) -> bytes:
        return self.path.read_bytes()

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


def recorded_deliveries() -> list[Delivery]:
    folder = shared_fixture_dir("github")
    deliveries = []
    for line in (folder / "MANIFEST.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        local_file, event, action, *_ = line.split()
        deliveries.append(Delivery(folder.parent / local_file, event, action))
    assert deliveries, "MANIFEST.txt lists no payloads"
    return deliveries


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(event: str, delivery_id: str, signature: str | None) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/044aadd",
        "x-github-event": event,
        "x-github-delivery": delivery_id,
        "x-github-hook-id": "292430182",
    }
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    return headers


def github_source(
    name: str, event_types: list[str], sink: str, extra: str = "", secret: str = "github-secret"
) -> str:
    types = "".join(f"\n    - {t}" for t in event_types)
    return f"""
apiVersion: sources.knative.dev/v1alpha1
kind: GitHubSource
metadata:
  name: {name}
spec:
  ownerAndRepository: {REPO}
  eventTypes:{types}
  secretToken:
    secretKeyRef:
      name: {secret}
      key: secretToken
  sink:
{sink}
{extra}
"""


BROKER_SINK = """    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default"""


def uri_sink(url: str) -> str:
    return f"    uri: {url}"


def trigger(name: str, subscriber: str, type_filter: str | None = None) -> str:
    filter_ = f"  filter:\n    attributes:\n      type: {type_filter}\n" if type_filter else ""
    return f"""
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
spec:
  broker: default
{filter_}  subscriber:
    uri: {subscriber}
"""


async def status_of(mesh: RunningCemesh, name: str) -> dict:
    path = f"/apis/sources.knative.dev/v1alpha1/namespaces/default/githubsources/{name}"
    response = await mesh.client.get(path)
    assert response.status_code == 200, response.text
    return response.json()["status"]


def ready(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.shared_conformance
async def test_github_replay_pull_requests_reach_the_trigger_with_knative_attributes(
    tmp_path: Path,
) -> None:
    """Every fixture POSTed with a correct signature: the pull_request Trigger gets exactly the
    pull-request deliveries, with id = X-GitHub-Delivery, source = the repository URL, subject =
    the PR number (K197-K199) and the payload bytes unchanged; every other listed kind reaches
    a catch-all Trigger with Knative's subject; ping answers 200 and emits nothing; forged and
    unsigned deliveries get 401 and emit nothing (K200, issue 4)."""
    deliveries = recorded_deliveries()
    kinds = sorted({d.event for d in deliveries} - {"ping"})
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber() as pulls,
        RecordingSubscriber() as everything,
    ):
        await mesh.apply(BROKER)
        await mesh.apply(WEBHOOK_SECRET)
        await mesh.apply(trigger("pulls", pulls.url, "dev.knative.source.github.pull_request"))
        await mesh.apply(trigger("everything", everything.url))
        await mesh.apply(github_source("hello", kinds, BROKER_SINK))

        status = await status_of(mesh, "hello")
        assert ready(status)["status"] == "True", status
        assert status["webhookUrl"].endswith(WEBHOOK)
        assert status["sinkUri"].endswith("/default/default")
        assert {a["type"] for a in status["ceAttributes"]} == {
            f"dev.knative.source.github.{k}" for k in kinds
        }

        # Forged first: wrong secret, tampered body, no signature at all.
        forged_ids = []
        for delivery in deliveries:
            body = delivery.body
            for signature, sent in (
                (sign(body, "not the secret"), body),
                (sign(body), body + b" "),
                (None, body),
            ):
                forged_ids.append(delivery_id := str(uuid.uuid4()))
                response = await mesh.post_event(
                    WEBHOOK, github_headers(delivery.event, delivery_id, signature), sent
                )
                assert response.status_code == 401, (delivery.path, response.text)

        sent: dict[str, Delivery] = {}
        for delivery in deliveries:
            delivery_id = str(uuid.uuid4())
            response = await mesh.post_event(
                WEBHOOK,
                github_headers(delivery.event, delivery_id, sign(delivery.body)),
                delivery.body,
            )
            if delivery.event == "ping":
                assert response.status_code == 200, response.text
            else:
                assert response.status_code == 202, (delivery.path, response.text)
                sent[delivery_id] = delivery

        received = await everything.wait_for(len(sent))
        expected_pulls = {i for i, d in sent.items() if d.event == "pull_request"}
        assert len(expected_pulls) == 3
        got_pulls = await pulls.wait_for(len(expected_pulls))

        by_id = {r.event.id: r for r in received if r.event is not None}
        assert set(by_id) == set(sent), "each signed, listed delivery arrives once"
        assert not set(forged_ids) & set(by_id)
        assert len(received) == len(sent)

        assert {r.event.id for r in got_pulls if r.event} == expected_pulls
        assert len(got_pulls) == len(expected_pulls)
        for got in got_pulls:
            assert got.event is not None
            delivery = sent[got.event.id]
            payload = delivery.payload
            attributes = got.event.attributes
            assert attributes["type"] == "dev.knative.source.github.pull_request"
            assert attributes["source"] == f"https://github.com/{REPO}"
            assert attributes["subject"] == str(payload["pull_request"]["number"])
            assert attributes["datacontenttype"] == "application/json"
            assert attributes["action"] == delivery.action
            assert str(attributes["number"]) == str(payload["number"])
            assert attributes["repository"] == payload["repository"]["name"]
            assert attributes["owner"] == payload["repository"]["owner"]["login"]
            assert attributes["sender"] == payload["sender"]["login"]
            assert got.event.data == delivery.body

        for delivery_id, delivery in sent.items():
            event = by_id[delivery_id].event
            assert event is not None
            assert event.type == f"dev.knative.source.github.{delivery.event}"
            assert event.data == delivery.body
            payload = delivery.payload
            expected_subject = {
                "push": payload.get("compare", "").rpartition("/")[2],
                "issues": str((payload.get("issue") or {}).get("number")),
                "issue_comment": (payload.get("comment") or {})
                .get("html_url", "")
                .rpartition("/")[2],
                "release": (payload.get("release") or {}).get("tag_name"),
                "create": payload.get("ref_type"),
                "delete": payload.get("ref_type"),
                "check_run": str((payload.get("check_run") or {}).get("id")),
                "workflow_run": str((payload.get("workflow_run") or {}).get("id")),
                "star": str((payload.get("repository") or {}).get("id")),
            }.get(delivery.event)
            if expected_subject is not None:
                assert event.attributes.get("subject") == expected_subject, delivery.path


async def test_github_event_types_filter_ping_listed_and_ce_overrides(tmp_path: Path) -> None:
    """A kind not in eventTypes answers 200 and emits nothing; a listed ping is emitted like any
    other kind (subject = hook id, K199); ceOverrides extensions are on every event (K179)."""
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sink:
        await mesh.apply(WEBHOOK_SECRET)
        await mesh.apply(
            github_source(
                "hello",
                ["pull_request", "ping"],
                uri_sink(sink.url),
                "  ceOverrides:\n    extensions:\n      team: platform\n",
            )
        )
        ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 42}).encode()
        push = json.dumps({"ref": "refs/heads/main", "compare": "https://x/compare/a...b"}).encode()

        response = await mesh.post_event(
            WEBHOOK, github_headers("push", "push-1", sign(push)), push
        )
        assert response.status_code == 200, response.text
        response = await mesh.post_event(
            WEBHOOK, github_headers("ping", "ping-1", sign(ping)), ping
        )
        assert response.status_code == 202, response.text

        [got] = await sink.wait_for(1)
        assert got.event is not None
        assert got.event.id == "ping-1"
        assert got.event.type == "dev.knative.source.github.ping"
        assert got.event.attributes["subject"] == "42"
        assert got.event.attributes["team"] == "platform"
        assert got.event.data == ping
        assert len(sink.received) == 1


async def test_github_missing_headers_and_bad_payload_answer_400(tmp_path: Path) -> None:
    """Signed, but no X-GitHub-Event / X-GitHub-Delivery, or not a JSON object -> 400 (K200)."""
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sink:
        await mesh.apply(WEBHOOK_SECRET)
        await mesh.apply(github_source("hello", ["pull_request"], uri_sink(sink.url)))
        body = b'{"action": "opened"}'
        headers = github_headers("pull_request", "", sign(body))
        assert (await mesh.post_event(WEBHOOK, headers, body)).status_code == 400
        headers = github_headers("pull_request", "d-1", sign(b"[1, 2]"))
        assert (await mesh.post_event(WEBHOOK, headers, b"[1, 2]")).status_code == 400
        unknown = "/sources/github/default/nobody"
        headers = github_headers("pull_request", "d-2", sign(body))
        assert (await mesh.post_event(unknown, headers, body)).status_code == 404
        assert (await mesh.client.get(WEBHOOK)).status_code == 405
        assert sink.received == []


async def test_github_sink_refusal_answers_5xx_so_github_redelivers(tmp_path: Path) -> None:
    """The sink does not take the event -> a 5xx to GitHub (issue 4: GitHub redelivers)."""
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(lambda r: (400, [], b"no")) as sink,
    ):
        await mesh.apply(WEBHOOK_SECRET)
        await mesh.apply(github_source("hello", ["pull_request"], uri_sink(sink.url)))
        body = b'{"action": "opened", "number": 7, "pull_request": {"number": 7}}'
        response = await mesh.post_event(
            WEBHOOK, github_headers("pull_request", "d-1", sign(body)), body
        )
        assert 500 <= response.status_code < 600, response.text
        assert len(sink.received) == 1


async def test_github_missing_secret_is_not_ready_naming_the_field(tmp_path: Path) -> None:
    """A secretToken naming a Secret that does not exist: the source is not Ready, the reason
    and message name spec.secretToken.secretKeyRef, and its webhook answers 404 (issue 4)."""
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sink:
        await mesh.apply(github_source("hello", ["push"], uri_sink(sink.url), secret="nope"))
        condition = ready(await status_of(mesh, "hello"))
        assert condition["status"] == "False"
        assert condition["reason"] == "SecretNotFound"
        assert "spec.secretToken.secretKeyRef" in condition["message"]
        body = b"{}"
        headers = github_headers("push", "d-1", sign(body))
        assert (await mesh.post_event(WEBHOOK, headers, body)).status_code == 404

        await mesh.apply(WEBHOOK_SECRET.replace("github-secret", "nope"))
        assert ready(await status_of(mesh, "hello"))["status"] == "True"
