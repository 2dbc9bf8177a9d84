"""GitHubSource's pure parts: signature check (issue 4, K200), Knative's subject and extensions
(K199), the event (K197, K198) and admission (issue 4: bad specs name the field)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from broker.core.errors import InvalidResource
from broker.features.sources.github import (
    event_source,
    event_type,
    signature_valid,
    subject_and_extensions,
    to_cloudevent,
    webhook_url,
)
from broker.server.features import admit

# The test vector of GitHub's webhook documentation ("Validating webhook deliveries").
SECRET = b"It's a Secret to Everybody"
PAYLOAD = b"Hello, World!"
SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_signature_matches_githubs_test_vector() -> None:
    assert signature_valid(SECRET, PAYLOAD, SIGNATURE)
    assert signature_valid(SECRET, PAYLOAD, SIGNATURE.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        (b"wrong secret", PAYLOAD, SIGNATURE),
        (SECRET, PAYLOAD + b"!", SIGNATURE),
        (SECRET, PAYLOAD, SIGNATURE.replace("sha256=", "sha1=")),
        (SECRET, PAYLOAD, SIGNATURE.removeprefix("sha256=")),
        (SECRET, PAYLOAD, "sha256="),
        (SECRET, PAYLOAD, ""),
        (SECRET, PAYLOAD, None),
    ],
)
def test_forged_or_missing_signature_is_refused(
    secret: bytes, body: bytes, header: str | None
) -> None:
    assert not signature_valid(secret, body, header)


def test_sha1_signature_only_counts_without_sha256() -> None:
    """GitHub Enterprise without SHA-256 sends X-Hub-Signature only; with both, SHA-256 rules."""
    sha1 = "sha1=" + hmac.new(SECRET, PAYLOAD, hashlib.sha1).hexdigest()
    assert signature_valid(SECRET, PAYLOAD, None, sha1)
    assert not signature_valid(SECRET, PAYLOAD, "sha256=00", sha1)


@pytest.mark.parametrize(
    ("event", "payload", "subject", "extensions"),
    [
        (
            "pull_request",
            {
                "action": "opened",
                "number": 2,
                "pull_request": {"number": 2},
                "repository": {"name": "Hello-World", "owner": {"login": "Codertocat"}},
                "sender": {"login": "Codertocat"},
            },
            "2",
            {
                "owner": "Codertocat",
                "repository": "Hello-World",
                "sender": "Codertocat",
                "action": "opened",
                "number": 2,
            },
        ),
        (
            "push",
            {
                "ref": "refs/tags/simple-tag",
                "compare": "https://github.com/Codertocat/Hello-World/compare/6113728f27ae...000000000000",
                "created": False,
                "deleted": True,
                "forced": False,
                "pusher": {"name": "Codertocat"},
            },
            "6113728f27ae...000000000000",
            {
                "pusher": "Codertocat",
                "ref": "refs/tags/simple-tag",
                "created": False,
                "deleted": True,
                "forced": False,
            },
        ),
        (
            "issues",
            {"action": "labeled", "issue": {"number": 1}, "label": {"name": "bug"}},
            "1",
            {"action": "labeled", "label": "bug"},
        ),
        (
            "issue_comment",
            {"comment": {"html_url": "https://github.com/o/r/issues/1#issuecomment-492700400"}},
            "1#issuecomment-492700400",
            {},
        ),
        (
            "release",
            {"release": {"tag_name": "0.0.1", "name": "First"}},
            "0.0.1",
            {"release": "First"},
        ),
        ("create", {"ref_type": "tag", "ref": "simple-tag"}, "tag", {"ref": "simple-tag"}),
        ("ping", {"hook_id": 30, "zen": "Keep it logically awesome."}, "30", {}),
        ("check_run", {"check_run": {"id": 128620228}}, "128620228", {}),
        ("status", {"sha": "abc", "state": "success"}, "abc", {"state": "success"}),
        (
            "installation",
            {"installation": {"id": 2**40}},
            str(2**40),
            {"installation": str(2**40)},
        ),  # beyond CloudEvents' 32-bit Integer: a string
        ("unknown_kind", {"action": "x"}, "", {"action": "x"}),
    ],
)
def test_subject_and_extensions_as_knative_computes_them(
    event: str, payload: dict[str, Any], subject: str, extensions: dict[str, Any]
) -> None:
    """K199: ghsrc pkg/common/events.go SubjectAndExtensionsFromGitHubEvent."""
    assert subject_and_extensions(event, payload) == (subject, extensions)


def test_the_event_carries_delivery_id_repository_url_and_the_payload_unchanged() -> None:
    """K197 type, K198 source / id / data (application/json)."""
    body = b'{ "action": "closed",\n  "number": 5, "pull_request": {"number": 5} }'
    event = to_cloudevent(
        "pull_request",
        "d-1",
        event_source("o/r"),
        body,
        {"number": 5, "action": "closed", "pull_request": {"number": 5}},
    )
    assert event.type == event_type("pull_request") == "dev.knative.source.github.pull_request"
    assert event.source == "https://github.com/o/r"
    assert event.id == "d-1"
    assert event.data == body
    assert event.datacontenttype == "application/json"
    assert event.attributes["subject"] == "5"
    assert event.attributes["specversion"] == "1.0"


def test_webhook_url_follows_secure() -> None:
    base = "http://cemesh.example.com:8080"
    assert webhook_url(base, "ns", "gh") == f"{base}/sources/github/ns/gh"
    assert webhook_url(base, "ns", "gh", True).startswith("https://cemesh.example.com:8080/")
    assert webhook_url("https://x", "ns", "gh", False) == "http://x/sources/github/ns/gh"


def github_source(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ownerAndRepository": "Codertocat/Hello-World",
        "eventTypes": ["pull_request"],
        "secretToken": {"secretKeyRef": {"name": "gh", "key": "secretToken"}},
        "sink": {"uri": "http://sink.example.com/"},
    }
    base.update(spec)
    return {
        "apiVersion": "sources.knative.dev/v1alpha1",
        "kind": "GitHubSource",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def test_admission_accepts_knatives_example_and_an_organization() -> None:
    admit(github_source())
    admit(
        github_source(
            ownerAndRepository="knative",
            eventTypes=["push", "issues", "ping"],
            accessToken={"secretKeyRef": {"name": "gh", "key": "accessToken"}},
            githubAPIURL="https://github.example.com/api/v3",
            secure=True,
        )
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ownerAndRepository": None}, "spec.ownerAndRepository"),
        ({"ownerAndRepository": "a/b/c"}, "spec.ownerAndRepository"),
        ({"ownerAndRepository": "owner/"}, "spec.ownerAndRepository"),
        ({"ownerAndRepository": "/repo"}, "spec.ownerAndRepository"),
        ({"eventTypes": None}, "spec.eventTypes"),
        ({"eventTypes": []}, "spec.eventTypes"),
        ({"eventTypes": "push"}, "spec.eventTypes"),
        ({"eventTypes": ["push", "pushed"]}, "spec.eventTypes[1]"),
        ({"secretToken": None}, "spec.secretToken.secretKeyRef"),
        ({"secretToken": {}}, "spec.secretToken.secretKeyRef"),
        ({"secretToken": {"secretKeyRef": {"key": "k"}}}, "spec.secretToken.secretKeyRef.name"),
        ({"secretToken": {"secretKeyRef": {"name": "n"}}}, "spec.secretToken.secretKeyRef.key"),
        ({"accessToken": {"secretKeyRef": {}}}, "spec.accessToken.secretKeyRef.name"),
        ({"githubAPIURL": "ftp://x"}, "spec.githubAPIURL"),
        ({"secure": "yes"}, "spec.secure"),
        ({"sink": None}, "spec.sink"),
    ],
)
def test_admission_refuses_bad_specs_naming_the_field(spec: dict[str, Any], field: str) -> None:
    """Issue 4: a bad spec is refused at apply time naming the field (K201 shape)."""
    with pytest.raises(InvalidResource) as caught:
        admit(github_source(**spec))
    assert caught.value.field == field
