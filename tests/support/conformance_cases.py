"""The CloudEvents conformance YAML cases (../shared/fixtures/cloudevents-conformance), as requests.

For the extra conformance pass; the project's own request cases are in binding_cases.py.

Each YAML document is turned into an HTTP request the way the conformance tool's
``EventToRequest`` does (see the fixture's MANIFEST.txt): binary mode puts each context attribute
in a ``ce-<name>`` header, ``datacontenttype`` in ``Content-Type``, ``Extensions`` in
``ce-<ext>``, ``TransportExtensions`` as raw headers and ``Data`` verbatim in the body;
structured mode sends a JSON envelope with ``data`` = ``Data`` parsed as JSON. Values are
trimmed as the tool does. Shared by the binding unit tests and the end-to-end broker tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SHARED_FIXTURES

FIXTURE = "cloudevents-conformance"
ROOT = SHARED_FIXTURES / FIXTURE
MISSING = "fixtures-missing"  # placeholder case: its test skips (or fails under CI)


# --- YAML documents -------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_text("utf-8"), Loader=yaml.BaseLoader) if doc]


def yaml_cases() -> list[Any]:
    """One case per (file, document index), collected without skipping the module."""
    if not (ROOT / "yaml").is_dir():
        return [pytest.param(MISSING, 0, id=MISSING)]
    cases = []
    for path in sorted((ROOT / "yaml").rglob("*.yaml")):
        relative = path.relative_to(ROOT / "yaml").as_posix()
        for index in range(len(yaml_documents(path))):
            cases.append(pytest.param(relative, index, id=f"{relative}#{index}"))
    return cases


def trim(value: str) -> str:
    return value.strip()  # the tool's strings.TrimSpace


def expected_attributes(document: dict[str, Any]) -> dict[str, str]:
    context = dict(document.get("ContextAttributes") or {})
    extensions = context.pop("Extensions", None) or {}
    attributes = {name: trim(value) for name, value in context.items()}
    attributes.update({name.strip(): trim(value) for name, value in extensions.items()})
    return {name: value for name, value in attributes.items() if value}


def binary_request(document: dict[str, Any]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers: list[tuple[bytes, bytes]] = []
    for name, value in expected_attributes(document).items():
        header = "content-type" if name == "datacontenttype" else f"ce-{name}"
        headers.append((header.encode(), value.encode("utf-8")))
    for name, value in (document.get("TransportExtensions") or {}).items():
        if trim(value):
            headers.append((name.lower().encode(), trim(value).encode("utf-8")))
    return headers, document.get("Data", "").encode("utf-8")


def structured_request(document: dict[str, Any]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    envelope: dict[str, Any] = dict(expected_attributes(document))
    data = document.get("Data", "")
    if data.strip():
        envelope["data"] = json.loads(data)
    headers = [(b"content-type", b"application/cloudevents+json; charset=UTF-8")]
    for name, value in (document.get("TransportExtensions") or {}).items():
        if trim(value):
            headers.append((name.lower().encode(), trim(value).encode("utf-8")))
    return headers, json.dumps(envelope).encode("utf-8")
