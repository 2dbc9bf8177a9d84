"""Where cemesh is built and served.

- :mod:`~broker.server.features`: THE list of features cemesh serves, and the catalog built
  from it.
- :mod:`~broker.server.app`: ``create_app(settings)``: wiring only (store, buses, dispatcher,
  controller or the Kubernetes control plane, components, routes, lifespan).
- :mod:`~broker.server.listeners`, :mod:`~broker.server.http_server`, :mod:`~broker.server.tls`:
  the HTTP and HTTPS listeners ``cemesh serve`` runs, uvicorn with read deadlines, the reloading
  TLS certificate.
- :mod:`~broker.server.console`: the web console under ``/console/`` (login, page, the relay
  that turns its session cookie into the API's bearer token; front-end files in the package).
- :mod:`~broker.server.otlp`: span export over OTLP/HTTP with OpenTelemetry (the ``otlp``
  extra), when ``CEMESH_OTLP_TRACES_ENDPOINT`` is set.
"""
