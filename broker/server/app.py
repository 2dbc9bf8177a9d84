"""Wiring only: builds the cemesh ASGI app and its background work from :class:`Settings`.

``create_app(settings)`` returns an ASGI callable that sends ingress paths to the raw
:class:`~broker.dataplane.ingress.Ingress` (the hot path), the components' routes to them behind the
Host check, and everything else to a FastAPI app (management API, health, metrics) behind the
:class:`~broker.controlplane.api.guard.ManagementGuard` (Host, content type, size, bearer token).

Which route gets which defence, and why:

- ingress (``/{ns}/{broker}``, ``/channels/...``): none of these; Knative's ingresses answer any
  Host, and a browser's cross-origin "simple" request (text/plain, forms) is not a CloudEvent
  (400): structured and batched types need a CORS preflight, which cemesh never grants. Who may
  send is EventPolicy's business.
- component routes: the Host check (DNS rebinding) only. The invoker's ``/services/...`` is a
  data-plane route like a Knative Service's URL; the sources' webhooks (GitHub) prove their
  sender with their own signature (HMAC), so they need no bearer token.
- management API: everything; ``/healthz`` and ``/readyz`` stay open.
- the web console (``/console/``, :mod:`broker.server.console`): the Host check, then its own
  session (a cookie holding an API token, checked by the API's authenticators), Origin and CSRF
  checks on writes; it relays to the management API behind the whole guard above.

The store, bus, dispatcher and controller start and stop with the ASGI lifespan, so cemesh can
be served by any ASGI server or mounted in another application.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from broker.auth.hosts import allowed_host_names
from broker.auth.oidc import OidcVerifier, TrustedIssuers, verifier_from_settings
from broker.auth.setup import Access, build_access
from broker.controlplane.api.guard import HostGuard, ManagementGuard
from broker.controlplane.api.openapi import install_openapi
from broker.controlplane.api.resources import ResourceApi, install_resource_routes
from broker.controlplane.api.send_event import install_send_event_routes
from broker.controlplane.api.status import answer_unexpected, install_error_handlers
from broker.controlplane.api.tail import install_tail_routes
from broker.controlplane.api.topology import install_topology_routes
from broker.controlplane.controller import Controller, consumer_group_of
from broker.controlplane.delivery_tokens import DeliveryTokens, install_issuer_routes
from broker.controlplane.eventing.types import bus_of_channel
from broker.controlplane.kube.policy import connect_control_plane
from broker.controlplane.outbound import OutboundGuard, guard_for
from broker.controlplane.signing_keys import KeyRing
from broker.controlplane.store import Store
from broker.controlplane.store.archive import SqlArchive
from broker.core.asgi import Receive, Scope, Send
from broker.core.collector import collector_paused
from broker.core.config import Settings
from broker.core.durations import parse_duration
from broker.core.errors import BusClientMissing, CemeshError, RequestIncomplete
from broker.core.metrics import Metrics
from broker.core.spec import BrokerSpec, ChannelSpec, DeliveryPolicy, Snapshot
from broker.dataplane.bus import Bus, create_bus
from broker.dataplane.dispatch.client import DeliveryClient
from broker.dataplane.dispatch.delivery import Deliverer
from broker.dataplane.dispatch.dispatcher import Dispatcher
from broker.dataplane.ingress import Ingress
from broker.dataplane.live_feed import LiveFeed
from broker.dataplane.routes import match_route
from broker.features.components import Component, HttpHandler, RuntimeContext
from broker.features.feature import Feature, build_catalog, build_components
from broker.server.console.gate import PREFIX as CONSOLE_PREFIX
from broker.server.console.gate import Console
from broker.server.features import FEATURES
from broker.server.listeners import http_listeners
from broker.server.otlp import OtlpSpans
from broker.server.tls import TlsConfigError

log = logging.getLogger(__name__)


def default_delivery(settings: Settings) -> DeliveryPolicy:
    """The delivery policy used when neither a Trigger/Subscription nor its parent sets one."""
    return DeliveryPolicy(
        retry=settings.delivery_retry,
        backoff_policy=settings.delivery_backoff_policy,
        backoff_delay=parse_duration(settings.delivery_backoff_delay, "delivery_backoff_delay"),
        timeout=settings.delivery_timeout,
        retry_after_max=settings.retry_after_max,
    )


def outbound_guard(settings: Settings) -> OutboundGuard:
    """The outbound guard for this cemesh's listeners and public URLs
    (broker/controlplane/outbound.py)."""
    ports = (
        (settings.port,) if settings.https_port is None else (settings.port, settings.https_port)
    )
    urls = (
        (settings.base_url,)
        if settings.https_base_url is None
        else (settings.base_url, settings.https_base_url)
    )
    return guard_for(
        listen_host=settings.host,
        listen_ports=ports,
        public_urls=urls,
        allow_link_local=settings.allow_link_local_destinations,
    )


def published_ca_certs(settings: Settings) -> str | None:
    """The PEM of ``tls_ca_file``, published as CACerts of https addresses (read at start)."""
    if settings.tls_ca_file is None:
        return None
    try:
        return settings.tls_ca_file.read_text()
    except OSError as exc:
        raise TlsConfigError(f"cannot read tls_ca_file {settings.tls_ca_file}: {exc}") from exc


def bus_options(settings: Settings, name: str) -> dict[str, Any]:
    """Adapter options for bus ``name``: its settings ``<name>_<option>`` that are set."""
    return settings.bus_options(name)


def reconcile_options(settings: Settings) -> dict[str, Any]:
    """reconcile()'s options beyond the base URL, delivery and channel, for either control
    plane (the store's Controller, or the Kubernetes one)."""
    return {
        "ingress_oidc": settings.ingress_oidc,
        "default_authorization_mode": settings.default_authorization_mode,
        "https_base_url": settings.https_base_url,
        "ca_certs": published_ca_certs(settings),
    }


class Runtime:
    """Everything one cemesh app owns while it runs."""

    def __init__(self, settings: Settings, features: Sequence[Feature] = FEATURES) -> None:
        self.settings = settings
        self.catalog = build_catalog(features)
        self.access: Access = build_access(settings)
        self.metrics = Metrics(
            max_event_types=settings.metrics_max_event_types, detail=settings.metrics_detail
        )
        self.store = Store(settings.database_url, plural_of=self.catalog.plural_of)
        self.default_bus = bus_of_channel(settings.default_channel)
        self.buses: dict[str, Bus] = {}
        self._missing_clients: dict[str, str] = {}  # bus name -> which extra to install
        self.client = DeliveryClient()
        self.keys: KeyRing | None = None
        self.tokens: DeliveryTokens | None = None
        self.ingress_verifier: OidcVerifier | TrustedIssuers | None = None
        self._build_identity()
        endpoint = settings.otlp_traces_endpoint
        self.spans = OtlpSpans(endpoint, settings.otlp_traces_sample_rate) if endpoint else None
        self.feed = LiveFeed()
        self.metrics.add_source(self.feed.families)
        self.ingress = Ingress(
            buses=self.buses,
            metrics=self.metrics,
            feed=self.feed,
            spans=self.spans,
            max_request_bytes=settings.max_request_bytes,
            max_ttl=settings.max_ttl,
            verifier=self.ingress_verifier,
        )
        self.deliverer = Deliverer(
            self.client,
            max_inflight_per_subscriber=settings.max_inflight_per_subscriber,
            dead_letter_redelivery_delay=settings.dead_letter_redelivery_delay,
            tokens=self.tokens,
            error_data_max_bytes=settings.error_data_max_bytes,
            spans=self.spans,
        )
        self._topic_bus: dict[str, str] = {}
        self.dispatcher = Dispatcher(
            buses=self.buses,
            bus_of_topic=lambda topic: self._topic_bus.get(topic, self.default_bus),
            deliverer=self.deliverer,
            client=self.client,
            reply_to_broker=self.ingress.publish_to_broker,
            metrics=self.metrics,
            concurrency=settings.dispatch_concurrency,
            max_ttl=settings.max_ttl,
            tokens=self.tokens,
        )
        self.reconcile_options = reconcile_options(settings)
        self.controller = Controller(
            self.store,
            catalog=self.catalog,
            base_url=settings.base_url,
            default_delivery=default_delivery(settings),
            default_channel=settings.default_channel,
            apply_snapshot=self.apply_snapshot,
            open_buses=self.open_buses,
            resync_interval=settings.resync_interval,
            retire_groups=self.retire_groups,
            delete_topic=self.delete_topic,
            **self.reconcile_options,
        )
        context = RuntimeContext(
            settings=settings,
            store=self.store,
            metrics=self.metrics,
            client=self.client,
            tokens=self.tokens,
            buses=self.buses,
            redeliver=self.dispatcher.redeliver,
            archive=SqlArchive(self.store),
        )
        # Features that run beside the dispatcher, each fed its part of every snapshot.
        self.components: list[Component] = build_components(features, context)
        self.ready = False
        # Freeze what the first sync built, as serve() freezes what start-up built (serve()).
        self.freeze_after_first_sync = False
        # With control_plane kubernetes: the controller on the cluster (made at startup).
        self.kube_plane: Controller | None = None

    @property
    def plane(self) -> Controller:
        """The control loop in use: on cemesh's store, or on the Kubernetes API."""
        return self.kube_plane or self.controller

    def _build_identity(self) -> None:
        """cemesh's delivery identity (signing keys, tokens) and the ingress' token verifier."""
        # cemesh's own identity for deliveries (Knative's authentication-oidc), when on. Ingress
        # OIDC switches it on too, as Knative's one flag does: cemesh's own hops to a Broker or
        # Channel over HTTP (flows, Subscription replies, dead letters) must carry a token.
        if self.settings.delivery_oidc or self.settings.ingress_oidc:
            self.keys = KeyRing(
                self.store,
                rotation_interval=self.settings.oidc_key_rotation_interval,
                token_lifetime=self.settings.delivery_token_lifetime,
                lead=self.settings.oidc_key_publish_lead,
                check_interval=self.settings.oidc_key_check_interval,
            )
            self.tokens = DeliveryTokens(
                self.keys,
                issuer=self.settings.issuer,
                lifetime=self.settings.delivery_token_lifetime,
            )
        # Senders' tokens, with ingress OIDC on (None: the ingress authenticates nobody): the
        # configured issuer's and cemesh's own (its keys read in-process, never over HTTP).
        senders = verifier_from_settings(self.settings, ingress=True)
        if senders is not None and self.keys is not None:
            own = OidcVerifier(
                self.settings.issuer,
                key_source=self.keys.jwks,
                leeway=self.settings.oidc_leeway,
                min_refresh_interval=1.0,
                cache_size=self.settings.oidc_token_cache_size,
            )
            self.ingress_verifier = TrustedIssuers([senders, own])

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    @property
    def routes(self) -> list[tuple[str, HttpHandler]]:
        """The components' HTTP path prefixes, longest first."""
        pairs = [(prefix, h) for c in self.components for prefix, h in c.routes.items()]
        return sorted(pairs, key=lambda pair: -len(pair[0]))

    async def _bus(self, name: str) -> Bus:
        bus = self.buses.get(name)
        if bus is None:
            bus = create_bus(name, bus_options(self.settings, name))
            try:
                await bus.open()
            except BaseException:
                await bus.close()  # release whatever a half-open adapter holds
                raise
            self.buses[name] = bus
        return bus

    async def open_buses(self, names: set[str]) -> dict[str, str]:
        """Open every bus in ``names`` not open yet; the ones that failed, with why.

        A bus whose client library is not installed is remembered as such (and logged once):
        it cannot appear while this process runs, so it is not imported again on every poll.
        """
        errors: dict[str, str] = {}
        for name in sorted(names):
            missing = self._missing_clients.get(name)
            if missing is not None:
                errors[name] = missing
                continue
            try:
                await self._bus(name)
            except BusClientMissing as exc:
                errors[name] = self._missing_clients[name] = exc.message
                log.error("bus client not installed", extra={"bus": name, "error": exc.message})
            except CemeshError as exc:
                errors[name] = f"bus {name!r} is unavailable: {exc.message}"
                log.error("bus unavailable", extra={"bus": name, "error": exc.message})
        return errors

    async def retire_groups(self, obj: dict[str, Any]) -> None:
        """Delete the consumer group of a deleted Trigger or Subscription from its bus.

        Called by the controller once the dispatcher no longer consumes the group. The bus is
        the one the dispatcher used for the topic (its Broker's or Channel's, as last seen),
        else the default bus. Done once, by the replica that saw the deletion: the group is
        server-side state. Raises BusError when the bus refuses (the controller logs it).
        """
        topic, group = consumer_group_of(obj)
        name = self._topic_bus.get(topic, self.default_bus)
        bus = await self._bus(name)
        await bus.delete_group(topic, group)
        log.info("consumer group deleted", extra={"bus": name, "topic": topic, "group": group})

    async def delete_topic(self, topic: str, bus: str | None = None) -> None:
        """Delete the topic of a deleted Broker or Channel from its bus.

        Called by the control loop once the data plane no longer serves the topic, for what
        :func:`broker.controlplane.eventing.topics.topics_to_delete` allows. The bus is ``bus``
        (what the object's config resolved to, as its status records it), else the one the data
        plane served the topic on, else the default bus. Raises BusError when the bus refuses.
        """
        name = bus or self._topic_bus.get(topic, self.default_bus)
        await (await self._bus(name)).delete_topic(topic)
        log.info("topic deleted", extra={"bus": name, "topic": topic})

    async def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Hand the snapshot to ingress and dispatcher (its buses are open: see open_buses)."""
        addressables: list[BrokerSpec | ChannelSpec] = [
            *snapshot.brokers.values(),
            *snapshot.channels.values(),
        ]
        for spec in addressables:
            self._topic_bus[spec.topic] = spec.bus
        self.ingress.snapshot = snapshot
        await self.dispatcher.apply(snapshot)
        for component in self.components:
            try:
                await component.apply(snapshot.components.get(component.name, {}))
            except Exception:  # one failing feature must not stop the data plane
                log.exception(
                    "component did not apply the snapshot", extra={"component": component.name}
                )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.store.open(migrate=True)
        if self.keys is not None:  # before the first delivery can need a token
            await self.keys.refresh()
            self.keys.start()
        # Buses open as Brokers and Channels need them; one that cannot open marks those not
        # Ready (and /readyz 503) and is tried again on every poll, rather than failing startup.
        if self.settings.control_plane == "kubernetes":
            # Brokers and Triggers come from the Kubernetes API, the same controller on the
            # other store behind the seam (broker/controlplane/kube/policy.py).
            self.kube_plane = await connect_control_plane(
                self.settings,
                apply_snapshot=self.apply_snapshot,
                open_buses=self.open_buses,
                retire_groups=self.retire_groups,
                delete_topic=self.delete_topic,
                default_delivery=default_delivery(self.settings),
                catalog=self.catalog,
                reconcile_options=self.reconcile_options,
            )
            self.kube_plane.start()
        else:
            # The first sync builds every resource's runtime state at once (10,000 Triggers:
            # their consumers, statuses, the store's rows), before anything is served: the
            # collector would scan that growing heap again and again (broker.core.collector).
            with collector_paused():
                await self.controller.sync()
                if self.freeze_after_first_sync:
                    # Else the first collection after the pause scans all of it (~0.3 s with
                    # 10,000 Triggers), right before /readyz.
                    gc.freeze()
            self.controller.start()
        self.ready = True
        log.info(
            "cemesh ready",
            extra={"url": self.settings.base_url, "channel": self.settings.default_channel},
        )
        if self.access.token_file is not None:
            log.info(
                "management API token in %s (the cemesh CLI reads it by itself)",
                self.access.token_file,
                extra={"token_file": str(self.access.token_file)},
            )
        else:
            log.warning("management API authentication is off (CEMESH_AUTH=none)")
        try:
            yield
        finally:
            self.ready = False
            await self.plane.stop()
            for component in self.components:
                await component.stop()
            await self.dispatcher.drain(self.settings.drain_timeout)
            for bus in self.buses.values():
                await bus.close()
            await self.client.close()
            if self.ingress_verifier is not None:
                await self.ingress_verifier.close()
            if self.keys is not None:
                await self.keys.stop()
            await self.store.close()
            if self.spans is not None:
                await asyncio.to_thread(self.spans.shutdown)  # sends what is still batched
            log.info("cemesh stopped")


class CemeshApp:
    """The ASGI entry: ingress paths to the raw ingress, the rest to the management API."""

    def __init__(self, runtime: Runtime, api: FastAPI) -> None:
        self.runtime = runtime
        settings = runtime.settings
        allowed = allowed_host_names(settings.base_url, settings.allowed_hosts)
        self.api = ManagementGuard(
            api,
            runtime.access,
            allowed_hosts=allowed,
            max_bytes=settings.max_api_bytes,
            metrics_auth=settings.metrics_auth,
            cors_origins=settings.cors_origins,
        )
        self._ingress = runtime.ingress
        self._routes = [(prefix, HostGuard(h, allowed)) for prefix, h in runtime.routes]
        if settings.console and settings.control_plane != "kubernetes":
            # The web console relays to the guarded API: it has no data of its own.
            console = HostGuard(Console(self.api, runtime.access), allowed)
            self._routes.append((CONSOLE_PREFIX, console))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)  # lifespan: its failures are the server's
            return
        try:
            path = scope["path"]
            route = match_route(path)
            if route is not None:
                if scope["method"] == "POST":  # the hot path, one coroutine less
                    await self._ingress.post(scope, receive, send, route)
                else:
                    await self._ingress(scope, receive, send, route)
                return
            for prefix, handler in self._routes:
                if path.startswith(prefix):
                    # A client that left mid-body has no one to answer.
                    with contextlib.suppress(RequestIncomplete):
                        await handler(scope, receive, send)
                    return
            # The same for the management API (Starlette raises ClientDisconnect when reading).
            with contextlib.suppress(ClientDisconnect):
                await self.api(scope, receive, send)
        except Exception as exc:  # the last resort: logged once, 500 with a Status body
            await answer_unexpected(scope, send, exc)


def create_app(
    settings: Settings | None = None, features: Sequence[Feature] = FEATURES
) -> CemeshApp:
    """Build the cemesh ASGI app for ``settings`` (default: from the environment) serving
    ``features`` (default: cemesh's own, :func:`broker.server.features.default_features`)."""
    settings = settings or Settings()
    runtime = Runtime(settings, features)
    api = FastAPI(title="cemesh", version="0.1.0", lifespan=runtime.lifespan)
    install_error_handlers(api)
    if runtime.tokens is not None and runtime.keys is not None:
        install_issuer_routes(api, runtime.tokens, runtime.keys)
    install_openapi(api, runtime.catalog)
    install_tail_routes(
        api,
        feed=runtime.feed,
        catalog=runtime.catalog,
        access=runtime.access,
        serves=runtime.ingress.serves,
    )
    install_send_event_routes(
        api,
        publish=runtime.ingress.publish_to_broker,
        serves=lambda namespace, name: runtime.ingress.serves(("broker", namespace, name)),
        access=runtime.access,
    )
    if settings.control_plane != "kubernetes":  # else resources are the cluster's (kubectl)
        install_topology_routes(
            api, store=runtime.store, catalog=runtime.catalog, access=runtime.access
        )
        install_resource_routes(
            api,
            ResourceApi(
                runtime.store,
                runtime.controller,
                runtime.access,
                catalog=runtime.catalog,
                guard=outbound_guard(settings),
            ),
        )

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        problems = list(runtime.plane.bus_errors.values())
        if not (runtime.ready and runtime.plane.synced.is_set()):
            problems.insert(0, "starting")
        body: dict[str, Any] = {"status": "not ready" if problems else "ready"}
        if problems:
            body["problems"] = problems
        return JSONResponse(body, status_code=503 if problems else 200)

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)

    return CemeshApp(runtime, api)


# How cemesh runs under uvicorn: uvloop + httptools, no access log, no proxy-header middleware
# (each costs measurably per request on the ingress hot path). bench/bare_app.py serves the
# benchmark's ceiling with these same options.
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "access_log": False,
    "log_config": None,
    "lifespan": "on",
    "proxy_headers": False,
}


def serve(settings: Settings) -> None:
    """Run cemesh under its HTTP server (``settings.http_server``) until SIGTERM/SIGINT."""
    app = create_app(settings)
    # Everything imported and built so far (FastAPI, SQLAlchemy, pydantic models, ...) lives as
    # long as the process: keep it out of the collector's generations, so that collecting the
    # per-event garbage stays cheap. Only here, not in create_app: an embedding app owns its GC.
    # So do the resources' runtime state built by the first sync, mostly (Runtime.lifespan);
    # what of it a later change drops is freed by reference counting, cycles excepted.
    gc.freeze()
    app.runtime.freeze_after_first_sync = True
    listeners = http_listeners(
        app, settings, timeout_graceful_shutdown=int(settings.drain_timeout) + 5, **UVICORN_OPTIONS
    )
    listeners.run()
