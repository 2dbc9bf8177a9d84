"""Every cemesh setting, with its default, in one model.

Settings come from (highest first) explicit arguments, ``CEMESH_*`` environment variables, and a
YAML config file (``cemesh serve --config FILE`` or ``CEMESH_CONFIG``) whose keys are the field
names below. Nothing else in cemesh reads the environment.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, create_model, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from adapters.kafka.options import KafkaOptions
from adapters.memory.options import MemoryOptions
from adapters.nats.options import NatsOptions
from adapters.pubsub.options import PubSubOptions
from adapters.redis_streams.options import RedisOptions

# The bus adapters' options, each a typed model of its adapter: the settings ``<bus>_<option>``.
BUS_OPTIONS: dict[str, type[BaseModel]] = {
    "memory": MemoryOptions,
    "kafka": KafkaOptions,
    "nats": NatsOptions,
    "redis": RedisOptions,
    "pubsub": PubSubOptions,
}


def bus_setting_fields() -> dict[str, Any]:
    """The settings ``<bus>_<option>``: each option's field (type, default, limits, description)
    as its adapter declares it, with what ``cemesh serve`` serves differently (the model's
    ``SERVED_DEFAULTS`` and ``SERVED_LIMITS``, when it has them)."""
    fields: dict[str, Any] = {}
    for bus, model in BUS_OPTIONS.items():
        defaults: dict[str, Any] = getattr(model, "SERVED_DEFAULTS", {})
        limits: dict[str, list[Any]] = getattr(model, "SERVED_LIMITS", {})
        for option, field in model.model_fields.items():
            served = copy.copy(field)
            if option in defaults:
                served.default = defaults[option]
            served.metadata = [*field.metadata, *limits.get(option, [])]
            fields[f"{bus}_{option}"] = (field.annotation, served)
    return fields


if TYPE_CHECKING:  # the fields are the adapters' (read through Settings.bus_options)
    BusSettings = BaseSettings
else:
    BusSettings = create_model("BusSettings", __base__=BaseSettings, **bus_setting_fields())


class Settings(BusSettings):
    """cemesh configuration. Environment variables are ``CEMESH_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="CEMESH_", extra="forbid")

    # Serving
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(
        default=None,
        description="Base URL that Broker/Channel addresses are built from; "
        "default http://HOST:PORT.",
    )
    config: Path | None = Field(default=None, description="YAML file with these same keys.")

    # Store
    database_url: str = "sqlite+aiosqlite:///./cemesh.db"
    resync_interval: float = Field(
        default=2.0, gt=0, description="Seconds between store polls for changes made by replicas."
    )

    # Bus. The default channel kind backs Brokers and template-less Channels; each kind has its
    # bus adapter (InMemoryChannel: memory, KafkaChannel: kafka, NatsJetStreamChannel: nats,
    # PubSubChannel: pubsub, RedisStreamChannel: redis). The settings ``<adapter>_<option>``
    # (inherited from BusSettings) are handed to that adapter as ``option``: see bus_options.
    default_channel: Literal[
        "InMemoryChannel",
        "KafkaChannel",
        "NatsJetStreamChannel",
        "PubSubChannel",
        "RedisStreamChannel",
    ] = "InMemoryChannel"

    # HTTP server (cemesh serve): connection limits and how long a client may take to send
    max_connections: int | None = Field(
        default=1000,
        ge=1,
        description="Open connections (and requests in progress) beyond which requests get 503.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers (from connecting, or from "
        "the request's first byte); then 408 and the connection is closed.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a client has to send a request's body once its headers arrived; "
        "then 408, the connection is closed and nothing of the request is used.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Bytes of headers a request may have; larger ones get 431 and the "
        "connection is closed.",
    )
    keep_alive_timeout: float = Field(
        default=5.0, gt=0, description="Seconds an idle keep-alive connection is kept open."
    )

    # Ingress
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    max_ttl: int = Field(default=255, ge=1, description="knativebrokerttl given to new events.")
    # granian measured faster for the ingress, but lacks TLS reload, a body deadline, 503 at
    # max_connections and the keep-alive timeout (broker/server/granian_server.py): not the default.
    http_server: Literal["uvicorn", "granian"] = Field(
        default="uvicorn",
        description="The HTTP server cemesh runs on: uvicorn (httptools, uvloop) or granian "
        "(HTTP in Rust on its own thread, the app in cemesh's uvloop event loop; plain HTTP only).",
    )

    # OIDC bearer tokens (JWT). The issuer and its keys (JWKS URL, else discovered from
    # <issuer>/.well-known/openid-configuration) are shared by the management API (tokens whose
    # audience is oidc_audience) and, with ingress_oidc on, the ingress (tokens whose audience is
    # the Broker's or Channel's status.address.audience).
    oidc_issuer: str | None = Field(
        default=None, description="The exact 'iss' of accepted tokens; None: OIDC is off."
    )
    oidc_audience: str | None = Field(
        default=None, description="The 'aud' a management API token must carry."
    )
    oidc_jwks_url: str | None = Field(
        default=None, description="The issuer's JWKS; default: discovered from the issuer."
    )
    oidc_groups_claim: str = Field(
        default="groups", description="Claim holding the subject's groups (for RBAC)."
    )
    oidc_leeway: float = Field(
        default=30.0, ge=0, description="Seconds of clock skew allowed on exp, nbf and iat."
    )
    oidc_jwks_refresh_interval: float = Field(
        default=300.0, gt=0, description="Seconds after which the JWKS is fetched again."
    )
    oidc_jwks_min_refresh_interval: float = Field(
        default=10.0,
        ge=0,
        description="Least seconds between two JWKS fetches (an unknown kid refetches at most "
        "this often, so made-up key ids cannot hammer the JWKS server).",
    )
    oidc_token_cache_size: int = Field(
        default=10_000, ge=0, description="Verified tokens remembered until they expire."
    )
    # Ingress authorization (Knative's authentication-oidc feature and EventPolicy)
    ingress_oidc: bool = Field(
        default=False,
        description="Senders must present a JWT whose audience is the Broker's or Channel's; "
        "EventPolicies decide who may send (Knative's authentication-oidc flag).",
    )
    ingress_oidc_issuer: str | None = Field(
        default=None, description="Issuer of senders' tokens; default: oidc_issuer."
    )
    ingress_oidc_jwks_url: str | None = Field(
        default=None, description="JWKS of senders' issuer; default: oidc_jwks_url."
    )
    default_authorization_mode: Literal["allow-same-namespace", "allow-all", "deny-all"] = Field(
        default="allow-same-namespace",
        description="Who may send when no EventPolicy applies (Knative's "
        "default-authorization-mode).",
    )

    # Delivery defaults (used when neither the Trigger/Subscription nor its Broker/Channel set any)
    delivery_retry: int = Field(default=10, ge=0)
    delivery_backoff_policy: Literal["linear", "exponential"] = "exponential"
    delivery_backoff_delay: str = "PT0.2S"
    delivery_timeout: float = Field(default=30.0, gt=0, description="Per attempt, seconds.")
    retry_after_max: float = Field(
        default=60.0, ge=0, description="Cap on honoured Retry-After, seconds (0 disables)."
    )
    dead_letter_redelivery_delay: float = Field(
        default=30.0,
        gt=0,
        description="When the dead-letter sink itself fails, the event stays on the bus and is "
        "tried again after this many seconds (it is never dropped).",
    )
    dispatch_concurrency: int = Field(
        default=64, ge=1, description="Concurrent deliveries per Trigger/Subscription."
    )
    max_inflight_per_subscriber: int = Field(
        default=128, ge=1, description="Concurrent requests to one subscriber host."
    )
    drain_timeout: float = Field(
        default=30.0, ge=0, description="Seconds SIGTERM waits for in-flight deliveries."
    )

    # Function invoker (serving.knative.dev Services)
    invoker_backend: Literal["process", "kubernetes"] = Field(
        default="process",
        description="Where replicas run: local child processes, or existing Deployments.",
    )
    invoker_hold_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a replica (at zero, or all at their "
        "containerConcurrency) before it is answered 503 with Retry-After.",
    )
    invoker_queue_size: int = Field(
        default=1000, ge=1, description="Requests one Revision holds while waiting for replicas."
    )
    invoker_autoscaler_tick: float = Field(
        default=2.0, gt=0, description="Seconds between autoscaler decisions (Knative: 2 s)."
    )

    # Kubernetes API (ApiServerSource, the invoker's kubernetes backend)
    kubeconfig: str | None = Field(
        default=None,
        description="kubeconfig file; default: in-cluster config, else ~/.kube/config.",
    )
    kube_context: str | None = Field(default=None, description="kubeconfig context to use.")

    # Control plane (README "cemesh as a Knative Broker class"): where Brokers and Triggers live.
    control_plane: Literal["store", "kubernetes"] = Field(
        default="store",
        description="store: cemesh's own API and database; kubernetes: Knative Brokers of "
        "class broker_class and their Triggers on the Kubernetes API (kubeconfig).",
    )
    broker_class: str = Field(
        default="cemesh",
        description="The eventing.knative.dev/broker.class cemesh serves (control_plane "
        "kubernetes); Brokers of other classes are left alone.",
    )
    kube_namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces whose Brokers and Triggers cemesh serves (comma-separated); "
        "empty: all.",
    )
    kube_lease_namespace: str = Field(
        default="cemesh",
        description="Namespace of the Lease that elects the replica writing statuses.",
    )
    kube_watch_progress_bound: float = Field(
        default=150.0,
        gt=0,
        description="Seconds a watch may go without an event or bookmark before it relists.",
    )

    # Management API security (README "Security"). Lists may be given as comma-separated text.
    auth: Literal["required", "none"] = Field(
        default="required",
        description="required: every management API request needs a bearer token; none: "
        "nobody is asked (refused on a non-loopback host without 'cemesh serve --insecure').",
    )
    token_file: Path | None = Field(
        default=None,
        description="The local admin token, created on first start (0600); default: "
        "token in the user's config directory (e.g. ~/.config/cemesh/token).",
    )
    api_tokens_file: Path | None = Field(
        default=None, description="YAML list of static tokens: name, groups, sha256 or token."
    )
    rbac_file: Path | None = Field(
        default=None,
        description="YAML of Kubernetes RoleBinding/ClusterRoleBinding documents (roles view, "
        "edit, admin); the local token's subject is always admin.",
    )
    allow_processes: bool = Field(
        default=True,
        description="false: nobody may create or change what starts a local process "
        "(a ContainerSource with a command, a Service on the process backend).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the API answers besides loopback and PUBLIC_URL's ('*': any).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed cross-origin access to the API (none: no CORS headers).",
    )
    max_api_bytes: int = Field(
        default=1536 * 1024, ge=1024, description="Largest management API request body."
    )
    metrics_auth: bool = Field(
        default=False, description="true: /metrics needs a bearer token like the API."
    )
    console: bool = Field(
        default=True,
        description="Serve the web console at /console/ (behind the API's authentication).",
    )
    otlp_traces_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (http://host:4318/v1/traces): export spans.",
    )
    otlp_traces_sample_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces whose spans are exported (Knative's sample-rate); "
        "a sender's sampled or unsampled trace is followed as it says.",
    )
    metrics_detail: bool = Field(
        default=True,
        description="false: no per-Broker/Trigger counts and latencies (the hot path's cost).",
    )
    metrics_max_event_types: int = Field(
        default=100,
        ge=0,
        description="Distinct event types used as metric labels; later ones count as 'other'.",
    )

    @field_validator("allowed_hosts", "cors_origins", "kube_namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # Outbound guard (broker/controlplane/outbound.py)
    allow_link_local_destinations: bool = Field(
        default=False,
        description="Accept subscriber, sink, reply and dead-letter URIs at link-local or cloud "
        "metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254).",
    )
    error_data_max_bytes: int = Field(
        default=768,
        ge=0,
        description="Bytes of a failed subscriber's response body kept in knativeerrordata "
        "(base64: 768 bytes are 1024 characters).",
    )

    # Delivery identity (broker/controlplane/delivery_tokens.py,
    # broker/controlplane/signing_keys.py)
    delivery_oidc: bool = Field(
        default=False,
        description="Send a signed JWT (Authorization: Bearer) with every delivery, reply and "
        "dead letter to a destination with an audience (Knative's authentication-oidc).",
    )
    delivery_oidc_issuer: str | None = Field(
        default=None,
        description="iss of cemesh's own delivery tokens; default: the (https) public URL.",
    )
    delivery_token_lifetime: float = Field(
        default=300.0, ge=60, description="Seconds a delivery token is valid."
    )
    oidc_key_rotation_interval: float = Field(
        default=86_400.0, gt=0, description="Seconds between signing-key rotations."
    )
    oidc_key_publish_lead: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a new signing key is in the JWKS before it signs, so that "
        "verifiers and replicas see it first.",
    )
    oidc_key_check_interval: float = Field(
        default=15.0, gt=0, description="Seconds between checks of the shared signing keys."
    )

    # TLS (broker/server/tls.py)
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate chain: serve HTTPS (with tls_key_file)."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the cert.")
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates that issued tls_cert_file, published as CACerts in "
        "the https addresses of Brokers and Channels.",
    )
    https_port: int | None = Field(
        default=None,
        description="With a certificate: serve HTTPS here and plain HTTP on port (Knative's "
        "permissive mode). Unset: HTTPS on port only.",
    )
    public_https_url: str | None = Field(
        default=None, description="Base of https addresses; default https://HOST:HTTPS_PORT."
    )
    tls_reload_interval: float = Field(
        default=5.0, gt=0, description="Seconds between checks of the certificate files."
    )

    # Logging
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _ingress_oidc_needs_an_issuer(self) -> Settings:
        if self.ingress_oidc and not (self.ingress_oidc_issuer or self.oidc_issuer):
            raise ValueError(
                "ingress_oidc is on but no issuer is set: set CEMESH_INGRESS_OIDC_ISSUER or "
                "CEMESH_OIDC_ISSUER (and the JWKS URL, unless the issuer serves discovery)"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.https_port is not None and self.tls_cert_file is None:
            raise ValueError("https_port needs tls_cert_file and tls_key_file")
        if self.https_port is not None and self.https_port == self.port:
            raise ValueError("https_port must differ from port (unset it to serve only HTTPS)")
        if self.http_server == "granian" and self.tls_cert_file is not None:
            raise ValueError(
                "http_server granian serves plain HTTP only (it cannot reload a renewed "
                "certificate): unset tls_cert_file, tls_key_file and https_port, or use uvicorn"
            )
        return self

    def bus_options(self, bus: str) -> dict[str, Any]:
        """The options for adapter ``bus``: its settings ``<bus>_<option>`` that are set."""
        model = BUS_OPTIONS.get(bus)
        if model is None:
            return {}  # an adapter of another package: configured by its own means
        values = {option: getattr(self, f"{bus}_{option}") for option in model.model_fields}
        return {option: value for option, value in values.items() if value is not None}

    @property
    def tls(self) -> bool:
        """Whether cemesh serves HTTPS."""
        return self.tls_cert_file is not None

    @property
    def base_url(self) -> str:
        """Where this cemesh is reachable; addresses of Brokers and Channels start with it.

        With TLS on the main port (no https_port) it is the https URL: nothing plain is served.
        """
        scheme = "https" if self.tls and self.https_port is None else "http"
        return (self.public_url or f"{scheme}://{self._url_host}:{self.port}").rstrip("/")

    @property
    def https_base_url(self) -> str | None:
        """The base of https addresses, when HTTPS is served."""
        if not self.tls:
            return None
        if self.https_port is None:
            return self.base_url
        return (self.public_https_url or f"https://{self._url_host}:{self.https_port}").rstrip("/")

    @property
    def issuer(self) -> str:
        """``iss`` of cemesh's delivery tokens and the base of its discovery document."""
        return (self.delivery_oidc_issuer or self.https_base_url or self.base_url).rstrip("/")

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls, init_settings))


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by the ``config`` setting (argument or CEMESH_CONFIG)."""

    def __init__(
        self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._init = init_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        import os

        path = self._init().get("config") or os.environ.get("CEMESH_CONFIG")
        if not path:
            return {}
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ValueError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must be a mapping of setting names to values")
        return {str(k).replace("-", "_"): v for k, v in loaded.items()}
