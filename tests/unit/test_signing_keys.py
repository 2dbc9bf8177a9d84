"""The signing-key rotation plan (pure): publish before signing, retire after the last token."""

from __future__ import annotations

from broker.auth.identity import delivery_subject, service_account_name
from broker.controlplane.signing_keys import CLOCK_SKEW, SigningKey, generate_key, plan

LIFETIME = 300.0
ROTATION = 3600.0


def _plan(keys: list[SigningKey], now: float):  # type: ignore[no-untyped-def]
    return plan(keys, now, rotation_interval=ROTATION, token_lifetime=LIFETIME)


def test_no_keys_means_rotate_and_nothing_signs_yet() -> None:
    current = _plan([], 1000.0)
    assert current.rotate and current.signer is None and current.published == ()


def test_a_new_key_is_published_before_it_signs() -> None:
    old = generate_key(0.0, 0.0)
    new = generate_key(ROTATION, ROTATION + 60)
    during_lead = _plan([old, new], ROTATION + 30)
    assert during_lead.signer == old
    assert {k.kid for k in during_lead.published} == {old.kid, new.kid}
    after_lead = _plan([old, new], ROTATION + 61)
    assert after_lead.signer == new


def test_the_old_key_stays_published_until_every_token_it_signed_expired() -> None:
    old = generate_key(0.0, 0.0)
    new = generate_key(ROTATION, ROTATION + 60)
    switch = new.activates_at
    still = _plan([old, new], switch + LIFETIME + CLOCK_SKEW - 1)
    assert old in still.published and still.expired == ()
    gone = _plan([old, new], switch + LIFETIME + CLOCK_SKEW)
    assert gone.expired == (old.kid,) and gone.published == (new,)


def test_rotation_is_due_once_the_newest_key_is_rotation_interval_old() -> None:
    key = generate_key(0.0, 0.0)
    assert not _plan([key], ROTATION - 1).rotate
    assert _plan([key], ROTATION).rotate


def test_public_jwk_carries_no_private_part() -> None:
    jwk = generate_key(0.0, 0.0).public_jwk()
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)


def test_delivery_subjects_follow_knative_oidc_service_account_names() -> None:
    assert (
        delivery_subject("messaging.knative.dev", "Subscription", "ns", "sub1")
        == "system:serviceaccount:ns:sub1-oidc-messaging.knative.dev-subscription"
    )
    long_a = service_account_name("eventing.knative.dev", "Trigger", "a" * 60)
    long_b = service_account_name("eventing.knative.dev", "Trigger", "a" * 59 + "b")
    assert len(long_a) <= 63 and long_a != long_b
    assert long_a.endswith("-oidc-eventing.knative.dev-trigger")
