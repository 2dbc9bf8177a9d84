"""cemesh on the Kubernetes API: Knative Brokers of cemesh's class and their Triggers, read
and written where Knative keeps them (``CEMESH_CONTROL_PLANE=kubernetes``).

Modules: :mod:`~broker.controlplane.kube.client` (client configuration, raw JSON requests),
:mod:`~broker.controlplane.kube.watch` (the one list + watch, also ApiServerSource's),
:mod:`~broker.controlplane.kube.store` (the API's requests: list/watch, get, create, replace,
delete, status writes, finalizers, Events, Leases),
:mod:`~broker.controlplane.kube.resource_store` (the Kubernetes API behind the control plane's
storage seam, served from watch caches), :mod:`~broker.controlplane.kube.lease` (leader election),
:mod:`~broker.controlplane.kube.resolution` (destinations resolved as Knative's resolver does),
:mod:`~broker.controlplane.kube.status` (Knative's status shape),
:mod:`~broker.controlplane.kube.events` (Kubernetes Events for Ready transitions) and
:mod:`~broker.controlplane.kube.policy` (what the one controller does with a cluster's objects:
class selection, cluster resolution, finalizers; and the controller's wiring on a cluster).
"""
