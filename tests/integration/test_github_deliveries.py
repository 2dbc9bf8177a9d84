"""GitHub deliveries of many kinds through a running GitHubSource webhook into a Broker.

The deliveries are the project's own (tests/support/github_deliveries.py). One cemesh with a
Broker, a GitHubSource listing every kind, a Trigger on ``dev.knative.source.github.pull_request``
and a catch-all Trigger:

- each signed delivery is answered ``202`` and reaches the catch-all Trigger once, with type
  ``dev.knative.source.github.<X-GitHub-Event>``, ``id`` the ``X-GitHub-Delivery``, source the
  repository URL, Knative's subject and extensions, and the payload bytes unchanged; only the
  pull-request ones reach the pull-request Trigger;
- forged deliveries (wrong secret, tampered body, no signature, a signature without its
  algorithm prefix) are answered ``401`` and emit nothing;
- a kind that is not listed is answered ``200`` and emits nothing; a form-encoded delivery
  (GitHub's ``application/x-www-form-urlencoded`` content type) carries the same JSON.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlencode

from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.github_deliveries import DELIVERIES, REPO, Delivery, sign
from tests.support.subscriber import RecordingSubscriber

SECRET = "webhook secret for the tests"
WEBHOOK = "/sources/github/default/shop"
KINDS = sorted({d.event for d in DELIVERIES})

MANIFESTS = f"""
apiVersion: v1
kind: Secret
metadata:
  name: github-secret
stringData:
  secretToken: "{SECRET}"
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
---
apiVersion: sources.knative.dev/v1alpha1
kind: GitHubSource
metadata:
  name: shop
spec:
  ownerAndRepository: {REPO}
  eventTypes: {json.dumps(KINDS)}
  secretToken:
    secretKeyRef:
      name: github-secret
      key: secretToken
  sink:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default
"""


def trigger(name: str, url: str, event_type: str | None = None) -> str:
    filter_ = f"  filter:\n    attributes:\n      type: {event_type}\n" if event_type else ""
    return (
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n"
        f"metadata:\n  name: {name}\nspec:\n  broker: default\n{filter_}"
        f"  subscriber:\n    uri: {url}\n"
    )


def headers(event: str, delivery_id: str, signature: str | None, content_type: str) -> dict:
    sent = {
        "content-type": content_type,
        "user-agent": "GitHub-Hookshot/tests",
        "x-github-event": event,
        "x-github-delivery": delivery_id,
        "x-github-hook-id": "460012",
    }
    if signature is not None:
        sent["x-hub-signature-256"] = signature
    return sent


async def deliver(
    mesh: RunningCemesh,
    event: str,
    body: bytes,
    *,
    signature: str | None = "",
    content_type: str = "application/json",
) -> tuple[str, int]:
    delivery_id = str(uuid.uuid4())
    signed = sign(body, SECRET) if signature == "" else signature
    response = await mesh.post_event(
        WEBHOOK, headers(event, delivery_id, signed, content_type), body
    )
    return delivery_id, response.status_code


async def test_deliveries_of_every_kind_reach_triggers_as_knative_events(tmp_path: Path) -> None:
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber() as pulls,
        RecordingSubscriber() as everything,
    ):
        await mesh.apply(MANIFESTS)
        await mesh.apply(trigger("pulls", pulls.url, "dev.knative.source.github.pull_request"))
        await mesh.apply(trigger("everything", everything.url))

        status = (
            await mesh.client.get(
                "/apis/sources.knative.dev/v1alpha1/namespaces/default/githubsources/shop"
            )
        ).json()["status"]
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", status
        assert {a["type"] for a in status["ceAttributes"]} == {
            f"dev.knative.source.github.{kind}" for kind in KINDS
        }

        # Forged and unlisted first: none of them may be emitted.
        push = DELIVERIES[0]
        for signature, body in (
            (sign(push.body, "not the secret"), push.body),
            (sign(push.body, SECRET), push.body + b"\n"),
            (None, push.body),
            (sign(push.body, SECRET).removeprefix("sha256="), push.body),
        ):
            _, status_code = await deliver(mesh, "push", body, signature=signature)
            assert status_code == 401
        _, status_code = await deliver(mesh, "gollum", b'{"pages": []}')
        assert status_code == 200

        sent: dict[str, Delivery] = {}
        for delivery in DELIVERIES:
            delivery_id, status_code = await deliver(mesh, delivery.event, delivery.body)
            assert status_code == 202, delivery.name
            sent[delivery_id] = delivery
        form_body = urlencode({"payload": DELIVERIES[1].body}).encode()
        form_id, status_code = await deliver(
            mesh,
            "pull_request",
            form_body,
            content_type="application/x-www-form-urlencoded",
        )
        assert status_code == 202

        received = await everything.wait_for(len(sent) + 1)
        by_id = {r.event.id: r.event for r in received if r.event is not None}
        assert set(by_id) == {*sent, form_id}, "each accepted delivery arrives, forged ones not"
        assert len(received) == len(sent) + 1, "and arrives once"
        for delivery_id, delivery in sent.items():
            event = by_id[delivery_id]
            attributes = dict(event.attributes)
            assert attributes.pop("type") == f"dev.knative.source.github.{delivery.event}"
            assert attributes.pop("source") == f"https://github.com/{REPO}"
            assert attributes.pop("subject", "") == delivery.subject, delivery.name
            assert attributes.pop("datacontenttype") == "application/json"
            for name, value in delivery.extensions.items():
                # binary-mode delivery: typed extensions arrive in their String form
                text = str(value).lower() if isinstance(value, bool) else str(value)
                assert attributes.get(name) == text, (delivery.name, name)
            assert event.data == delivery.body
        assert by_id[form_id].data == DELIVERIES[1].body

        expected_pulls = {i for i, d in sent.items() if d.event == "pull_request"} | {form_id}
        got = await pulls.wait_for(len(expected_pulls))
        assert {r.event.id for r in got if r.event is not None} == expected_pulls
        assert len(pulls.received) == len(expected_pulls)


async def test_a_delivery_without_its_github_headers_is_refused_and_emits_nothing(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh, RecordingSubscriber() as sink:
        await mesh.apply(MANIFESTS)
        await mesh.apply(trigger("everything", sink.url))
        body = DELIVERIES[0].body
        signed = sign(body, SECRET)
        for missing in ("x-github-event", "x-github-delivery"):
            sent = headers("push", "d-1", signed, "application/json")
            del sent[missing]
            response = await mesh.post_event(WEBHOOK, sent, body)
            assert response.status_code == 400
            assert "X-GitHub-Event and X-GitHub-Delivery" in response.json()["message"]
        not_json = b"push happened"
        response = await mesh.post_event(
            WEBHOOK, headers("push", "d-2", sign(not_json, SECRET), "application/json"), not_json
        )
        assert response.status_code == 400
        assert "not a JSON object" in response.json()["message"]
        assert sink.received == []
