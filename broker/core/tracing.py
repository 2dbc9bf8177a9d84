"""Trace context propagation (W3C Trace Context and the CloudEvents distributed-tracing
extension): one trace id from the ingress, through the bus, to every delivery and into replies.

The CloudEvents extension attributes ``traceparent`` and ``tracestate`` travel inside the event,
so they cross every bus unaltered. Three rules, all pure:

- at the ingress, an event without ``traceparent`` takes the request's W3C ``traceparent``
  (and ``tracestate``) HTTP headers (:func:`from_headers`, :func:`stamp`); an event that carries
  its own keeps it;
- a delivery sends the event's context as the W3C HTTP headers too (:func:`http_headers`), so a
  subscriber instrumented for HTTP tracing joins the same trace;
- a reply without a context of its own inherits the one of the event it answers
  (:func:`inherit`), so the reply's deliveries stay in the trace.

A ``traceparent`` that is not W3C-shaped (version, 32-hex trace id not all zero, 16-hex parent
id not all zero, flags) is ignored, never propagated. cemesh makes no spans of its own here: the
ids pass through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from broker.core.events import CloudEvent

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT_HEADER = b"traceparent"
_TRACESTATE_HEADER = b"tracestate"
_SHAPE = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_MAX_TRACESTATE = 512  # W3C: at most 32 members; bounded so a header cannot bloat events


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a usable W3C traceparent (version ff and zero ids are invalid)."""
    match = _SHAPE.fullmatch(value)
    return (
        match is not None
        and not value.startswith("ff")
        and match.group(1) != "0" * 32
        and match.group(2) != "0" * 16
    )


def trace_id(traceparent: str) -> str:
    """The trace id of a valid traceparent."""
    return traceparent[3:35]


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str | None] | None:
    """The request's (traceparent, tracestate) when it has a valid traceparent header."""
    parent: str | None = None
    state: str | None = None
    for name, value in headers:
        if name == _TRACEPARENT_HEADER:
            parent = value.decode("latin-1").strip()
        elif name == _TRACESTATE_HEADER:
            state = value.decode("latin-1").strip()[:_MAX_TRACESTATE] or None
    if parent is None or not valid_traceparent(parent):
        return None
    return parent, state


def stamp(event: CloudEvent, context: tuple[str, str | None]) -> None:
    """Give ``event`` the trace ``context`` unless it carries a valid one of its own."""
    own = event.attributes.get(TRACEPARENT)
    if isinstance(own, str) and valid_traceparent(own):
        return
    parent, state = context
    event.attributes[TRACEPARENT] = parent
    if state:
        event.attributes[TRACESTATE] = state
    else:
        event.attributes.pop(TRACESTATE, None)


def context_of(event: CloudEvent) -> tuple[str, str | None] | None:
    """The event's valid trace context, if any."""
    parent = event.attributes.get(TRACEPARENT)
    if not isinstance(parent, str) or not valid_traceparent(parent):
        return None
    state = event.attributes.get(TRACESTATE)
    return parent, state if isinstance(state, str) and state else None


def inherit(reply: CloudEvent, origin: CloudEvent) -> None:
    """A reply without a valid context of its own takes the context of the event it answers."""
    context = context_of(origin)
    if context is not None:
        stamp(reply, context)


def http_headers(event: CloudEvent) -> list[tuple[str, str]]:
    """The W3C headers carrying the event's trace context (none without one)."""
    context = context_of(event)
    if context is None:
        return []
    parent, state = context
    return [("traceparent", parent), ("tracestate", state)] if state else [("traceparent", parent)]
