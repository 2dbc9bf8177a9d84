"""Builds one cemesh's access control from its Settings: the one place authenticators are listed.

:func:`build_access` returns the :class:`Access` the management API uses: the authenticators in
the order they are asked (the local token, static tokens, and OIDC when configured: adding an
authenticator is one line in :func:`build_authenticators`), the RBAC bindings (the file's plus
the built-in one making the local token's subject admin), and the process rules.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.auth.local_token import (
    LOCAL_SUBJECT,
    LocalTokenAuthenticator,
    default_token_path,
    ensure_token,
)
from broker.auth.oidc import authenticator_from_settings
from broker.auth.principal import Authenticator, Principal
from broker.auth.rbac import Binding, Subject, load_bindings
from broker.auth.static_tokens import StaticTokenAuthenticator, load_tokens
from broker.core.config import Settings
from broker.core.errors import InvalidConfig, Unauthenticated

log = logging.getLogger(__name__)

# Who the management API sees when authentication is switched off (CEMESH_AUTH=none).
ANONYMOUS = Principal("system:anonymous", via="none")
LOCAL_ADMIN_BINDING = Binding("admin", (Subject("User", LOCAL_SUBJECT),), None, "cemesh-local")
ANONYMOUS_ADMIN_BINDING = Binding(
    "admin", (Subject("User", ANONYMOUS.name),), None, "cemesh-auth-none"
)


@dataclass(frozen=True, slots=True)
class Access:
    """Everything the management API needs to decide who may do what."""

    required: bool  # False: CEMESH_AUTH=none, everyone is ANONYMOUS (admin)
    authenticators: tuple[Authenticator, ...]
    bindings: tuple[Binding, ...]
    token_file: Path | None  # the local token's file (None when auth is off)
    allow_processes: bool
    invoker_backend: str

    async def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer ``token`` proves; Unauthenticated (401) when none does."""
        if not self.required:
            return ANONYMOUS
        if not token:
            raise Unauthenticated(
                "this API needs a bearer token (Authorization: Bearer <token>); the cemesh CLI "
                "reads the local token file by itself, or give it with --token / CEMESH_TOKEN"
            )
        return await authenticate(self.authenticators, token)


async def authenticate(authenticators: Sequence[Authenticator], token: str) -> Principal:
    """The first authenticator that recognises ``token`` decides; Unauthenticated if none."""
    for authenticator in authenticators:
        principal = await authenticator.authenticate(token)
        if principal is not None:
            return principal
    raise Unauthenticated(
        "the bearer token is not valid: it is not the local token nor a configured token"
    )


def token_path(settings: Settings) -> Path:
    return settings.token_file or default_token_path()


def build_authenticators(settings: Settings) -> list[Authenticator]:
    """The configured authenticators, in the order they are asked."""
    path = token_path(settings)
    try:
        local = ensure_token(path)
    except OSError as exc:
        raise InvalidConfig(
            f"cannot create or read the local token file {path}: {exc.strerror or exc}; "
            "set CEMESH_TOKEN_FILE to a writable path"
        ) from exc
    authenticators: list[Authenticator] = [LocalTokenAuthenticator(local)]
    if settings.api_tokens_file is not None:
        authenticators.append(StaticTokenAuthenticator(load_tokens(settings.api_tokens_file)))
    oidc = authenticator_from_settings(settings)
    if oidc is not None:  # OIDC bearer tokens (JWT), when issuer and audience are configured
        authenticators.append(oidc)
    return authenticators


def build_access(settings: Settings) -> Access:
    """The access control of a cemesh with ``settings``; InvalidConfig for unusable files."""
    required = settings.auth == "required"
    bindings = [LOCAL_ADMIN_BINDING if required else ANONYMOUS_ADMIN_BINDING]
    if settings.rbac_file is not None:
        bindings.extend(load_bindings(settings.rbac_file))
    return Access(
        required=required,
        authenticators=tuple(build_authenticators(settings)) if required else (),
        bindings=tuple(bindings),
        token_file=token_path(settings) if required else None,
        allow_processes=settings.allow_processes,
        invoker_backend=settings.invoker_backend,
    )


def listen_refusal(host: str, auth: str, *, insecure: bool) -> str | None:
    """Why cemesh must not listen on ``host`` with ``auth`` (None: it may), as one line.

    With authentication off, anyone who reaches the port may run commands as cemesh's user;
    that is acceptable on loopback, and elsewhere only when asked for with ``--insecure``.
    """
    from broker.auth.hosts import is_loopback

    if auth != "none" or insecure or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} with authentication off (CEMESH_AUTH=none): anyone who "
        "can reach it could run commands as this user; listen on 127.0.0.1, switch "
        "authentication on, or pass --insecure if you really mean it"
    )
