"""The project's CloudEvents HTTP request cases (tests/support/binding_cases.py) at the binding.

Each request is handed to :func:`broker.core.binding.parse_request` as an ASGI server hands it over
(header names lower-cased): a valid case yields exactly its events (attributes and data bytes),
an invalid one raises a :class:`~broker.core.errors.BindingError` whose message names the fault.
The same table runs through a Broker in tests/e2e/test_binding_cases_through_broker.py.
"""

from __future__ import annotations

import pytest

from broker.core.binding import parse_request
from broker.core.errors import BindingError
from tests.support.binding_cases import CASES, INVALID, VALID, BindingCase


def asgi_headers(case: BindingCase) -> list[tuple[bytes, bytes]]:
    """Header names lower-cased, as an ASGI server passes them on."""
    return [(name.lower().encode("latin-1"), value) for name, value in case.headers]


@pytest.mark.parametrize("case", [c.param() for c in VALID])
def test_a_valid_request_yields_exactly_its_events(case: BindingCase) -> None:
    events = parse_request(asgi_headers(case), case.body)

    assert [e.attributes for e in events] == [e.attributes for e in case.events]
    assert [e.data for e in events] == [e.data for e in case.events]


@pytest.mark.parametrize("case", [c.param() for c in INVALID])
def test_an_invalid_request_is_refused_naming_the_fault(case: BindingCase) -> None:
    with pytest.raises(BindingError) as refused:
        parse_request(asgi_headers(case), case.body)

    assert case.error is not None
    assert case.error in refused.value.message, refused.value.message


def test_the_table_covers_every_content_mode_both_ways() -> None:
    """Guard: the table keeps valid and invalid cases of binary, structured and batch mode."""
    for mode in ("binary", "structured", "batch"):
        of_mode = [c for c in CASES if c.name.startswith(f"{mode}:")]
        assert any(c.valid for c in of_mode) and any(not c.valid for c in of_mode), mode
    assert len({e.attributes["id"] for c in VALID for e in c.events}) == sum(
        len(c.events) for c in VALID
    ), "each valid event has its own id"
