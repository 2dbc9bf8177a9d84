"""The web console: cemesh's mesh in a browser, behind the management API's authentication.

- :mod:`broker.server.console.session`: the browser session's rules (cookie, CSRF token, Origin,
  security headers), pure;
- :mod:`broker.server.console.gate`: the raw ASGI handler under ``/console`` (login, pages,
  files, and the relay that turns the session into the API's bearer token);
- ``static/``: the page (``index.html``, ``console.js``, ``console.css``, ``login.html``) and
  ``vendor/``, the front-end libraries copied from npm by ``deploy/console/vendor.sh`` with
  their licenses (served from the package: no CDN, no build step at run time).

The data the page shows comes from the management API itself, relayed: the topology
(:mod:`broker.controlplane.api.topology`), objects, the live event stream
(:mod:`broker.controlplane.api.tail`) and test events (:mod:`broker.controlplane.api.send_event`).
"""
