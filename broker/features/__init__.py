"""Features: what plugs into cemesh through the one :class:`~broker.features.feature.Feature`
interface (kinds with admission, reconcilers, destination resolvers, a runtime component).

- :mod:`~broker.features.sources`: Ping, ApiServer, Container + SinkBinding, GitHub sources.
- :mod:`~broker.features.serving`: Knative Services as local process replicas (autoscaler,
  activator, invoker) or an existing Kubernetes Deployment.
- :mod:`~broker.features.flows`: Sequence and Parallel.
- :mod:`~broker.features.eventpolicy`: EventPolicy (who may send to a Broker or channel).
- :mod:`~broker.features.archive`: Archive and Replay (a Broker's events kept, re-delivered).
- Shared by them: :mod:`~broker.features.feature` (the interface),
  :mod:`~broker.features.components` (the runtime component contract and its context),
  :mod:`~broker.features.sinkbinding` (the SinkBinding environment) and
  :mod:`~broker.features.supervisor` (child processes cemesh runs for users).

Features never import each other (import-linter). They are listed once, where the app is built:
:mod:`broker.server.features`. CESQL, the other feature of the filter language, is the
self-contained :mod:`broker.cesql` package the data plane's filters use.
"""
