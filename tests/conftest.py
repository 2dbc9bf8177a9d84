"""Test-wide fixtures, and the extra conformance pass over ``../shared/fixtures``.

Every area is tested by the project's own cases, in this repository. ``../shared/fixtures``
(beside the checkout, material collected by others: the CloudEvents conformance cases, the CESQL
TCK, GitHub's example payloads, Kubernetes recordings from real clusters, the Knative docs'
samples) feeds an *extra* conformance pass over the same code. Its tests carry the marker
``shared_conformance`` and read the folder through :func:`shared_fixture_dir`:

- folder present: they run with the rest;
- folder absent: they are deselected (not skipped) and the run's header says how many, so a
  fresh clone has no skips from them;
- folder absent under CI (``CI=true``): they run and fail, because CI must run the pass.
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
    "tests.support.servers.kube_apiserver",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
SHARED_MARKER = "shared_conformance"


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_fixture_dir(*parts: str) -> Path:
    """Path to a folder of ``../shared/fixtures``; skip (or fail under CI) when it is absent.

    Tests that call this carry ``@pytest.mark.shared_conformance``, so that without the folder
    they are deselected before they run; the skip is only reached when one is run by node id.
    """
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.is_dir():
        message = f"shared fixtures not found at {path} (they live beside the checkout)"
        if _under_ci():
            pytest.fail(f"{message}; under CI they must be present", pytrace=False)
        pytest.skip(message)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``../shared/fixtures`` (and outside CI), deselect the extra conformance pass."""
    if SHARED_FIXTURES.is_dir() or _under_ci():
        return
    shared = [item for item in items if item.get_closest_marker(SHARED_MARKER)]
    if shared:
        config.hook.pytest_deselected(items=shared)
        items[:] = [item for item in items if not item.get_closest_marker(SHARED_MARKER)]
    config.stash[_DESELECTED] = len(shared)


_DESELECTED = pytest.StashKey[int]()


def pytest_report_header(config: pytest.Config) -> str:
    if SHARED_FIXTURES.is_dir():
        return f"extra conformance pass: {SHARED_FIXTURES} present, its tests run"
    if _under_ci():
        return f"extra conformance pass: {SHARED_FIXTURES} absent under CI: its tests fail"
    return f"extra conformance pass: {SHARED_FIXTURES} absent, its tests are deselected"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    deselected = terminalreporter.config.stash.get(_DESELECTED, 0)
    if deselected:
        terminalreporter.write_line(
            f"extra conformance pass: {deselected} test(s) deselected, "
            f"{SHARED_FIXTURES} not found (the project's own tests cover the same areas)"
        )
