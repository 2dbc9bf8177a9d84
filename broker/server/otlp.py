"""Span export over OTLP/HTTP (the optional ``otlp`` extra): :class:`OtlpSpans` implements
:class:`broker.core.tracing.Spans` with the OpenTelemetry SDK.

Set ``CEMESH_OTLP_TRACES_ENDPOINT`` (say ``http://127.0.0.1:4318/v1/traces``) and install
``cemesh[otlp]``; then the ingress makes a ``cemesh.ingress`` span per accepted event, each
delivery attempt a ``cemesh.deliver`` span (attribute ``cemesh.attempt``, the URL, the response
status), each reply a ``cemesh.reply`` span, all in the trace of the request that brought the
event (a new trace when it brought none). Spans go out in batches from the SDK's own thread, so
the event loop never waits for the collector. Without the setting nothing here is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.core import tracing
from broker.core.errors import InvalidConfig
from broker.core.events import CloudEvent

EXPORT_DELAY_MS = 500  # how long the batch processor gathers spans before sending them


class OtlpSpans:
    """Spans made with OpenTelemetry and exported to one OTLP/HTTP traces endpoint."""

    def __init__(self, endpoint: str) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise InvalidConfig(
                "CEMESH_OTLP_TRACES_ENDPOINT is set but the OpenTelemetry exporter is not "
                "installed: pip install 'cemesh[otlp]'"
            ) from exc
        self._trace = trace
        self._kinds = trace.SpanKind
        self.provider = TracerProvider(resource=Resource.create({"service.name": "cemesh"}))
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=EXPORT_DELAY_MS
            )
        )
        self._tracer = self.provider.get_tracer("cemesh")
        self._propagator = TraceContextTextMapPropagator()

    def _parent(self, event: CloudEvent) -> Any:
        context = tracing.context_of(event)
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
        kind, namespace, name = route
        span = self._tracer.start_span(
            "cemesh.ingress",
            context=self._parent(event),
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
        span = self._tracer.start_span(
            "cemesh.deliver",
            context=self._parent(event),
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
        span = self._tracer.start_span(
            "cemesh.reply",
            context=self._parent(answered),
            kind=self._kinds.INTERNAL,
            attributes={"cloudevents.event_id": reply.id, "cloudevents.event_type": reply.type},
        )
        tracing.replace(reply, self._context_of(span))
        span.end()

    def shutdown(self) -> None:
        """Send what is still batched, then stop the exporter."""
        self.provider.shutdown()
