"""Knative Eventing's own kinds: Broker, Trigger, Channel (and implementations), Subscription,
Secret, ConfigMap.

- :mod:`~broker.controlplane.eventing.types`: their resource types and the names they share.
- :mod:`~broker.controlplane.eventing.kinds`: their admission (validation + defaults).
- :mod:`~broker.controlplane.eventing.reconcile`: Brokers and channels, and the phase table.
- :mod:`~broker.controlplane.eventing.subscribers`: Triggers and Subscriptions.

They are listed as the first feature (``EVENTING_FEATURE`` in :mod:`broker.server.features`).
"""
