"""A logger with fixed fields keeps each call's own fields too (Python 3.11's LoggerAdapter
dropped them: a source's ``extra={"error": ...}`` never reached the log)."""

from __future__ import annotations

import logging

import pytest

from broker.core.logging import ContextAdapter


def test_a_context_logger_keeps_the_fields_of_the_call(caplog: pytest.LogCaptureFixture) -> None:
    log = ContextAdapter(logging.getLogger("tests.context"), {"source": "PingSource/ns/tick"})
    with caplog.at_level(logging.WARNING, logger="tests.context"):
        log.warning("tick not delivered", extra={"error": "sink answered 503"})
        log.warning("no extra at all")
    first, second = caplog.records
    assert (first.source, first.error) == ("PingSource/ns/tick", "sink answered 503")  # type: ignore[attr-defined]
    assert second.source == "PingSource/ns/tick"  # type: ignore[attr-defined]


def test_the_call_wins_over_the_context_on_a_clash(caplog: pytest.LogCaptureFixture) -> None:
    log = ContextAdapter(logging.getLogger("tests.context"), {"source": "a"})
    with caplog.at_level(logging.INFO, logger="tests.context"):
        log.info("x", extra={"source": "b"})
    assert caplog.records[0].source == "b"  # type: ignore[attr-defined]
