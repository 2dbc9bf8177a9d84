"""Reconcile with TLS and delivery identity: https addresses in status (strict and permissive),
and the audience and CACerts of destinations carried into the data plane's specs."""

from __future__ import annotations

from typing import Any

from broker.core.spec import DeliveryPolicy
from broker.server.features import reconcile
from tests.unit.test_reconcile import BASE, IMC, backing, broker, channel, subscription, trigger

DEFAULT = DeliveryPolicy()
HTTPS = "https://127.0.0.1:8443"
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _run(
    *objects: dict[str, Any], base: str = BASE, https: str | None = None, ca: str | None = None
):  # type: ignore[no-untyped-def]
    return reconcile(
        list(objects), base_url=base, default_delivery=DEFAULT, https_base_url=https, ca_certs=ca
    )


def test_permissive_lists_http_and_https_and_prefers_https() -> None:
    status = _run(broker(), https=HTTPS, ca=CA).statuses["b1"]
    https = {"name": "https", "url": f"{HTTPS}/default/default", "CACerts": CA}
    assert status["address"] == https
    assert status["addresses"] == [{"name": "http", "url": f"{BASE}/default/default"}, https]


def test_strict_lists_only_the_https_address() -> None:
    status = _run(broker(), base=HTTPS, https=HTTPS).statuses["b1"]
    assert status["addresses"] == [{"name": "https", "url": f"{HTTPS}/default/default"}]


def test_without_tls_only_http() -> None:
    status = _run(broker()).statuses["b1"]
    assert status["address"] == {"name": "http", "url": f"{BASE}/default/default"}


def test_audience_and_cacerts_of_destinations_reach_the_trigger_spec() -> None:
    target = trigger(
        subscriber={"uri": "https://s.example/", "audience": "s-aud"},
        delivery={"deadLetterSink": {"uri": "https://d.example/", "audience": "d-aud"}},
    )
    spec = _run(broker(), target).snapshot.triggers["t1"]
    assert spec.subscriber_audience == "s-aud" and spec.subscriber_ca_certs is None
    assert spec.delivery.dead_letter_audience == "d-aud"
    assert spec.identity == "system:serviceaccount:default:t-oidc-eventing.knative.dev-trigger"


def test_a_referenced_broker_brings_its_https_address_cacerts_in_strict_mode() -> None:
    ref = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "other"}
    target = trigger(subscriber={"ref": ref})
    spec = _run(broker(), broker("other", "b2"), target, base=HTTPS, https=HTTPS, ca=CA)
    assert spec.snapshot.triggers["t1"].subscriber_uri == f"{HTTPS}/default/other"
    assert spec.snapshot.triggers["t1"].subscriber_ca_certs == CA


def test_subscription_reply_audience_and_identity() -> None:
    owner = channel()
    sub = subscription(reply={"uri": "https://r.example/", "audience": "r-aud"})
    spec = _run(owner, backing(owner, "c2", IMC), sub).snapshot.subscriptions["s1"]
    assert spec.reply_audience == "r-aud"
    assert spec.identity.endswith(":s-oidc-messaging.knative.dev-subscription")
