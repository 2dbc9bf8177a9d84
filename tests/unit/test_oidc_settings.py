"""OIDC settings: which verifier and authenticator they describe, and what they refuse."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.auth.oidc import authenticator_from_settings, verifier_from_settings
from broker.core.config import Settings


def test_ingress_oidc_without_an_issuer_refuses_to_start_naming_the_settings():
    with pytest.raises(ValidationError) as caught:
        Settings(ingress_oidc=True)
    assert "CEMESH_INGRESS_OIDC_ISSUER" in str(caught.value)
    assert "CEMESH_OIDC_ISSUER" in str(caught.value)


def test_an_unknown_default_authorization_mode_is_refused():
    with pytest.raises(ValidationError):
        Settings(default_authorization_mode="allow-some")  # type: ignore[arg-type]


async def test_with_ingress_oidc_off_the_ingress_has_no_verifier():
    assert verifier_from_settings(Settings(oidc_issuer="https://i"), ingress=True) is None


async def test_the_ingress_uses_its_own_issuer_when_set_else_the_shared_one():
    shared = verifier_from_settings(
        Settings(ingress_oidc=True, oidc_issuer="https://api", oidc_jwks_url="https://api/k"),
        ingress=True,
    )
    own = verifier_from_settings(
        Settings(
            ingress_oidc=True,
            oidc_issuer="https://api",
            oidc_jwks_url="https://api/k",
            ingress_oidc_issuer="https://senders",
        ),
        ingress=True,
    )
    assert shared is not None and own is not None
    try:
        assert shared.issuer == "https://api"
        assert own.issuer == "https://senders"
    finally:
        await shared.close()
        await own.close()


async def test_the_api_authenticator_needs_both_issuer_and_audience():
    assert authenticator_from_settings(Settings(oidc_issuer="https://i")) is None
    authenticator = authenticator_from_settings(
        Settings(oidc_issuer="https://i", oidc_audience="cemesh", oidc_groups_claim="roles")
    )
    assert authenticator is not None
    try:
        assert authenticator.audience == "cemesh"
        assert authenticator.groups_claim == "roles"
    finally:
        await authenticator.verifier.close()
