"""cemesh on the Kubernetes API: Knative Brokers and Triggers of cemesh's class, read and
written where Knative keeps them.

Modules: :mod:`~broker.kube.client` (client configuration, raw JSON requests),
:mod:`~broker.kube.watch` (the one list + watch), :mod:`~broker.kube.store` (the
Kubernetes-backed resource store: list/watch, get, status writes, finalizers, Leases),
:mod:`~broker.kube.resolution` (destinations resolved as Knative's resolver does),
:mod:`~broker.kube.status` (cemesh's reconciled statuses in Knative's condition names) and
:mod:`~broker.kube.control` (the control loop that ties them together).
"""
