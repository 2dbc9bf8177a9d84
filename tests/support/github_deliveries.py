"""GitHub webhook deliveries written for the tests: one of each common event kind.

The payloads are small but shaped as GitHub sends them (the fields Knative's adapter reads, plus
the ``repository``/``sender`` objects every repository event carries), written from GitHub's
webhook documentation. Each :class:`Delivery` states what the GitHubSource must make of it: the
CloudEvent ``subject`` and the extensions (Knative's ``SubjectAndExtensionsFromGitHubEvent``
rules: tests/integration/test_github_deliveries.py and tests/unit/test_github_deliveries.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

OWNER = "octo-org"
NAME = "shop"
REPO = f"{OWNER}/{NAME}"
HTML = f"https://github.com/{REPO}"
API = f"https://api.github.com/repos/{REPO}"

REPOSITORY: dict[str, Any] = {
    "id": 700100,
    "node_id": "R_kgDOAAqxJA",
    "name": NAME,
    "full_name": REPO,
    "private": False,
    "owner": {"login": OWNER, "id": 9100, "type": "Organization"},
    "html_url": HTML,
    "url": API,
    "default_branch": "main",
}
SENDER: dict[str, Any] = {"login": "mona", "id": 583231, "type": "User"}
USER_BOB: dict[str, Any] = {"login": "bob", "id": 777, "type": "User"}


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery and the event attributes it must produce."""

    event: str  # X-GitHub-Event
    payload: dict[str, Any]
    subject: str  # "" when the kind has no subject
    extensions: dict[str, str | int | bool] = field(default_factory=dict)

    @property
    def name(self) -> str:
        action = self.payload.get("action")
        return f"{self.event}.{action}" if action else self.event

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload, indent=2).encode()


def sign(body: bytes, secret: str) -> str:
    """``X-Hub-Signature-256`` as GitHub computes it: HMAC-SHA256 of the raw body, hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _repo_event(**fields: Any) -> dict[str, Any]:
    return {**fields, "repository": REPOSITORY, "sender": SENDER}


COMMON = {"owner": OWNER, "repository": NAME, "sender": "mona"}

PULL_REQUEST = {
    "id": 1900001,
    "number": 17,
    "state": "open",
    "title": "Add checkout",
    "user": SENDER,
    "html_url": f"{HTML}/pull/17",
    "head": {"ref": "checkout", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"},
    "base": {"ref": "main", "sha": "2ba9b1c1a47f4a6f1b2c2d9d4b0c8a1d2e3f4a5b"},
    "merged": False,
}
ISSUE = {
    "id": 2100042,
    "number": 42,
    "title": "Checkout fails on empty cart",
    "state": "open",
    "user": USER_BOB,
    "html_url": f"{HTML}/issues/42",
}

DELIVERIES: list[Delivery] = [
    Delivery(
        "push",
        _repo_event(
            ref="refs/heads/main",
            before="2ba9b1c1a47f4a6f1b2c2d9d4b0c8a1d2e3f4a5b",
            after="6dcb09b5b57875f334f61aebed695e2e4193db5e",
            created=False,
            deleted=False,
            forced=False,
            compare=f"{HTML}/compare/2ba9b1c1a47f...6dcb09b5b578",
            commits=[{"id": "6dcb09b5b57875f334f61aebed695e2e4193db5e", "message": "Fix"}],
            pusher={"name": "mona", "email": "mona@example.com"},
        ),
        subject="2ba9b1c1a47f...6dcb09b5b578",
        extensions={
            **COMMON,
            "pusher": "mona",
            "ref": "refs/heads/main",
            "created": False,
            "deleted": False,
            "forced": False,
        },
    ),
    Delivery(
        "pull_request",
        _repo_event(action="opened", number=17, pull_request=PULL_REQUEST),
        subject="17",
        extensions={**COMMON, "action": "opened", "number": 17},
    ),
    Delivery(
        "pull_request",
        _repo_event(
            action="labeled",
            number=17,
            pull_request=PULL_REQUEST,
            label={"id": 31, "name": "needs-review", "color": "fbca04"},
        ),
        subject="17",
        extensions={**COMMON, "action": "labeled", "number": 17, "label": "needs-review"},
    ),
    Delivery(
        "pull_request",
        _repo_event(
            action="closed",
            number=17,
            pull_request={**PULL_REQUEST, "state": "closed", "merged": True},
        ),
        subject="17",
        extensions={**COMMON, "action": "closed", "number": 17},
    ),
    Delivery(
        "pull_request_review",
        _repo_event(
            action="submitted",
            review={"id": 80001, "state": "approved", "user": USER_BOB},
            pull_request=PULL_REQUEST,
        ),
        subject="80001",
        extensions={**COMMON, "action": "submitted", "review": "approved"},
    ),
    Delivery(
        "issues",
        _repo_event(action="opened", issue=ISSUE),
        subject="42",
        extensions={**COMMON, "action": "opened"},
    ),
    Delivery(
        "issues",
        _repo_event(action="assigned", issue=ISSUE, assignee=USER_BOB),
        subject="42",
        extensions={**COMMON, "action": "assigned", "assignee": "bob"},
    ),
    Delivery(
        "issue_comment",
        _repo_event(
            action="created",
            issue=ISSUE,
            comment={
                "id": 9900123,
                "body": "Reproduced.",
                "user": USER_BOB,
                "html_url": f"{HTML}/issues/42#issuecomment-9900123",
            },
        ),
        subject="42#issuecomment-9900123",
        extensions={**COMMON, "action": "created"},
    ),
    Delivery(
        "commit_comment",
        _repo_event(
            action="created",
            comment={
                "id": 55501,
                "commit_id": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "html_url": f"{HTML}/commit/6dcb09b5#commitcomment-55501",
            },
        ),
        subject="6dcb09b5#commitcomment-55501",
        extensions={**COMMON, "action": "created"},
    ),
    Delivery(
        "release",
        _repo_event(
            action="published",
            release={
                "id": 120001,
                "tag_name": "v1.4.0",
                "name": "Spring release",
                "draft": False,
                "prerelease": False,
            },
        ),
        subject="v1.4.0",
        extensions={**COMMON, "action": "published", "release": "Spring release"},
    ),
    Delivery(
        "create",
        _repo_event(ref="feature/cart", ref_type="branch", master_branch="main"),
        subject="branch",
        extensions={**COMMON, "ref": "feature/cart"},
    ),
    Delivery(
        "delete",
        _repo_event(ref="v0.9.0", ref_type="tag"),
        subject="tag",
        extensions={**COMMON, "ref": "v0.9.0"},
    ),
    Delivery(
        "fork",
        _repo_event(forkee={"id": 800200, "full_name": "bob/shop", "owner": USER_BOB}),
        subject="800200",
        extensions=COMMON,
    ),
    Delivery(
        "star",
        _repo_event(action="created", starred_at="2024-05-30T12:00:00Z"),
        subject="700100",
        extensions={**COMMON, "action": "created"},
    ),
    Delivery(
        "watch",
        _repo_event(action="started"),
        subject="700100",
        extensions={**COMMON, "action": "started"},
    ),
    Delivery(
        "label",
        _repo_event(action="created", label={"id": 32, "name": "bug", "color": "d73a4a"}),
        subject="bug",
        extensions={**COMMON, "action": "created", "label": "bug"},
    ),
    Delivery(
        "status",
        _repo_event(
            id=300400500,
            sha="6dcb09b5b57875f334f61aebed695e2e4193db5e",
            name=REPO,
            state="success",
            context="ci/tests",
            target_url="https://ci.example.com/builds/1",
        ),
        subject="6dcb09b5b57875f334f61aebed695e2e4193db5e",
        extensions={**COMMON, "state": "success", "name": REPO, "context": "ci/tests"},
    ),
    Delivery(
        "check_run",
        _repo_event(
            action="completed",
            check_run={"id": 4400001, "name": "lint", "status": "completed"},
        ),
        subject="4400001",
        extensions={**COMMON, "action": "completed"},
    ),
    Delivery(
        "workflow_run",
        _repo_event(
            action="completed",
            workflow_run={
                "id": 9100000001,  # beyond 32 bits: fine as a subject String
                "name": "CI",
                "head_branch": "main",
                "status": "completed",
                "conclusion": "success",
            },
            workflow={"id": 61, "name": "CI", "path": ".github/workflows/ci.yml"},
        ),
        subject="9100000001",
        extensions={**COMMON, "action": "completed"},
    ),
    Delivery(
        "workflow_job",
        _repo_event(
            action="queued",
            workflow_job={"id": 23000000001, "run_id": 9100000001, "name": "test"},
        ),
        subject="23000000001",
        extensions={**COMMON, "action": "queued"},
    ),
    Delivery(
        "ping",
        {
            "zen": "Design for failure.",
            "hook_id": 460012,
            "hook": {"type": "Repository", "id": 460012, "events": ["push"], "active": True},
            "repository": REPOSITORY,
            "sender": SENDER,
        },
        subject="460012",
        extensions=COMMON,
    ),
    Delivery(
        "organization",
        {
            "action": "member_added",
            "membership": {"user": USER_BOB, "role": "member"},
            "organization": {"login": OWNER, "id": 9100},
            "sender": SENDER,
        },
        subject="member_added",
        extensions={"owner": OWNER, "sender": "mona", "action": "member_added"},
    ),
]
