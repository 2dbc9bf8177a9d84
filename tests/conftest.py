"""Test-wide fixtures: where the shared fixture material lives, and how its absence is handled.

``../shared/fixtures`` (beside the checkout) holds material written by others (CloudEvents
conformance cases, GitHub payloads, ...). On a user's machine it may be absent: those tests skip
and say why. Under CI (``CI=true``) it is always present, so its absence fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.servers.nats",
    "tests.support.servers.pubsub",
    "tests.support.servers.kafka",
    "tests.support.servers.redis",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


def shared_fixture_dir(*parts: str) -> Path:
    """Path to a folder of ``../shared/fixtures``; skip (or fail under CI) when it is absent."""
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.is_dir():
        message = f"shared fixtures not found at {path} (they live beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; under CI they must be present", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_fixtures() -> Path:
    """The ``../shared/fixtures`` folder (skips, or fails under CI, when absent)."""
    return shared_fixture_dir()
