"""Flows (``flows.knative.dev/v1``): Sequence and Parallel, built from Channels and Subscriptions.

- :mod:`broker.features.flows.kinds`: the two resource types and their admission;
- :mod:`broker.features.flows.wiring`: the Channels and Subscriptions a flow owns, named and wired
  as Knative's reconcilers do (pure);
- :mod:`broker.features.flows.reconcile`: their statuses and addresses (pure, like
  :mod:`broker.controlplane.reconcile`).

A flow has no data plane of its own: its owned Channels and Subscriptions carry the events, so
per-step delivery (retries, dead-letter sinks) and replies are the Subscriptions' own.
"""
