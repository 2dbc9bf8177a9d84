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
id not all zero, flags) is ignored, never propagated. Without span export the ids pass through
unchanged; with it (:class:`Spans`, implemented over OpenTelemetry by
:mod:`broker.server.otlp`) the ingress, each delivery attempt and each reply make a span, and the
context passed on is the span's, so the trace id stays and the parents chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol

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


def replace(event: CloudEvent, context: tuple[str, str | None]) -> None:
    """Give ``event`` the trace ``context``, over any it had (its new parent span)."""
    event.attributes.pop(TRACEPARENT, None)
    stamp(event, context)


class Spans(Protocol):
    """Span export, when configured: what the data plane calls (none of it when not)."""

    def ingress(self, route: tuple[str, str, str], event: CloudEvent) -> Callable[[], None]:
        """Start the ingress span of ``event`` (a child of its context); the event now carries
        the span's context. Returns the function that ends the span."""
        ...

    def attempt(
        self, event: CloudEvent, url: str, attempt: int
    ) -> tuple[tuple[str, str | None], Callable[[int | None], None]]:
        """Start the span of one delivery attempt (a child of the event's context): the context
        to send with it, and the function ending it with the response status (None: none)."""
        ...

    def reply(self, reply: CloudEvent, answered: CloudEvent) -> None:
        """Record a reply (a child of the answered event's context); the reply carries the
        reply span's context from now on."""
        ...
