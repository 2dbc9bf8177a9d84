"""Archive and replay (EventBridge's, which Knative lacks): ``eventing.cemesh.dev/v1alpha1``.

- :mod:`broker.features.archive.kinds`: the Archive and Replay kinds and their admission (the
  Replay's references checked on create);
- :mod:`broker.features.archive.policy`: the rules, pure (time window, cursor, rate pacing, when
  progress is saved, retention cutoff);
- :mod:`broker.features.archive.reconcile`: their status and the specs the component runs (pure);
- :mod:`broker.features.archive.replayer`: one Replay running (thin I/O around the policy);
- :mod:`broker.features.archive.ownership`: one replica at a time runs a Replay (slot leases);
- :mod:`broker.features.archive.component`: the runtime component (archive writers, replay runs,
  the retention sweeper);
- :mod:`broker.features.archive.feature`: the :class:`~broker.features.feature.Feature` value.

The archive writer itself is the data plane's (:mod:`broker.dataplane.archive`); archived events
and replay progress are kept through :mod:`broker.controlplane.archive_store`, in the SQL store
(:mod:`broker.controlplane.store.archive`).
"""
