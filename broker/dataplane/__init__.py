"""The data plane: CloudEvents in over HTTP, onto a bus, out to subscribers. Runs on a Snapshot.

It never reads the store or the control plane (checked by import-linter, see pyproject.toml):
everything it needs arrives as a :class:`~broker.core.spec.Snapshot`.

- :mod:`~broker.dataplane.ingress`: the hot path, a raw ASGI handler for Broker and channel
  ingress paths; answers 202 once every event is on the bus.
- :mod:`~broker.dataplane.routes`: which request path is which Broker's or channel's ingress.
- :mod:`~broker.dataplane.reply`: the reply path (the ``knativebrokerttl`` loop guard, replies
  re-entering a Broker), used by both ingress and dispatcher.
- :mod:`~broker.dataplane.live_feed`: accepted events handed to live watchers (``cemesh tail``)
  through bounded queues that drop and count for a slow reader.
- :mod:`~broker.dataplane.archive`: the archive writer, a consumer group per Archive on its
  Broker's topic appending to an :class:`~broker.dataplane.archive.ArchiveSink`.
- :mod:`~broker.dataplane.bus`: the bus contract and the adapters' shared toolkit (the adapters
  themselves are the top-level ``adapters`` package).
- :mod:`~broker.dataplane.dispatch`: consume loops, filters, delivery with retries, replies and
  dead letters, the outbound HTTP clients.
"""
