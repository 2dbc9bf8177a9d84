"""The CloudEvents SQL v1 TCK (../shared/fixtures/cesql-tck): every case of every file.

An extra conformance pass (marker ``shared_conformance``); the project's own cases from the
specification are test_cesql_spec_cases.py.

Each case compiles its expression (a ``parse`` error must be raised at compile time), evaluates
it against its event, and checks both the value and the error kind. CESQL is total, so a case
with an ``error`` also states the value the expression still evaluates to; that is checked too.
The Go SDK's TCK runner skips that value check; cemesh does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.cesql import CesqlParseError, ErrorKind, compile_expression
from broker.core.events import CloudEvent
from tests.conftest import SHARED_FIXTURES, shared_fixture_dir

TCK_DIR = SHARED_FIXTURES / "cesql-tck"

pytestmark = pytest.mark.shared_conformance

# "Any valid event" for cases without one: the required attributes and a few optional ones,
# none of the extensions the TCK expects to be missing (missing, myext, ...).
BASE_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "tck-event",
    "source": "http://localhost/tck",
    "type": "dev.cemesh.tck",
    "time": "2024-05-30T12:00:00Z",
    "datacontenttype": "application/json",
}


class _Loader(yaml.SafeLoader):
    """YAML without the timestamp type: CESQL sees times as the strings the event carries."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _cases() -> list[Any]:
    if not TCK_DIR.is_dir():
        return [pytest.param(None, None, id="cesql-tck-missing")]
    params = []
    for path in sorted(TCK_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        typed = yaml.load(text, Loader=_Loader)
        # Expressions and names as written ("TRUE", "-10"), not as YAML types them.
        raw = yaml.load(text, Loader=yaml.BaseLoader)
        for case, raw_case in zip(typed["tests"], raw["tests"], strict=True):
            case = {**case, "name": raw_case["name"], "expression": raw_case["expression"]}
            params.append(pytest.param(path, case, id=f"{path.stem}::{case['name']}"))
    return params


def _event(case: dict[str, Any]) -> CloudEvent:
    attributes = dict(case["event"]) if case.get("event") else dict(BASE_EVENT)
    attributes.update(case.get("eventOverrides") or {})
    for name, value in attributes.items():
        assert value.__class__ in (str, int, bool), f"{name}: unexpected {type(value)}"
    return CloudEvent(attributes, None)


@pytest.mark.parametrize(("path", "case"), _cases())
def test_cesql_tck(path: Path | None, case: dict[str, Any] | None) -> None:
    shared_fixture_dir("cesql-tck")  # skips (or fails under CI) when the fixtures are absent
    assert path is not None and case is not None
    expression_text = case["expression"]
    error = case.get("error")
    if error == ErrorKind.PARSE:
        with pytest.raises(CesqlParseError):
            compile_expression(expression_text)
        return

    expression = compile_expression(expression_text)
    result = expression.evaluate(_event(case))

    if error is None:
        assert result.error is None, f"{expression_text!r}: unexpected error {result.error!r}"
    else:
        assert result.error is not None, f"{expression_text!r}: expected a {error} error"
        assert result.error.kind == error, f"{expression_text!r}: {result.error!r}"
    if "result" in case:
        expected = case["result"]
        assert result.value == expected and result.value.__class__ is expected.__class__, (
            f"{expression_text!r}: got {result.value!r}, expected {expected!r}"
        )
    # The filter view agrees: only an error-free Boolean true matches.
    assert expression.matches(_event(case)) is (result.error is None and result.value is True)


def test_every_tck_file_is_read() -> None:
    """Guard against a silently empty parametrisation: the TCK has its 18 files."""
    directory = shared_fixture_dir("cesql-tck")
    files = sorted(p.stem for p in directory.glob("*.yaml"))
    assert len(files) >= 18, files
    assert {"parse_errors", "like_expression", "string_builtin_functions"} <= set(files)
