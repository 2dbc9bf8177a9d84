"""OidcVerifier against a real issuer: JWKS served over HTTP on loopback, keys made by the test."""

from __future__ import annotations

import time

import jwt
import pytest

from broker.auth import Principal
from broker.auth.oidc import OidcAuthenticator, OidcVerifier
from broker.core.errors import Unauthenticated
from tests.support.flows import wait_until
from tests.support.oidc_issuer import TestIssuer, make_key

AUDIENCE = "eventing.knative.dev/broker/default/default"
SUB = "system:serviceaccount:default:sender"


@pytest.fixture
async def issuer():
    async with TestIssuer() as running:
        yield running


def verifier_for(issuer: TestIssuer, **options: object) -> OidcVerifier:
    options.setdefault("jwks_url", issuer.jwks_url)
    return OidcVerifier(issuer.issuer, **options)  # type: ignore[arg-type]


async def refused(verifier: OidcVerifier, token: str, audience: str = AUDIENCE) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token, audience)
    return caught.value.message


async def test_valid_rs256_and_es256_tokens_verify_and_give_their_claims(issuer):
    verifier = verifier_for(issuer)
    try:
        for kid in ("key-0", "key-1"):  # RS256, ES256
            claims = await verifier.verify(issuer.token(SUB, audience=AUDIENCE, kid=kid), AUDIENCE)
            assert claims["sub"] == SUB
            assert claims["iss"] == issuer.issuer
    finally:
        await verifier.close()


async def test_an_audience_list_containing_the_wanted_one_verifies(issuer):
    verifier = verifier_for(issuer)
    try:
        token = issuer.token(SUB, audience=["other", AUDIENCE])
        assert (await verifier.verify(token, AUDIENCE))["sub"] == SUB
    finally:
        await verifier.close()


async def test_keys_are_discovered_from_the_issuer_when_no_jwks_url_is_given(issuer):
    verifier = OidcVerifier(issuer.issuer)
    try:
        await verifier.verify(issuer.token(SUB, audience=AUDIENCE), AUDIENCE)
        assert issuer.discovery_requests == 1
        assert issuer.jwks_requests == 1
    finally:
        await verifier.close()


async def test_an_expired_token_is_refused_as_expired(issuer):
    verifier = verifier_for(issuer, leeway=5)
    try:
        message = await refused(verifier, issuer.token(SUB, audience=AUDIENCE, expires_in=-60))
        assert "expired" in message
    finally:
        await verifier.close()


async def test_expiry_within_the_leeway_is_still_accepted(issuer):
    verifier = verifier_for(issuer, leeway=60)
    try:
        token = issuer.token(SUB, audience=AUDIENCE, expires_in=-10)
        assert (await verifier.verify(token, AUDIENCE))["sub"] == SUB
    finally:
        await verifier.close()


async def test_a_token_not_valid_yet_is_refused(issuer):
    verifier = verifier_for(issuer, leeway=5)
    try:
        message = await refused(verifier, issuer.token(SUB, audience=AUDIENCE, not_before=600))
        assert "not valid yet" in message
        message = await refused(verifier, issuer.token(SUB, audience=AUDIENCE, issued_at=600))
        assert "not valid yet" in message
    finally:
        await verifier.close()


async def test_a_wrong_audience_is_refused_naming_both(issuer):
    verifier = verifier_for(issuer)
    try:
        message = await refused(verifier, issuer.token(SUB, audience="somewhere-else"))
        assert "'somewhere-else'" in message and AUDIENCE in message
    finally:
        await verifier.close()


async def test_a_wrong_issuer_is_refused_naming_both(issuer):
    verifier = verifier_for(issuer)
    try:
        token = issuer.token(SUB, audience=AUDIENCE, issuer="https://evil.example")
        message = await refused(verifier, token)
        assert "https://evil.example" in message and issuer.issuer in message
    finally:
        await verifier.close()


async def test_a_bad_signature_is_refused(issuer):
    verifier = verifier_for(issuer)
    try:
        forged = make_key("key-0")  # same kid, another private key
        token = jwt.encode(
            {"iss": issuer.issuer, "sub": SUB, "aud": AUDIENCE, "exp": int(time.time()) + 60},
            forged.private,
            algorithm="RS256",
            headers={"kid": "key-0"},
        )
        assert "signature does not verify" in await refused(verifier, token)
        header, payload, signature = issuer.token(SUB, audience=AUDIENCE).split(".")
        tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
        assert "signature" in await refused(verifier, tampered)
    finally:
        await verifier.close()


async def test_symmetric_and_unsigned_tokens_are_refused_by_algorithm(issuer):
    verifier = verifier_for(issuer)
    try:
        claims = {"iss": issuer.issuer, "sub": SUB, "aud": AUDIENCE, "exp": int(time.time()) + 60}
        hmac = jwt.encode(claims, "a-shared-secret-of-32-bytes-long!", algorithm="HS256")
        assert "'HS256' is not accepted" in await refused(verifier, hmac)
        unsigned = jwt.encode(claims, None, algorithm="none")
        assert "'none' is not accepted" in await refused(verifier, unsigned)
    finally:
        await verifier.close()


async def test_a_key_binds_the_algorithm_it_declares_and_only_that(issuer):
    verifier = verifier_for(issuer, min_refresh_interval=0)
    try:
        token = issuer.token(SUB, audience=AUDIENCE, algorithm="RS384")  # key-0 declares RS256
        assert "key 'key-0' is for RS256" in await refused(verifier, token)
        issuer.add_key("plain").declares_alg = False  # an RSA JWK without "alg"
        token = issuer.token(SUB, audience=AUDIENCE, kid="plain", algorithm="RS384")
        assert (await verifier.verify(token, AUDIENCE))["sub"] == SUB
    finally:
        await verifier.close()


async def test_garbage_and_tokens_without_sub_are_refused(issuer):
    verifier = verifier_for(issuer)
    try:
        assert "not a valid JWT" in await refused(verifier, "not-a-jwt")
        key = issuer.keys["key-0"]
        no_sub = jwt.encode(
            {"iss": issuer.issuer, "aud": AUDIENCE, "exp": int(time.time()) + 60},
            key.private,
            algorithm="RS256",
            headers={"kid": "key-0"},
        )
        assert "'sub'" in await refused(verifier, no_sub)
    finally:
        await verifier.close()


async def test_an_unknown_kid_is_accepted_once_the_issuer_publishes_the_rotated_key(issuer):
    verifier = verifier_for(issuer, min_refresh_interval=0)
    try:
        await verifier.verify(issuer.token(SUB, audience=AUDIENCE), AUDIENCE)
        issuer.add_key("key-next", published=False)
        token = issuer.token(SUB, audience=AUDIENCE, kid="key-next")
        assert "'key-next' is not among" in await refused(verifier, token)
        issuer.publish("key-next")  # rotation: the new key appears in the JWKS
        assert (await verifier.verify(token, AUDIENCE))["sub"] == SUB
    finally:
        await verifier.close()


async def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval(issuer):
    verifier = verifier_for(issuer, min_refresh_interval=60)
    try:
        await verifier.verify(issuer.token(SUB, audience=AUDIENCE), AUDIENCE)
        assert issuer.jwks_requests == 1
        for index in range(50):
            issuer.add_key(f"bogus-{index}", published=False)
            await refused(verifier, issuer.token(SUB, audience=AUDIENCE, kid=f"bogus-{index}"))
        assert issuer.jwks_requests == 1
    finally:
        await verifier.close()


async def test_a_jwks_server_that_is_down_fails_verification_with_a_clear_reason(issuer):
    await issuer.stop()
    verifier = verifier_for(issuer)
    try:
        with pytest.raises(Unauthenticated) as caught:
            await verifier.verify(issuer.token(SUB, audience=AUDIENCE), AUDIENCE)
        assert "no signing keys" in caught.value.message
        assert "cannot fetch the JWKS" in caught.value.message
        assert caught.value.retryable
    finally:
        await verifier.close()
        await issuer.start()


async def test_a_jwks_server_going_down_keeps_the_keys_already_known(issuer):
    now = [time.time()]
    verifier = verifier_for(
        issuer, refresh_interval=60, min_refresh_interval=1, clock=lambda: now[0]
    )
    try:
        await verifier.verify(issuer.token(SUB, audience=AUDIENCE), AUDIENCE)
        await issuer.stop()
        now[0] += 120  # the keys are stale: the refresh fails, the known keys stay
        token = issuer.token("system:serviceaccount:default:other", audience=AUDIENCE)
        assert (await verifier.verify(token, AUDIENCE))["sub"].endswith(":other")
    finally:
        await verifier.close()
        await issuer.start()


async def test_a_verified_token_is_cached_until_a_refresh_withdraws_its_key(issuer):
    verifier = verifier_for(issuer, min_refresh_interval=0)
    try:
        token = issuer.token(SUB, audience=AUDIENCE)
        await verifier.verify(token, AUDIENCE)
        assert verifier.cached_tokens == 1
        await verifier.verify(token, AUDIENCE)
        assert verifier.cached_tokens == 1
        issuer.withdraw("key-0")
        issuer.add_key("key-2")
        await verifier.verify(issuer.token(SUB, audience=AUDIENCE, kid="key-2"), AUDIENCE)
        assert "'key-0' is not among" in await refused(verifier, token)
    finally:
        await verifier.close()


async def test_a_cached_token_is_refused_once_a_periodic_refresh_withdraws_its_key(issuer):
    now = [time.time()]
    verifier = verifier_for(issuer, refresh_interval=60, clock=lambda: now[0])
    try:
        token = issuer.token(SUB, audience=AUDIENCE)
        await verifier.verify(token, AUDIENCE)
        issuer.withdraw("key-0")
        assert (await verifier.verify(token, AUDIENCE))["sub"] == SUB  # cached, keys fresh
        now[0] += 61  # due: the next check refreshes in the background, not holding it up
        await verifier.verify(token, AUDIENCE)
        await wait_until(lambda: verifier.cached_tokens == 0)  # the withdrawal was seen
        assert "'key-0' is not among" in await refused(verifier, token)
    finally:
        await verifier.close()


@pytest.mark.parametrize("size", [0, 3])
async def test_the_token_cache_is_bounded(issuer, size):
    verifier = verifier_for(issuer, cache_size=size)
    try:
        for index in range(6):
            sub = f"system:serviceaccount:default:s{index}"
            token = issuer.token(sub, audience=AUDIENCE)
            assert (await verifier.verify(token, AUDIENCE))["sub"] == sub
            assert (await verifier.verify(token, AUDIENCE))["sub"] == sub
        assert verifier.cached_tokens == size
    finally:
        await verifier.close()


async def test_the_authenticator_names_the_principal_by_sub_with_groups(issuer):
    verifier = verifier_for(issuer)
    authenticator = OidcAuthenticator(verifier, "cemesh-api", groups_claim="roles")
    try:
        token = issuer.token("alice", audience="cemesh-api", extra={"roles": ["ops", 7, "dev"]})
        assert await authenticator.authenticate(token) == Principal(
            "alice", ("ops", "dev"), via="oidc"
        )
        assert await authenticator.authenticate("a-static-token") is None
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(issuer.token("alice", audience="elsewhere"))
    finally:
        await verifier.close()
