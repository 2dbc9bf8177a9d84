"""The control plane: resources in, statuses and the data plane's Snapshot out.

- The resource model: :mod:`~broker.controlplane.catalog` (kinds served, built from the feature
  list), :mod:`~broker.controlplane.admission` (validation + defaults, the shared rules),
  :mod:`~broker.controlplane.shapes` (shape checks), :mod:`~broker.controlplane.outbound`
  (which destinations are refused), :mod:`~broker.controlplane.resources` (all of it in one
  import) and :mod:`~broker.controlplane.eventing` (Broker, Trigger, channels, Subscription).
- Reconcile, pure: :mod:`~broker.controlplane.reconcile` (the driver),
  :mod:`~broker.controlplane.world` (what one pass sees: conditions, destination resolution).
- The loop: :mod:`~broker.controlplane.controller` (store -> reconcile -> Snapshot -> statuses),
  one for every store, over :mod:`~broker.controlplane.resource_store` (the one storage seam)
  whose implementations are :mod:`~broker.controlplane.store` (SQL) and, as a Knative Broker
  class in a cluster, :mod:`~broker.controlplane.kube` (the Kubernetes API);
  :mod:`~broker.controlplane.control_policy` is what differs between them (the SQL store's
  identity policy here, the cluster's in :mod:`~broker.controlplane.kube.policy`).
- :mod:`~broker.controlplane.archive_store`: the seam to archived events and replay progress
  (implemented in :mod:`~broker.controlplane.store.archive`).
- :mod:`~broker.controlplane.api`: the Kubernetes-style REST API (with its guard and OpenAPI,
  the live event stream of a Broker or Channel, test events, and the topology of a namespace
  drawn by :mod:`~broker.controlplane.topology`, pure, for the web console).
- :mod:`~broker.controlplane.signing_keys`, :mod:`~broker.controlplane.delivery_tokens`: cemesh's
  own signing keys (kept in the store) and the delivery tokens it issues with them.
"""
