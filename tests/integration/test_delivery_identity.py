"""cemesh's own identity for deliveries: subscribers verify its tokens against its JWKS over HTTP.

The subscribers here are real HTTP servers on loopback that do what a Knative-aware receiver
does: read cemesh's discovery document, fetch the JWKS it names (PyJWT's PyJWKClient, over
HTTP) and verify signature, ``iss``, ``aud`` and ``exp`` of the bearer token they received.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from broker.controlplane.delivery_tokens import DISCOVERY_PATH, JWKS_PATH
from broker.controlplane.signing_keys import KeyRing, load_keys
from broker.controlplane.store import Store
from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.subscriber import Received, RecordingSubscriber, Reply

EVENT = {
    "ce-specversion": "1.0",
    "ce-id": "1",
    "ce-source": "/test",
    "ce-type": "com.example.identity",
    "content-type": "application/json",
}


class Verifier:
    """What a subscriber does with cemesh's token: discovery, JWKS over HTTP, PyJWT checks."""

    def __init__(self, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self.claims: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.errors: list[str] = []
        self._jwks: jwt.PyJWKClient | None = None

    async def client(self) -> jwt.PyJWKClient:
        if self._jwks is None:
            async with httpx.AsyncClient() as http:
                discovery = (await http.get(f"{self.issuer}{DISCOVERY_PATH}")).json()
            assert discovery["issuer"] == self.issuer
            self._jwks = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
        return self._jwks

    async def verify(self, token: str, audience: str | None = None) -> dict[str, Any]:
        client = await self.client()
        # PyJWKClient fetches with blocking urllib; cemesh serves the JWKS on this very loop.
        key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
        return jwt.decode(
            token,
            key.key,
            algorithms=["RS256"],
            audience=audience or self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )

    async def respond(self, received: Received) -> Reply:
        header = received.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            self.errors.append(f"no bearer token: {header!r}")
            return (401, [], b"no token")
        token = header.removeprefix("Bearer ")
        try:
            claims = await self.verify(token)
        except jwt.PyJWTError as exc:
            self.errors.append(repr(exc))
            return (401, [], str(exc).encode())
        self.tokens.append(token)
        self.claims.append(claims)
        return (202, [], b"")


async def _trigger(
    cemesh: RunningCemesh, name: str, subscriber: dict[str, Any], **spec: Any
) -> None:
    await cemesh.apply(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": name},
            "spec": {"broker": "default", "subscriber": subscriber, **spec},
        }
    )


async def test_subscriber_verifies_the_delivery_token_against_cemesh_jwks_over_http(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, delivery_oidc=True, delivery_token_lifetime=120) as cemesh:
        verifier = Verifier(cemesh.url, "orders-subscriber")
        async with RecordingSubscriber(verifier.respond) as subscriber:
            await cemesh.apply(
                {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "metadata": {"name": "default"},
                }
            )
            await _trigger(
                cemesh, "orders", {"uri": subscriber.url, "audience": "orders-subscriber"}
            )
            for index in range(2):
                response = await cemesh.post_event(
                    "/default/default", {**EVENT, "ce-id": str(index)}, b"{}"
                )
                assert response.status_code == 202
            await subscriber.wait_for(2)
        assert verifier.errors == []
        first, _second = verifier.claims
        assert (
            first["sub"] == "system:serviceaccount:default:orders-oidc-eventing.knative.dev-trigger"
        )
        assert first["iss"] == cemesh.url and first["aud"] == "orders-subscriber"
        assert first["exp"] - first["iat"] == 120
        # Signed once, reused: the second event carried the very same token.
        assert verifier.tokens[0] == verifier.tokens[1]
        # The same token is no good for another audience.
        with pytest.raises(jwt.InvalidAudienceError):
            await verifier.verify(verifier.tokens[0], audience="someone-else")


async def test_destinations_without_an_audience_get_no_token(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, delivery_oidc=True) as cemesh, RecordingSubscriber() as sub:
        await cemesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default"},
            }
        )
        await _trigger(cemesh, "plain", {"uri": sub.url})
        await cemesh.post_event("/default/default", EVENT, b"{}")
        [received] = await sub.wait_for(1)
        assert "authorization" not in received.headers


async def test_dead_letter_sink_gets_a_token_for_its_own_audience(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, delivery_oidc=True) as cemesh:
        verifier = Verifier(cemesh.url, "dead-letters")
        async with (
            RecordingSubscriber(lambda r: (400, [], b"no")) as failing,
            RecordingSubscriber(verifier.respond) as sink,
        ):
            await cemesh.apply(
                {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "metadata": {"name": "default"},
                }
            )
            await _trigger(
                cemesh,
                "fails",
                {"uri": failing.url, "audience": "failing-subscriber"},
                delivery={"deadLetterSink": {"uri": sink.url, "audience": "dead-letters"}},
            )
            await cemesh.post_event("/default/default", EVENT, b"{}")
            await sink.wait_for(1)
            [to_subscriber] = await failing.wait_for(1)
        assert verifier.errors == []
        [claims] = verifier.claims
        assert claims["aud"] == "dead-letters"
        assert claims["sub"].endswith(":fails-oidc-eventing.knative.dev-trigger")
        assert to_subscriber.headers["authorization"].startswith("Bearer ")


async def test_discovery_and_jwks_need_no_credential_and_are_absent_when_off(
    tmp_path: Path,
) -> None:
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    async with (
        running_cemesh(tmp_path / "on", delivery_oidc=True) as cemesh,
        cemesh.client_with(None) as anonymous,
    ):
        discovery = await anonymous.get(DISCOVERY_PATH)
        assert discovery.status_code == 200
        assert discovery.json()["jwks_uri"] == f"{cemesh.url}{JWKS_PATH}"
        keys = (await anonymous.get(JWKS_PATH)).json()["keys"]
        assert [k["kty"] for k in keys] == ["RSA"] and all("d" not in k for k in keys)
    async with running_cemesh(tmp_path / "off") as cemesh:
        assert (await cemesh.client.get(JWKS_PATH)).status_code == 404


async def test_forced_rotation_old_tokens_still_verify_and_new_tokens_use_the_new_key(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path, delivery_oidc=True, oidc_key_publish_lead=0) as cemesh:
        tokens, keys = cemesh.runtime.tokens, cemesh.runtime.keys
        verifier = Verifier(cemesh.url, "aud-1")
        old_token = tokens.token("aud-1", "system:serviceaccount:default:a")
        old_kid = jwt.get_unverified_header(old_token)["kid"]
        new_key = await keys.rotate()
        new_token = tokens.token("aud-2", "system:serviceaccount:default:a")
        assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid != old_kid
        published = {k["kid"] for k in (await cemesh.client.get(JWKS_PATH)).json()["keys"]}
        assert published == {old_kid, new_key.kid}
        assert (await verifier.verify(old_token))["aud"] == "aud-1"
        assert (await verifier.verify(new_token, audience="aud-2"))["aud"] == "aud-2"


async def test_replicas_on_one_store_share_the_keys_and_pick_the_same_signer(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await store.open()
    try:
        rings = [
            KeyRing(store, rotation_interval=3600, token_lifetime=300, lead=60, check_interval=60)
            for _ in range(2)
        ]
        await rings[0].refresh()
        await rings[1].refresh()
        assert len(await load_keys(store)) == 1  # the second replica found the first's key
        assert rings[0].signer is not None and rings[1].signer is not None
        assert rings[0].signer.kid == rings[1].signer.kid
        assert rings[0].jwks() == rings[1].jwks()
    finally:
        await store.close()


async def test_a_source_sends_its_own_token_to_a_sink_with_an_audience(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path, delivery_oidc=True) as cemesh:
        verifier = Verifier(cemesh.url, "ping-sink")
        async with RecordingSubscriber(verifier.respond) as sink:
            await cemesh.apply(
                {
                    "apiVersion": "sources.knative.dev/v1",
                    "kind": "PingSource",
                    "metadata": {"name": "heartbeat"},
                    "spec": {
                        "schedule": "* * * * * *",  # every second (cemesh's 6-field form)
                        "sink": {"uri": sink.url, "audience": "ping-sink"},
                    },
                }
            )
            await sink.wait_for(1)
        assert verifier.errors == []
        assert verifier.claims[0]["sub"] == (
            "system:serviceaccount:default:heartbeat-oidc-sources.knative.dev-pingsource"
        )
