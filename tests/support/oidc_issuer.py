"""A real OIDC issuer for tests: keys made with ``cryptography``, served over HTTP on loopback.

:class:`TestIssuer` serves ``/.well-known/openid-configuration`` and its JWKS (``/keys``) with
uvicorn inside the test's event loop (:class:`~tests.support.subscriber.LoopbackServer`), and
signs tokens with its private keys (PyJWT). A test can add a key (rotation), withdraw one, stop
the server (the JWKS is down) and start it again on the same port, and count JWKS fetches::

    async with TestIssuer() as issuer:
        token = issuer.token("system:serviceaccount:default:app", audience="...")
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.subscriber import LoopbackServer


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any
    published: bool = True  # in the JWKS
    declares_alg: bool = True  # its JWK says "alg" (many issuers' do not)

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.algorithm.startswith("RS"):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        declared = {"alg": self.algorithm} if self.declares_alg else {}
        return {**jwk, "kid": self.kid, **declared, "use": "sig"}


def make_key(kid: str, algorithm: str = "RS256") -> SigningKey:
    if algorithm.startswith("RS"):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid, algorithm, private)


class TestIssuer:
    """An OIDC issuer on ``http://127.0.0.1:PORT``: discovery, JWKS, and token signing."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> None:
        self.keys: dict[str, SigningKey] = {}
        for index, algorithm in enumerate(algorithms):
            self.add_key(f"key-{index}", algorithm)
        self.jwks_requests = 0
        self.discovery_requests = 0
        self._server = LoopbackServer(self._app, name="OIDC issuer")
        self.url = ""

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/keys"

    async def __aenter__(self) -> TestIssuer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.url = await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    # -- keys --------------------------------------------------------------------------------

    def add_key(self, kid: str, algorithm: str = "RS256", *, published: bool = True) -> SigningKey:
        key = make_key(kid, algorithm)
        key.published = published
        self.keys[kid] = key
        return key

    def publish(self, kid: str) -> None:
        self.keys[kid].published = True

    def withdraw(self, kid: str) -> None:
        self.keys[kid].published = False

    # -- tokens ------------------------------------------------------------------------------

    def token(
        self,
        sub: str,
        *,
        audience: str | list[str],
        kid: str = "key-0",
        expires_in: float = 300,
        not_before: float | None = None,
        issued_at: float | None = None,
        issuer: str | None = None,
        extra: Mapping[str, Any] | None = None,
        algorithm: str | None = None,
    ) -> str:
        """A signed JWT; times are seconds relative to now."""
        now = time.time()
        claims: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": sub,
            "aud": audience,
            "exp": int(now + expires_in),
            "iat": int(now if issued_at is None else now + issued_at),
            **(extra or {}),
        }
        if not_before is not None:
            claims["nbf"] = int(now + not_before)
        key = self.keys[kid]
        return jwt.encode(
            claims, key.private, algorithm=algorithm or key.algorithm, headers={"kid": kid}
        )

    # -- HTTP --------------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/.well-known/openid-configuration":
            self.discovery_requests += 1
            body = orjson.dumps(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                }
            )
            status = 200
        elif path == "/keys":
            self.jwks_requests += 1
            body = orjson.dumps({"keys": [k.jwk() for k in self.keys.values() if k.published]})
            status = 200
        else:
            body, status = b'{"error": "not found"}', 404
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
