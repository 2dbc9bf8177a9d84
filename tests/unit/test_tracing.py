"""The trace-context rules (broker/core/tracing.py): only W3C-shaped traceparents are taken from
headers, whatever bytes arrive; an event's own context wins; replies inherit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core import tracing
from broker.core.events import new_event

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@given(st.lists(st.tuples(st.sampled_from([b"traceparent", b"tracestate", b"x"]), st.binary())))
def test_from_headers_never_fails_and_only_returns_valid_traceparents(
    headers: list[tuple[bytes, bytes]],
) -> None:
    context = tracing.from_headers(headers)
    assert context is None or tracing.valid_traceparent(context[0])


def test_invalid_shapes_are_refused() -> None:
    assert tracing.valid_traceparent(PARENT)
    for bad in (
        PARENT.upper(),
        "ff" + PARENT[2:],
        f"00-{'0' * 32}-00f067aa0ba902b7-01",
        f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01",
        PARENT[:-1],
        "",
    ):
        assert not tracing.valid_traceparent(bad), bad


def test_a_reply_inherits_unless_it_has_its_own() -> None:
    origin = new_event(type="t", source="/s", extensions={"traceparent": PARENT})
    reply = new_event(type="r", source="/s")
    tracing.inherit(reply, origin)
    assert reply.attributes["traceparent"] == PARENT
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    mine = new_event(type="r", source="/s", extensions={"traceparent": own})
    tracing.inherit(mine, origin)
    assert mine.attributes["traceparent"] == own
    assert tracing.http_headers(mine) == [("traceparent", own)]
    assert tracing.http_headers(new_event(type="r", source="/s")) == []
