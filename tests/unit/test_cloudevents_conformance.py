"""The CloudEvents conformance material (github.com/cloudevents/conformance) through
broker.core.binding.

An extra conformance pass (marker ``shared_conformance``): the project's own request cases are
tests/support/binding_cases.py, run by tests/unit/test_binding_cases.py.

Two sources, both in ``../shared/fixtures/cloudevents-conformance`` (see its MANIFEST.txt):

- every YAML document under ``yaml/``, turned into an HTTP request the way the conformance
  tool's ``EventToRequest`` does it: binary mode puts each context attribute in a ``ce-<name>``
  header, ``datacontenttype`` in ``Content-Type``, each of ``Extensions`` in ``ce-<ext>``,
  ``TransportExtensions`` as raw headers and ``Data`` verbatim in the body; structured mode
  sends a JSON envelope of the attributes and extensions with ``data`` = ``Data`` parsed as
  JSON. Like the tool (``addHeader``: ``strings.TrimSpace``, empty values skipped), every
  value is trimmed first, which is what turns the YAML block scalar ``{"othervalue": 5}\\n``
  into a legal header value. The request must parse into an event with exactly those
  attributes and that data (C25, C29-C31, C33, C43, C49-C59, C83, K31-K34);
- every Scenario of ``features/http-protocol-binding.feature`` (a tiny Gherkin reader below:
  request text, attribute table, data), Scenario Outlines expanded per Examples row.

The YAML is read with ``yaml.BaseLoader`` so every value stays a string (``specversion: 1.0``
would otherwise become a float and ``time`` a datetime).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest

from broker.core import binding
from broker.core.events import CloudEvent
from tests.conftest import shared_fixture_dir
from tests.support.conformance_cases import (
    FIXTURE,
    MISSING,
    ROOT,
    binary_request,
    expected_attributes,
    structured_request,
    yaml_cases,
    yaml_documents,
)

pytestmark = pytest.mark.shared_conformance


@pytest.mark.parametrize(("relative", "index"), yaml_cases())
def test_conformance_yaml_document_parses_to_its_attributes_and_data(
    relative: str, index: int
) -> None:
    """Each conformance YAML event, sent as the tool sends it, parses into exactly that event.

    Binary: body is ``data`` unchanged (C30), ``Content-Type`` is ``datacontenttype`` (C29),
    no ``Content-Type`` means none (C33), extensions are ``ce-`` headers (C31). Structured:
    JSON ``data`` is taken as a JSON value (C55, C59). 1.0 and 0.3 both accepted and kept
    (K31, K32, C83); the transport header ``user-agent`` is not an attribute.
    """
    root = shared_fixture_dir(FIXTURE)
    document = yaml_documents(root / "yaml" / relative)[index]
    mode = document.get("Mode") or "binary"
    expected = expected_attributes(document)

    if mode == "binary":
        headers, body = binary_request(document)
    else:
        assert mode == "structured", f"unknown Mode {mode!r}"
        headers, body = structured_request(document)
    (event,) = binding.parse_request(headers, body)

    assert event.attributes == expected
    data = document.get("Data", "")
    if mode == "binary":
        assert event.data == (data.encode("utf-8") or None)
    elif data.strip():
        assert event.data is not None
        assert orjson.loads(event.data) == json.loads(data)
    else:
        assert event.data is None


def test_conformance_yaml_files_are_all_listed_in_the_manifest() -> None:
    """Guard against a silently shrunken fixture: the manifest's document counts are met."""
    root = shared_fixture_dir(FIXTURE)
    counts: dict[str, int] = {}
    for line in (root / "MANIFEST.txt").read_text("utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        local, _repo_path, _blob, _commit, docs = line.split()
        if local.startswith("conformance/yaml/"):
            counts[local.removeprefix("conformance/yaml/")] = int(docs)
    found = {
        path.relative_to(root / "yaml").as_posix(): len(yaml_documents(path))
        for path in (root / "yaml").rglob("*.yaml")
    }
    assert found == counts


# --- Gherkin feature ------------------------------------------------------------------------


class Scenario:
    """One expanded scenario: the raw HTTP request, the attribute table and the JSON data."""

    def __init__(self, name: str, request: str, attributes: dict[str, str], data: str) -> None:
        self.name = name
        self.request = request
        self.attributes = attributes
        self.data = data


def _docstring(lines: list[str], start: int) -> tuple[str, int]:
    """The doc string opening at ``lines[start]``; Gherkin strips the opening's indentation."""
    opening = lines[start]
    indent = len(opening) - len(opening.lstrip())
    body: list[str] = []
    index = start + 1
    while lines[index].strip() != '"""':
        line = lines[index]
        body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
        index += 1
    return "\n".join(body), index + 1


def _table(lines: list[str], start: int) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    index = start
    while index < len(lines) and lines[index].strip().startswith("|"):
        rows.append([cell.strip() for cell in lines[index].strip().strip("|").split("|")])
        index += 1
    return rows, index


def _scenarios(text: str) -> list[Scenario]:
    lines = text.splitlines()
    scenarios: list[Scenario] = []
    index = 0
    name = request = data = ""
    attributes: list[list[str]] = []
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith(("Scenario:", "Scenario Outline:")):
            name = stripped.split(":", 1)[1].strip()
            request, data, attributes = "", "", []
            index += 1
        elif stripped.startswith("Given an HTTP request"):
            request, index = _docstring(lines, index + 1)
        elif stripped.startswith("Then the attributes are"):
            attributes, index = _table(lines, index + 1)
        elif stripped.startswith("And the data is equal to the following JSON"):
            data, index = _docstring(lines, index + 1)
            if not _followed_by_examples(lines, index):
                scenarios.append(Scenario(name, request, dict(attributes[1:]), data))
        elif stripped.startswith("Examples:"):
            examples, index = _table(lines, index + 1)
            header, rows = examples[0], examples[1:]
            for row in rows:
                values = dict(zip(header, row, strict=True))

                def fill(template: str, values: dict[str, str] = values) -> str:
                    return re.sub(r"<(\w+)>", lambda match: values[match.group(1)], template)

                table = {fill(key): fill(value) for key, value in attributes[1:]}
                scenarios.append(Scenario(fill(name), fill(request), table, fill(data)))
        else:
            index += 1
    return scenarios


def _followed_by_examples(lines: list[str], index: int) -> bool:
    for line in lines[index:]:
        if line.strip():
            return line.strip().startswith("Examples:")
    return False


def _feature_cases() -> list[Any]:
    path = ROOT / "features" / "http-protocol-binding.feature"
    if not path.is_file():
        return [pytest.param(MISSING, id=MISSING)]
    return [pytest.param(s.name, id=s.name) for s in _scenarios(path.read_text("utf-8"))]


def _http_request(text: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """ASGI-style headers (names lower-cased, as a server delivers them) and the body."""
    head, _, body = text.partition("\n\n")
    request_line, *header_lines = head.split("\n")
    assert request_line.split()[0] == "POST"
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower().encode(), value.strip().encode("utf-8")))
    raw_body = body.encode("utf-8")
    declared = dict(headers).get(b"content-length")
    if declared is not None:
        # the feature's Content-Length must match what this reader extracted
        assert int(declared) == len(raw_body), (int(declared), raw_body)
    return headers, raw_body


@pytest.mark.parametrize("name", _feature_cases())
def test_conformance_feature_scenario_parses_as_it_says(name: str) -> None:
    """Scenarios of http-protocol-binding.feature: binary mode with a JSON ``Content-Type``
    (C29, C30) and structured mode, with and without a charset parameter (C25, C49, C55)."""
    root = shared_fixture_dir(FIXTURE)
    text = (root / "features" / "http-protocol-binding.feature").read_text("utf-8")
    (scenario,) = [s for s in _scenarios(text) if s.name == name]
    headers, body = _http_request(scenario.request)

    events: list[CloudEvent] = binding.parse_request(headers, body)

    assert len(events) == 1
    assert events[0].attributes == scenario.attributes
    assert events[0].data is not None
    assert orjson.loads(events[0].data) == json.loads(scenario.data)


def test_conformance_feature_has_the_expected_scenarios() -> None:
    """The reader found every Examples row of both Scenario Outlines (2 binary + 2 structured)."""
    root = shared_fixture_dir(FIXTURE)
    text = (root / "features" / "http-protocol-binding.feature").read_text("utf-8")
    names = [s.name for s in _scenarios(text)]
    assert names == [
        "Binary content mode (application/json)",
        "Binary content mode (application/json; charset=utf-8)",
        "Structured content mode (application/cloudevents+json)",
        "Structured content mode (application/cloudevents+json; charset=utf-8)",
    ]
