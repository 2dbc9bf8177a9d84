"""EventPolicy (``eventing.knative.dev/v1alpha1``): who may send events to which Broker or Channel.

- :mod:`broker.features.eventpolicy.kinds`: the resource type and its admission;
- :mod:`broker.features.eventpolicy.reconcile`: its status (the subjects it allows, the resources it
  applies to) and the compiled policies the ingress checks (pure, like
  :mod:`broker.controlplane.reconcile`).

The decision itself is the data plane's, in :mod:`broker.core.ingress_authorization`; tokens are
verified by :mod:`broker.auth.oidc`.
"""
