"""Span export over OTLP/HTTP (the optional ``otlp`` extra): :class:`OtlpSpans` implements
:class:`broker.core.tracing.Spans` with the OpenTelemetry SDK.

Set ``CEMESH_OTLP_TRACES_ENDPOINT`` (say ``http://127.0.0.1:4318/v1/traces``) and install
``cemesh[otlp]``; then the ingress makes a ``cemesh.ingress`` span per accepted event, each
delivery attempt a ``cemesh.deliver`` span (attribute ``cemesh.attempt``, the URL, the response
status), each reply a ``cemesh.reply`` span, all in the trace of the request that brought the
event (a new trace when it brought none). Spans go out in batches from the SDK's own thread, so
the event loop never waits for the collector. Without the setting nothing here is imported.

Sampling follows Knative's ``sample-rate`` (``CEMESH_OTLP_TRACES_SAMPLE_RATE``) with the rules of
OpenTelemetry's ``ParentBased(TraceIdRatioBased(rate))``: an event whose context says sampled or
not is followed as it says, and a new trace is recorded when its trace id falls under the SDK's
bound for ``rate``. The decision is taken here, before the SDK is called, because the SDK's
unrecorded spans are not cheap (its context and propagator machinery cost about 40 us per span
on the bench machine, most of a recorded span's event-loop cost): a trace that is not recorded
costs a flag test, and a new one gets its ids and the flag "not sampled" directly, so the context
carried on (the W3C headers, the ``traceparent`` extension) is always there and the rest of the
trace agrees. Recorded spans are the SDK's (``ALWAYS_ON`` for it: the decision is taken).
Figures: ``bench/metrics_overhead.py --feature tracing [--sample-rate R]``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from broker.core import tracing
from broker.core.errors import InvalidConfig
from broker.core.events import CloudEvent

EXPORT_DELAY_MS = 500  # how long the batch processor gathers spans before sending them
_LOW_64 = (1 << 64) - 1  # the trace id bits TraceIdRatioBased compares with its bound


def _end_nothing(*_: object) -> None:
    """The end of a span that is not recorded."""


def sampled(traceparent: str) -> bool:
    """The sampled flag (bit 0 of the flags) of a valid traceparent."""
    return bool(int(traceparent[-2:], 16) & 1)


def unrecorded_context(trace_id: int) -> tuple[str, None]:
    """A new context of trace ``trace_id``, marked not sampled (a random, non-zero span id)."""
    return f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-00", None


class OtlpSpans:
    """Spans made with OpenTelemetry and exported to one OTLP/HTTP traces endpoint."""

    def __init__(self, endpoint: str, sample_rate: float = 1.0) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise InvalidConfig(
                "CEMESH_OTLP_TRACES_ENDPOINT is set but the OpenTelemetry exporter is not "
                "installed: pip install 'cemesh[otlp]'"
            ) from exc
        self._trace = trace
        self._kinds = trace.SpanKind
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "cemesh"}),
            sampler=ALWAYS_ON,  # asked only for spans to record: the decision is _new_trace
        )
        self._bound = TraceIdRatioBased.get_bound_for_rate(sample_rate)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=EXPORT_DELAY_MS
            )
        )
        self._tracer = self.provider.get_tracer("cemesh")
        self._propagator = TraceContextTextMapPropagator()

    def _new_trace(self) -> tuple[bool, int]:
        """Whether a new trace is recorded, and its trace id (random, non-zero)."""
        trace_id = random.getrandbits(128) or 1
        return (trace_id & _LOW_64) < self._bound, trace_id

    def _parent(self, context: tuple[str, str | None] | None) -> Any:
        """The SDK's parent context for an event's trace ``context`` (read once by the caller)."""
        if context is None:
            return None
        carrier = {tracing.TRACEPARENT: context[0]}
        if context[1]:
            carrier[tracing.TRACESTATE] = context[1]
        return self._propagator.extract(carrier)

    def _context_of(self, span: Any) -> tuple[str, str | None]:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier[tracing.TRACEPARENT], carrier.get(tracing.TRACESTATE)

    def ingress(self, route: tuple[str, str, str], event: CloudEvent) -> Callable[[], None]:
        context = tracing.context_of(event)
        if context is None:
            recorded, trace_id = self._new_trace()
            if not recorded:
                tracing.replace(event, unrecorded_context(trace_id))
                return _end_nothing
        elif not sampled(context[0]):
            return _end_nothing  # the sender's context goes on as it is
        kind, namespace, name = route
        span = self._tracer.start_span(
            "cemesh.ingress",
            context=self._parent(context),
            kind=self._kinds.SERVER,
            attributes={
                f"cemesh.{kind}": f"{namespace}/{name}",
                "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type,
            },
        )
        tracing.replace(event, self._context_of(span))
        return span.end

    def attempt(
        self, event: CloudEvent, url: str, attempt: int
    ) -> tuple[tuple[str, str | None], Callable[[int | None], None]]:
        context = tracing.context_of(event)
        if context is None:
            # Not from this ingress (a bus another producer wrote to): this attempt alone.
            recorded, trace_id = self._new_trace()
            if not recorded:
                return unrecorded_context(trace_id), _end_nothing
        elif not sampled(context[0]):
            return context, _end_nothing
        span = self._tracer.start_span(
            "cemesh.deliver",
            context=self._parent(context),
            kind=self._kinds.CLIENT,
            attributes={
                "cemesh.attempt": attempt,
                "url.full": url,
                "cloudevents.event_id": event.id,
            },
        )

        def end(status: int | None) -> None:
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            span.end()

        return self._context_of(span), end

    def reply(self, reply: CloudEvent, answered: CloudEvent) -> None:
        context = tracing.context_of(answered)
        if context is not None and not sampled(context[0]):
            return  # the reply inherited the unrecorded context (or keeps its own)
        span = self._tracer.start_span(
            "cemesh.reply",
            context=self._parent(context),
            kind=self._kinds.INTERNAL,
            attributes={"cloudevents.event_id": reply.id, "cloudevents.event_type": reply.type},
        )
        tracing.replace(reply, self._context_of(span))
        span.end()

    def shutdown(self) -> None:
        """Send what is still batched, then stop the exporter."""
        self.provider.shutdown()
