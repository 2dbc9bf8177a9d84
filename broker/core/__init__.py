"""The shared core: what every other package may use, and which uses nothing of theirs.

- :mod:`~broker.core.events`: the ``CloudEvent`` value (attributes + exact data bytes), event
  filters as callables, the extension names cemesh uses.
- :mod:`~broker.core.binding` (with :mod:`~broker.core.binding_json` and
  :mod:`~broker.core.binding_attributes`): the CloudEvents HTTP binding, strict, both directions.
- :mod:`~broker.core.spec`: the frozen runtime specs the control plane hands the data plane
  (``Snapshot``, ``BrokerSpec``, ``TriggerSpec``, ``DeliveryPolicy``) and topic/group names.
- :mod:`~broker.core.ingress_authorization`: the EventPolicy decision the ingress runs (pure).
- :mod:`~broker.core.tracing`: trace context (W3C headers, the CloudEvents tracing extension)
  carried from the ingress to deliveries and replies (pure).
- :mod:`~broker.core.errors`: the one exception tree; :mod:`~broker.core.http_status`: its one
  mapping to HTTP status codes.
- :mod:`~broker.core.config`: every setting (``CEMESH_*``) with its default.
- :mod:`~broker.core.labels`: Kubernetes label keys, values and selectors (one rule).
- :mod:`~broker.core.asgi`: the raw ASGI names and the one body reader.
- :mod:`~broker.core.durations`, :mod:`~broker.core.memo`, :mod:`~broker.core.metrics`,
  :mod:`~broker.core.logging`: ISO-8601 durations, bounded caches, Prometheus metrics
  (Knative's names), JSON logs.
"""
