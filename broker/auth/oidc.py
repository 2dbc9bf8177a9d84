"""OIDC bearer tokens: verify a JWT against an issuer's published keys (JWKS).

:class:`OidcVerifier` checks what makes a token trustworthy, with PyJWT (signatures are never
hand-written here): the signature against the issuer's key named by the token's ``kid``, with
an asymmetric algorithm only (``none`` and HMAC are refused, so a public key can never be used
as an HMAC secret); ``exp``, ``nbf`` and ``iat`` with a small leeway for clock skew; ``iss``
equal to the configured issuer; ``aud`` containing the audience the caller asks for.

Keys come from the configured JWKS URL, or from the ``jwks_uri`` of
``<issuer>/.well-known/openid-configuration``, fetched asynchronously with httpx and cached.
They are fetched again when a token names a key id not in the cache (the issuer rotated its
keys), at most once per ``min_refresh_interval`` so that a flood of made-up key ids cannot hammer
the JWKS server, and after ``refresh_interval`` in any case (in the background when the token's
key is known, so a slow JWKS server holds up no request). A periodic refresh that fails keeps
the keys already known; with no keys at all every token fails as :class:`Unauthenticated`
naming the JWKS problem (never a 500).

Verified tokens are cached by their text (and the audience asked for) until their ``exp``, in a
bounded map, so a sender that reuses one token pays for the signature check once. Once the keys
are due for a refresh, the next request takes the full path, which fetches them; the cache is
dropped when that shows a key was withdrawn.

:class:`OidcAuthenticator` puts a verifier behind the :class:`~broker.auth.Authenticator`
protocol for the management API (settings ``CEMESH_OIDC_*``, see :func:`verifier_from_settings`).

PyJWT (and with it ``cryptography``, a tenth of a second to import) is imported by the functions
that check a token, not with this module: a cemesh without OIDC never loads it (issue 14: the
restart time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from broker.auth.principal import Principal
from broker.core.config import Settings
from broker.core.errors import Unauthenticated
from broker.core.tasks import cancel_and_wait

if TYPE_CHECKING:  # a type only: PyJWT is imported where a token is checked (module docstring)
    import jwt

log = logging.getLogger(__name__)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "OidcAuthenticator",
    "OidcVerifier",
    "TrustedIssuers",
    "authenticator_from_settings",
    "groups_of",
    "looks_like_jwt",
    "verifier_from_settings",
]

# Algorithms a token may be signed with: public-key ones only.
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES256K",
        "ES384",
        "ES512",
        "EdDSA",
    }
)

Claims = dict[str, Any]


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the shape of a compact JWS (three base64url parts).

    Lets :class:`OidcAuthenticator` leave other kinds of tokens (local, static) to the next
    authenticator instead of rejecting them.
    """
    parts = token.split(".")
    return len(parts) == 3 and all(parts[:2]) and token[:2] == "ey"


def _describe_audience(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(repr(item) for item in value) or "none"
    return repr(value)


class OidcVerifier:
    """Verifies JWTs issued by one OIDC issuer; keys from its JWKS, cached and refreshed.

    ``issuer``: the exact ``iss`` tokens must carry. ``jwks_url``: where the keys are; None
    discovers it from ``<issuer>/.well-known/openid-configuration``. ``leeway``: seconds of
    clock skew allowed on ``exp``/``nbf``/``iat``. ``refresh_interval``: keys older than this
    are fetched again. ``min_refresh_interval``: the least time between two fetches (also after
    a failed one). ``cache_size``: how many verified tokens are remembered.
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str | None = None,
        leeway: float = 30.0,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 5.0,
        cache_size: int = 10_000,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        key_source: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.issuer = issuer
        self._jwks_url = jwks_url
        # A JWKS held in this process (cemesh's own signing keys): read, never fetched.
        self._key_source = key_source
        self._leeway = leeway
        self._refresh_interval = refresh_interval
        self._min_refresh_interval = min_refresh_interval
        self._cache_size = cache_size
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._clock = clock
        self._keys: dict[str, _Key] = {}  # by kid ("" for a key without one)
        self._fetched_at: float | None = None  # when the keys were last fetched successfully
        self._attempted_at: float | None = None  # when a fetch was last tried
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None  # a periodic refresh under way
        # token, audience -> (claims, expiry). Insertion order: the oldest is evicted first.
        self._verified: dict[tuple[str, str], tuple[Claims, float]] = {}

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered now."""
        return len(self._verified)

    async def close(self) -> None:
        await cancel_and_wait(self._background)
        if self._own_client:
            await self._client.aclose()

    # -- verification ----------------------------------------------------------------------

    def cached(self, token: str, audience: str) -> Claims | None:
        """The claims of ``token`` if it verified for ``audience`` before and has not expired.

        The ingress's fast path: no coroutine, one dict lookup. None means "call verify".
        """
        entry = self._verified.get((token, audience))
        if entry is None:
            return None
        claims, expiry = entry
        now = self._clock()
        if now >= expiry:
            del self._verified[(token, audience)]
            return None
        if self._attempted_at is not None and now - self._attempted_at >= self._refresh_interval:
            return None  # time to look at the JWKS again (a withdrawn key ends its tokens)
        return claims

    async def verify(self, token: str, audience: str) -> Claims:
        """The claims of ``token`` if it verifies for ``audience``; else Unauthenticated."""
        claims = self.cached(token, audience)
        if claims is not None:
            return claims
        import jwt  # deferred: see the module docstring

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a valid JWT: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise Unauthenticated(
                f"the token's algorithm {algorithm!r} is not accepted; "
                f"use one of {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
        key = await self._key_for(header.get("kid"))
        if key.algorithm is not None and key.algorithm != algorithm:
            raise Unauthenticated(
                f"the token says algorithm {algorithm} but key {header.get('kid')!r} is "
                f"for {key.algorithm}"
            )
        claims = self._decode(token, key.jwk, algorithm, audience)
        self._remember(token, audience, claims)
        return claims

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str, audience: str) -> Claims:
        import jwt  # deferred: see the module docstring

        try:
            claims: Claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired (exp is in the past)") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated(f"the token is not valid yet: {exc}") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated(
                f"the token's audience ({_describe_audience(_unverified(token).get('aud'))}) "
                f"does not include {audience!r}"
            ) from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated(
                f"the token's issuer {_unverified(token).get('iss')!r} is not {self.issuer!r}"
            ) from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("the token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token does not verify: {exc}") from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthenticated("the token's 'sub' claim must be a non-empty string")
        return claims

    def _remember(self, token: str, audience: str, claims: Claims) -> None:
        if self._cache_size <= 0:
            return
        expiry = float(claims["exp"])  # without the leeway: a cached token never outlives it
        if len(self._verified) >= self._cache_size:
            self._verified.pop(next(iter(self._verified)))
        self._verified[(token, audience)] = (claims, expiry)

    # -- keys ------------------------------------------------------------------------------

    async def _key_for(self, kid: object) -> _Key:
        name = kid if isinstance(kid, str) else ""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._refresh_interval
        if name in self._keys and stale:
            # A known key: verify with it now and refresh in the background, so a slow or
            # hanging JWKS server never holds up requests whose key is known.
            if self._background is None or self._background.done():
                self._background = asyncio.create_task(self._refresh(force=False))
        elif stale or name not in self._keys:
            await self._refresh(force=not stale)
        key = self._keys.get(name)
        if key is None and not name and len(self._keys) == 1:
            key = next(iter(self._keys.values()))  # a token without kid, an issuer with one key
        if key is not None:
            return key
        if not self._keys:
            raise Unauthenticated(
                f"cannot verify tokens: no signing keys from issuer {self.issuer!r} "
                f"({self._last_error or 'the JWKS has no usable keys'})",
                retryable=True,
            )
        known = ", ".join(repr(k) for k in sorted(self._keys)) or "none"
        raise Unauthenticated(
            f"the token's key id {name!r} is not among the issuer's keys ({known})"
        )

    async def _refresh(self, *, force: bool) -> None:
        """Fetch the keys, unless a fetch was tried within ``min_refresh_interval``.

        ``force``: fetch although the keys are not stale (an unknown kid); still rate-limited.
        """
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < (
                self._min_refresh_interval
            ):
                return  # fetched (or tried) just now, maybe by a request that waited on the lock
            fresh = self._fetched_at is not None and now - self._fetched_at < self._refresh_interval
            if fresh and not force:
                return
            self._attempted_at = now
            try:
                keys = await self._fetch_keys()
            except Unauthenticated as exc:
                self._last_error = exc.message
                if self._keys:
                    log.warning(
                        "JWKS refresh failed; keeping the keys known",
                        extra={"issuer": self.issuer, "error": exc.message},
                    )
                return
            withdrawn = set(self._keys) - set(keys)
            if withdrawn:
                self._verified.clear()  # tokens signed with a withdrawn key verify no more
            self._keys, self._fetched_at, self._last_error = keys, now, None

    async def _fetch_keys(self) -> dict[str, _Key]:
        if self._key_source is not None:
            url, document = "cemesh's own JWKS", self._key_source()
        else:
            url = self._jwks_url or await self._discover()
            document = await self._get_json(url, "JWKS")
        import jwt  # deferred: see the module docstring

        try:
            key_set = jwt.PyJWKSet.from_dict(dict(document))
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the JWKS at {url} has no usable keys: {exc}") from exc
        # The algorithm a key declares ("alg") binds it; PyJWK's guess for keys without one
        # (RS256 for any RSA key) must not refuse an RS384 or PS256 token.
        declared = {
            entry.get("kid") or "": entry.get("alg")
            for entry in document.get("keys") or []
            if isinstance(entry, Mapping)
        }
        return {key.key_id or "": _Key(key, declared.get(key.key_id or "")) for key in key_set.keys}

    async def _discover(self) -> str:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        document = await self._get_json(url, "OpenID configuration")
        if document.get("issuer") not in (self.issuer, self.issuer.rstrip("/")):
            raise Unauthenticated(
                f"the OpenID configuration at {url} names issuer {document.get('issuer')!r}, "
                f"not {self.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise Unauthenticated(f"the OpenID configuration at {url} has no jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str, what: str) -> Mapping[str, Any]:
        try:
            response = await self._client.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise Unauthenticated(
                f"cannot fetch the {what} from {url}: {exc or type(exc).__name__}",
                retryable=True,
            ) from exc
        if response.status_code != 200:
            raise Unauthenticated(
                f"cannot fetch the {what} from {url}: HTTP {response.status_code}", retryable=True
            )
        try:
            document = response.json()
        except ValueError as exc:
            raise Unauthenticated(f"the {what} at {url} is not JSON") from exc
        if not isinstance(document, Mapping):
            raise Unauthenticated(f"the {what} at {url} is not a JSON object")
        return document


@dataclass(frozen=True, slots=True)
class _Key:
    """A key of the issuer's JWKS and the algorithm it declares (``alg``), if any."""

    jwk: jwt.PyJWK
    algorithm: str | None


def _unverified(token: str) -> Claims:
    """The claims of a token whose check failed, for the error message only."""
    import jwt  # deferred: see the module docstring

    try:
        claims: Claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims


class TrustedIssuers:
    """Verifies tokens from any of several issuers, each with its own :class:`OidcVerifier`.

    The ingress trusts the configured issuer (senders' tokens) and cemesh's own (its deliveries,
    replies and flows' hops that reach a Broker or Channel over HTTP carry tokens cemesh signed).
    The issuer is chosen by the token's ``iss`` (read unverified, then checked by that issuer's
    verifier); a token from any other issuer is Unauthenticated.
    """

    def __init__(self, verifiers: list[OidcVerifier]) -> None:
        self._verifiers = {verifier.issuer: verifier for verifier in verifiers}

    def cached(self, token: str, audience: str) -> Claims | None:
        for verifier in self._verifiers.values():
            claims = verifier.cached(token, audience)
            if claims is not None:
                return claims
        return None

    async def verify(self, token: str, audience: str) -> Claims:
        import jwt  # deferred: see the module docstring

        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a valid JWT: {exc}") from exc
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            trusted = ", ".join(sorted(self._verifiers))
            raise Unauthenticated(
                f"tokens from issuer {issuer!r} are not trusted (trusted: {trusted})"
            )
        return await verifier.verify(token, audience)

    async def close(self) -> None:
        for verifier in self._verifiers.values():
            await verifier.close()


class OidcAuthenticator:
    """The management API's OIDC authenticator: a verified JWT's ``sub`` is the principal.

    Tokens that are not JWTs are left to the next authenticator (returns None); a JWT that does
    not verify raises Unauthenticated with the reason. Groups come from ``groups_claim`` (a list
    of strings, or one string).
    """

    def __init__(
        self, verifier: OidcVerifier, audience: str, *, groups_claim: str = "groups"
    ) -> None:
        self.verifier = verifier
        self.audience = audience
        self.groups_claim = groups_claim

    async def authenticate(self, token: str) -> Principal | None:
        if not looks_like_jwt(token):
            return None
        claims = await self.verifier.verify(token, self.audience)
        return Principal(
            name=claims["sub"], groups=groups_of(claims, self.groups_claim), via="oidc"
        )


def groups_of(claims: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    """The groups a token's ``claim`` names: a list of strings or one string; else none."""
    value = claims.get(claim)
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str) and item)
    return ()


def verifier_from_settings(settings: Settings, *, ingress: bool = False) -> OidcVerifier | None:
    """The verifier the settings describe: the management API's, or (``ingress``) the senders'.

    The ingress uses ``ingress_oidc_issuer``/``ingress_oidc_jwks_url`` when set, else the shared
    ``oidc_issuer``/``oidc_jwks_url``. None when no issuer is configured (or, for the ingress,
    when ``ingress_oidc`` is off).
    """
    if ingress:
        if not settings.ingress_oidc:
            return None
        issuer = settings.ingress_oidc_issuer or settings.oidc_issuer
        jwks_url = settings.ingress_oidc_jwks_url or (
            settings.oidc_jwks_url if issuer == settings.oidc_issuer else None
        )
    else:
        issuer, jwks_url = settings.oidc_issuer, settings.oidc_jwks_url
    if not issuer:
        return None
    return OidcVerifier(
        issuer,
        jwks_url=jwks_url,
        leeway=settings.oidc_leeway,
        refresh_interval=settings.oidc_jwks_refresh_interval,
        min_refresh_interval=settings.oidc_jwks_min_refresh_interval,
        cache_size=settings.oidc_token_cache_size,
    )


def authenticator_from_settings(settings: Settings) -> OidcAuthenticator | None:
    """The management API's OIDC authenticator; None unless issuer and audience are set."""
    verifier = verifier_from_settings(settings)
    if verifier is None or not settings.oidc_audience:
        return None
    return OidcAuthenticator(
        verifier, settings.oidc_audience, groups_claim=settings.oidc_groups_claim
    )
