"""End to end: ingress OIDC with EventPolicy, tokens checked against a real JWKS on loopback.

cemesh runs with ``ingress_oidc`` on; a test issuer (keys made by the test, discovery and JWKS
served over HTTP on loopback) signs the senders' tokens. Events go in over real HTTP in binary,
structured and batched modes, to a Broker and to a Channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.cemesh import RunningCemesh, running_cemesh
from tests.support.flows import wait_until
from tests.support.oidc_issuer import TestIssuer
from tests.support.subscriber import RecordingSubscriber

BROKER_AUDIENCE = "eventing.knative.dev/broker/default/default"
CHANNEL_AUDIENCE = "messaging.knative.dev/inmemorychannel/default/orders"
ALLOWED = "system:serviceaccount:default:trusted-app"
SAME_NAMESPACE = "system:serviceaccount:default:someone"
OTHER_NAMESPACE = "system:serviceaccount:elsewhere:someone"

BROKER = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
"""

CHANNEL = """
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata:
  name: orders
"""

POLICY = """
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata:
  name: trusted
spec:
  to:
    - ref:
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        name: default
    - ref:
        apiVersion: messaging.knative.dev/v1
        kind: Channel
        name: orders
  from:
    - sub: system:serviceaccount:default:trusted-*
  filters:
    - prefix:
        type: com.example.order
"""


def binary(id_: str, type_: str = "com.example.order.created") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": id_,
        "ce-source": "/e2e",
        "ce-type": type_,
        "content-type": "application/json",
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@asynccontextmanager
async def secured_mesh(
    tmp_path: Path, mode: str = "allow-same-namespace"
) -> AsyncIterator[tuple[RunningCemesh, TestIssuer]]:
    async with (
        TestIssuer() as issuer,
        running_cemesh(
            tmp_path,
            ingress_oidc=True,
            oidc_issuer=issuer.issuer,
            oidc_jwks_url=issuer.jwks_url,
            default_authorization_mode=mode,
        ) as mesh,
    ):
        yield mesh, issuer


def routes(mesh: RunningCemesh) -> dict[tuple[str, str, str], Any]:
    return dict(mesh.runtime.ingress.snapshot.ingress_authorization)


async def policies_applied(mesh: RunningCemesh, count: int) -> None:
    def applied() -> bool:
        return sum(len(gate.policies) for gate in routes(mesh).values()) == count

    await wait_until(applied)


async def status_when(
    mesh: RunningCemesh, path: str, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The object's status once ``condition`` holds for it (polled; fails after 10 s)."""
    async with asyncio.timeout(10):
        while True:
            status = (await get(mesh, path)).get("status") or {}
            if status.get("conditions") and condition(status):
                return dict(status)
            await asyncio.sleep(0.02)


async def get(mesh: RunningCemesh, path: str) -> dict[str, Any]:
    response = await mesh.client.get(path)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_brokers_and_channels_publish_their_audience_and_the_policy_its_targets(
    tmp_path: Path,
) -> None:
    async with secured_mesh(tmp_path) as (mesh, _):
        await mesh.apply(BROKER)
        await mesh.apply(CHANNEL)
        await mesh.apply(POLICY)
        await policies_applied(mesh, 2)
        bad = await mesh.client.post(
            "/apis/eventing.knative.dev/v1alpha1/namespaces/default/eventpolicies",
            json={
                "apiVersion": "eventing.knative.dev/v1alpha1",
                "kind": "EventPolicy",
                "metadata": {"name": "bad"},
                "spec": {"from": [{"sub": "system:*:app"}]},
            },
        )
        assert bad.status_code == 422
        assert "spec.from[0].sub" in bad.text and "last character" in bad.text
        broker = await get(mesh, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default")
        assert broker["status"]["address"]["audience"] == BROKER_AUDIENCE
        assert broker["status"]["policies"] == [
            {"apiVersion": "eventing.knative.dev/v1alpha1", "name": "trusted"}
        ]
        channel = await get(
            mesh, "/apis/messaging.knative.dev/v1/namespaces/default/channels/orders"
        )
        assert channel["status"]["address"]["audience"] == CHANNEL_AUDIENCE

        path = "/apis/eventing.knative.dev/v1alpha1/namespaces/default/eventpolicies/trusted"
        status = await status_when(mesh, path, lambda s: s["conditions"][0]["status"] == "True")
        assert status["from"] == ["system:serviceaccount:default:trusted-*"]
        assert status["appliesTo"] == [
            {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"},
            {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "orders"},
        ]


async def test_a_policy_admits_its_subjects_and_refuses_everyone_else_at_a_broker(
    tmp_path: Path,
) -> None:
    async with secured_mesh(tmp_path) as (mesh, issuer), RecordingSubscriber() as subscriber:
        await mesh.apply(BROKER)
        await mesh.apply(
            f"""
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: all
spec:
  broker: default
  subscriber:
    uri: {subscriber.url}
"""
        )
        await mesh.apply(POLICY)
        await policies_applied(mesh, 1)
        allowed = issuer.token(ALLOWED, audience=BROKER_AUDIENCE)
        path = "/default/default"

        ok = await mesh.post_event(path, {**binary("ok-1"), **bearer(allowed)}, b"{}")
        assert ok.status_code == 202, ok.text

        other = issuer.token(SAME_NAMESPACE, audience=BROKER_AUDIENCE)  # the policy replaces
        refused = await mesh.post_event(path, {**binary("no-1"), **bearer(other)}, b"{}")
        assert refused.status_code == 403
        assert SAME_NAMESPACE in refused.json()["message"]

        no_token = await mesh.post_event(path, binary("no-2"), b"{}")
        assert no_token.status_code == 401
        assert no_token.headers["www-authenticate"] == "Bearer"
        assert BROKER_AUDIENCE in no_token.json()["message"]

        expired = issuer.token(ALLOWED, audience=BROKER_AUDIENCE, expires_in=-600)
        response = await mesh.post_event(path, {**binary("no-3"), **bearer(expired)}, b"{}")
        assert response.status_code == 401 and "expired" in response.json()["message"]

        wrong_audience = issuer.token(ALLOWED, audience=CHANNEL_AUDIENCE)
        response = await mesh.post_event(path, {**binary("no-4"), **bearer(wrong_audience)}, b"{}")
        assert response.status_code == 401 and "audience" in response.json()["message"]

        mismatch = binary("no-5", "com.example.refund")
        response = await mesh.post_event(path, {**mismatch, **bearer(allowed)}, b"{}")
        assert response.status_code == 403 and "filters" in response.json()["message"]

        structured = await mesh.post_event(
            path,
            {"content-type": "application/cloudevents+json", **bearer(allowed)},
            orjson.dumps(
                {"specversion": "1.0", "id": "ok-2", "source": "/e2e", "type": "com.example.order"}
            ),
        )
        assert structured.status_code == 202, structured.text

        def batch(*types: str) -> bytes:
            return orjson.dumps(
                [
                    {"specversion": "1.0", "id": f"b-{i}", "source": "/e2e", "type": t}
                    for i, t in enumerate(types)
                ]
            )

        batch_headers = {"content-type": "application/cloudevents-batch+json", **bearer(allowed)}
        good = await mesh.post_event(
            path, batch_headers, batch("com.example.order", "com.example.order.x")
        )
        assert good.status_code == 202, good.text
        bad = await mesh.post_event(
            path, batch_headers, batch("com.example.order", "com.example.other")
        )
        assert bad.status_code == 403

        received = await subscriber.wait_for(4)
        assert sorted(r.event.id for r in received if r.event) == ["b-0", "b-1", "ok-1", "ok-2"]
        # The sender's token is its own credential: never passed on to subscribers.
        assert all(r.headers.get("authorization") != f"Bearer {allowed}" for r in received)


async def test_a_channel_checks_tokens_for_its_own_audience_and_its_policies(
    tmp_path: Path,
) -> None:
    async with secured_mesh(tmp_path) as (mesh, issuer):
        await mesh.apply(CHANNEL)
        await mesh.apply(POLICY)
        await policies_applied(mesh, 1)
        path = "/channels/default/orders"
        allowed = issuer.token(ALLOWED, audience=CHANNEL_AUDIENCE)
        response = await mesh.post_event(path, {**binary("c-1"), **bearer(allowed)}, b"{}")
        assert response.status_code == 202, response.text
        broker_token = issuer.token(ALLOWED, audience=BROKER_AUDIENCE)
        response = await mesh.post_event(path, {**binary("c-2"), **bearer(broker_token)}, b"{}")
        assert response.status_code == 401
        other = issuer.token(OTHER_NAMESPACE, audience=CHANNEL_AUDIENCE)
        response = await mesh.post_event(path, {**binary("c-3"), **bearer(other)}, b"{}")
        assert response.status_code == 403
        assert (await mesh.post_event(path, binary("c-4"), b"{}")).status_code == 401


@pytest.mark.parametrize(
    ("mode", "admitted"),
    [
        ("allow-same-namespace", {SAME_NAMESPACE: 202, OTHER_NAMESPACE: 403, "alice": 403}),
        ("allow-all", {SAME_NAMESPACE: 202, OTHER_NAMESPACE: 202, "alice": 202}),
        ("deny-all", {SAME_NAMESPACE: 403, OTHER_NAMESPACE: 403, "alice": 403}),
    ],
)
async def test_without_a_policy_the_default_authorization_mode_decides(
    tmp_path: Path, mode: str, admitted: dict[str, int]
) -> None:
    async with secured_mesh(tmp_path, mode) as (mesh, issuer):
        await mesh.apply(BROKER)
        await wait_until(lambda: ("broker", "default", "default") in routes(mesh))
        for sub, status in admitted.items():
            token = issuer.token(sub, audience=BROKER_AUDIENCE)
            response = await mesh.post_event(
                "/default/default", {**binary(sub), **bearer(token)}, b"{}"
            )
            assert response.status_code == status, (sub, response.text)
        # an expired token is 401 in every mode, never let through by allow-all
        expired = issuer.token(SAME_NAMESPACE, audience=BROKER_AUDIENCE, expires_in=-600)
        response = await mesh.post_event(
            "/default/default", {**binary("x"), **bearer(expired)}, b"{}"
        )
        assert response.status_code == 401


async def test_a_jwks_server_that_is_down_gives_401_with_the_reason_not_a_5xx(
    tmp_path: Path,
) -> None:
    async with secured_mesh(tmp_path, "allow-all") as (mesh, issuer):
        await mesh.apply(BROKER)
        await wait_until(lambda: ("broker", "default", "default") in routes(mesh))
        token = issuer.token(SAME_NAMESPACE, audience=BROKER_AUDIENCE)
        await issuer.stop()
        try:
            response = await mesh.post_event(
                "/default/default", {**binary("d-1"), **bearer(token)}, b"{}"
            )
            assert response.status_code == 401
            assert "cannot fetch the JWKS" in response.json()["message"]
        finally:
            await issuer.start()


async def test_with_oidc_off_the_ingress_takes_events_without_tokens_as_before(
    tmp_path: Path,
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        await mesh.apply(BROKER)
        await mesh.apply(POLICY)
        await wait_until(lambda: ("default", "default") in mesh.runtime.ingress.snapshot.brokers)
        response = await mesh.post_event("/default/default", binary("plain"), b"{}")
        assert response.status_code == 202
        broker = await get(mesh, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default")
        assert "audience" not in broker["status"]["address"]


async def test_cemesh_own_hops_to_a_broker_carry_its_token_and_pass_the_broker_ingress(
    tmp_path: Path,
) -> None:
    """A Channel's Subscription delivering to a Broker over HTTP passes that Broker's check.

    With ingress OIDC on, cemesh signs its own deliveries (Knative's one authentication-oidc
    flag), and its ingress trusts its own issuer beside the configured one: the hop is admitted
    by the default mode (same namespace) and reaches the Broker's Trigger.
    """
    async with secured_mesh(tmp_path) as (mesh, issuer), RecordingSubscriber() as subscriber:
        await mesh.apply(BROKER)
        await mesh.apply(CHANNEL)
        await mesh.apply(
            f"""
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata:
  name: to-broker
spec:
  channel:
    apiVersion: messaging.knative.dev/v1
    kind: Channel
    name: orders
  subscriber:
    ref:
      apiVersion: eventing.knative.dev/v1
      kind: Broker
      name: default
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: all
spec:
  broker: default
  subscriber:
    uri: {subscriber.url}
"""
        )
        sender = issuer.token(SAME_NAMESPACE, audience=CHANNEL_AUDIENCE)
        response = await mesh.post_event(
            "/channels/default/orders", {**binary("hop-1"), **bearer(sender)}, b"{}"
        )
        assert response.status_code == 202, response.text
        (received,) = await subscriber.wait_for(1)
        assert received.headers["ce-id"] == "hop-1"
