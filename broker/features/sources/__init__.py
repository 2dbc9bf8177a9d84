"""Sources: resources that turn the outside world into CloudEvents sent to a sink (K sources).

- :mod:`broker.features.sources.base`: the contract a source implements (:class:`SourceKind`,
  :class:`Source`) and the sink sender every source uses;
- :mod:`broker.features.sources.kinds`: the source kinds cemesh serves, registered with the API;
- :mod:`broker.features.sources.reconcile`: their statuses and runtime specs (pure);
- :mod:`broker.features.sources.runner`: the component that runs them as resources come and go;
- one module per kind (``github``, ``ping``, ``apiserver``, ``container``).
"""
