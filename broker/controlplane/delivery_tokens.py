"""cemesh as an OIDC issuer for its own deliveries: tokens, the discovery document, the JWKS.

With ``CEMESH_DELIVERY_OIDC=true`` (Knative's ``authentication-oidc``), every delivery, reply and
dead letter to a destination with an ``audience`` carries ``Authorization: Bearer <JWT>``:
``iss`` = cemesh's issuer URL, ``sub`` = the Trigger's or Subscription's identity
(:mod:`broker.auth.identity`), ``aud`` = the destination's audience, ``exp`` = a few minutes.
:class:`DeliveryTokens` is the data plane's ``TokenSource``: a token is signed once per
(audience, subject) and reused until a fifth of its lifetime is left, so no event pays for a
signature. Verifiers find the keys through :data:`DISCOVERY_PATH` and :data:`JWKS_PATH` (the
paths Kubernetes serves its service-account issuer at); both need no credential.

PyJWT is imported when the first token is signed, not with this module (as in
:mod:`broker.controlplane.signing_keys`): a cemesh without delivery OIDC never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from broker.controlplane.signing_keys import ALGORITHM, KeyRing
from broker.core.errors import DeliveryError

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
OPEN_PATHS = (DISCOVERY_PATH, JWKS_PATH)  # served without a credential
_CACHE_LIMIT = 10_000  # (audience, subject) pairs come from configuration; this bounds a leak


@dataclass(frozen=True, slots=True)
class _Minted:
    token: str
    expires_at: float


class DeliveryTokens:
    """Signs and caches cemesh's delivery tokens (implements the deliverer's TokenSource)."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self.issuer = issuer.rstrip("/")
        self._lifetime = lifetime
        self._renew_before = lifetime / 5  # seconds of validity left when a new one is made
        self._clock = clock
        self._cache: dict[tuple[str, str], _Minted] = {}

    def token(self, audience: str, subject: str) -> str:
        now = self._clock()
        minted = self._cache.get((audience, subject))
        if minted is not None and minted.expires_at - now > self._renew_before:
            return minted.token
        signer = self._keys.signer
        if signer is None:
            raise DeliveryError("no signing key yet for the delivery token", retryable=True)
        issued = int(now)
        expires = issued + int(self._lifetime)
        import jwt  # deferred: see the module docstring

        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
        }
        token = jwt.encode(
            claims, signer.private_key, algorithm=ALGORITHM, headers={"kid": signer.kid}
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {k: m for k, m in self._cache.items() if m.expires_at > now}
        self._cache[(audience, subject)] = _Minted(token, float(expires))
        return token

    def discovery(self) -> dict[str, Any]:
        """The OpenID Provider metadata verifiers need: where the keys are, what signs."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}{JWKS_PATH}",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
        }


def install_issuer_routes(api: FastAPI, tokens: DeliveryTokens, keys: KeyRing) -> None:
    """Serve the discovery document and the JWKS (open: verifiers have no credential)."""

    @api.get(DISCOVERY_PATH, include_in_schema=False)
    async def openid_configuration() -> JSONResponse:
        return JSONResponse(tokens.discovery(), headers={"cache-control": "max-age=60"})

    @api.get(JWKS_PATH, include_in_schema=False)
    async def jwks() -> JSONResponse:
        # Short caching: a key is published `lead` seconds before it signs (signing_keys.py).
        return JSONResponse(
            keys.jwks(),
            media_type="application/jwk-set+json",
            headers={"cache-control": "max-age=30"},
        )
