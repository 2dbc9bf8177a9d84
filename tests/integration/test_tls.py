"""TLS: cemesh's ingress and API over HTTPS (strict and permissive), https addresses in status,
the CLI with --cacert, a replaced certificate presented to new handshakes, and deliveries to
https subscribers checked against the destination's CACerts.

Every certificate is made at test time by ``cryptography`` (tests/support/tls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from broker import Settings, create_app
from broker.auth.local_token import read_token
from broker.cli.client import ApiClient
from broker.cli.failures import CliError
from broker.core.events import ERROR_CODE, ERROR_DEST
from broker.server.listeners import Listeners
from broker.server.tls import ReloadingCertificate, TlsConfigError
from tests.support.cemesh import free_port, running_cemesh
from tests.support.subscriber import RecordingSubscriber
from tests.support.tls import CertificateAuthority

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
BROKER = {
    "apiVersion": "eventing.knative.dev/v1",
    "kind": "Broker",
    "metadata": {"name": "default"},
}
EVENT = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/tls", "ce-type": "com.example.tls"}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **overrides: Any) -> AsyncIterator[Listeners]:
    """cemesh served by its own Listeners (what `cemesh serve` runs) in the test's loop."""
    settings = Settings(
        **{
            "port": free_port(),
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'cemesh.db'}",
            "delivery_backoff_delay": "PT0.01S",
            "token_file": tmp_path / "token",
            **overrides,
        }
    )
    listeners = Listeners(
        create_app(settings), settings, loop="none", log_level="warning", lifespan="on"
    )
    task = asyncio.create_task(listeners.serve())
    try:
        async with asyncio.timeout(20):
            while not listeners.started:
                if task.done():
                    task.result()
                    raise RuntimeError("cemesh exited during startup")
                await asyncio.sleep(0.02)
        yield listeners
    finally:
        listeners.stop()
        await asyncio.wait_for(task, 30)


def admin(tmp_path: Path) -> dict[str, str]:
    """The Authorization header with the local (admin) token of the cemesh in ``tmp_path``."""
    return {"Authorization": f"Bearer {read_token(tmp_path / 'token')}"}


def _trust(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.pem)


async def test_https_ingress_and_api_with_both_addresses_in_status_when_both_are_served(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create()
    cert, key, _ = ca.issue(tmp_path)
    https_port = free_port()
    async with serving(
        tmp_path,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_ca_file=ca.write(tmp_path),
        https_port=https_port,
    ) as listeners:
        port = listeners.main.config.port
        https = f"https://127.0.0.1:{https_port}"
        async with httpx.AsyncClient(
            base_url=https, verify=_trust(ca), headers=admin(tmp_path)
        ) as client:
            created = await client.post(BROKERS, json=BROKER)
            assert created.status_code == 201, created.text
            status = created.json()["status"]
            assert status["address"] == {
                "name": "https",
                "url": f"{https}/default/default",
                "CACerts": ca.pem,
            }
            assert [a["url"] for a in status["addresses"]] == [
                f"http://127.0.0.1:{port}/default/default",
                f"{https}/default/default",
            ]
            accepted = await client.post("/default/default", headers=EVENT)
            assert accepted.status_code == 202
        async with httpx.AsyncClient() as plain:  # permissive: plain http still served
            response = await plain.post(f"http://127.0.0.1:{port}/default/default", headers=EVENT)
            assert response.status_code == 202
        async with httpx.AsyncClient(verify=True) as untrusting:  # system bundle: not our CA
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.get(f"{https}/healthz")


async def test_strict_tls_serves_only_https_on_the_one_port_and_the_cli_uses_cacert(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.create()
    cert, key, _ = ca.issue(tmp_path)
    async with serving(tmp_path, tls_cert_file=cert, tls_key_file=key) as listeners:
        url = f"https://127.0.0.1:{listeners.main.config.port}"
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{listeners.main.config.port}/healthz")
        ca_file = ca.write(tmp_path)

        def cli_calls() -> tuple[dict[str, Any], str]:
            with contextlib.closing(
                ApiClient(url, ca_file=ca_file, token=read_token(tmp_path / "token"))
            ) as api:
                created = api.call("POST", BROKERS, json=BROKER)
            with contextlib.closing(ApiClient(url)) as untrusting, pytest.raises(CliError) as e:
                untrusting.call("GET", BROKERS)
            return created, e.value.message

        created, refused = await asyncio.to_thread(cli_calls)
        assert created["status"]["address"]["url"] == f"{url}/default/default"
        assert [a["name"] for a in created["status"]["addresses"]] == ["https"]
        assert "certificate" in refused.lower()


def _presented_serial(port: int, ca: CertificateAuthority) -> int:
    context = _trust(ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_replaced_certificate_is_presented_to_new_handshakes(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert, key, first = ca.issue(tmp_path)
    async with serving(
        tmp_path, tls_cert_file=cert, tls_key_file=key, tls_reload_interval=0.1
    ) as listeners:
        port = listeners.main.config.port
        assert await asyncio.to_thread(_presented_serial, port, ca) == first
        staged = tmp_path / "staged"
        staged.mkdir()
        new_cert, new_key, second = ca.issue(staged)
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        async with asyncio.timeout(10):
            while await asyncio.to_thread(_presented_serial, port, ca) != second:  # noqa: ASYNC110
                await asyncio.sleep(0.1)


def test_a_broken_replacement_keeps_the_previous_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert, key, _ = ca.issue(tmp_path)
    certificate = ReloadingCertificate(cert, key)
    _, other_key, _ = ca.issue(tmp_path, "other")
    key.write_bytes(other_key.read_bytes())  # a key that does not match the certificate
    assert certificate.reload_if_changed() is False
    with pytest.raises(TlsConfigError, match="cannot use certificate"):
        ReloadingCertificate(cert, key)


async def test_delivery_to_an_https_subscriber_trusts_its_cacerts(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert, key, _ = ca.issue(tmp_path)
    async with (
        running_cemesh(tmp_path) as cemesh,
        RecordingSubscriber(tls=(str(cert), str(key))) as subscriber,
    ):
        await cemesh.apply(BROKER)
        await cemesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "secure"},
                "spec": {
                    "broker": "default",
                    "subscriber": {"uri": subscriber.url, "CACerts": ca.pem},
                },
            }
        )
        assert (await cemesh.post_event("/default/default", EVENT)).status_code == 202
        [received] = await subscriber.wait_for(1)
        assert received.event is not None and received.event.id == "1"


async def test_delivery_with_the_wrong_ca_fails_with_the_reason_and_goes_to_the_dead_letter_sink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_ca, other_ca = (
        CertificateAuthority.create("server CA"),
        CertificateAuthority.create("other CA"),
    )
    cert, key, _ = server_ca.issue(tmp_path)
    caplog.set_level(logging.INFO, logger="broker.dataplane.dispatch.delivery")
    async with (
        running_cemesh(tmp_path) as cemesh,
        RecordingSubscriber(tls=(str(cert), str(key))) as subscriber,
        RecordingSubscriber() as dead_letters,
    ):
        await cemesh.apply(BROKER)
        await cemesh.apply(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "mistrusting"},
                "spec": {
                    "broker": "default",
                    "subscriber": {"uri": subscriber.url, "CACerts": other_ca.pem},
                    "delivery": {
                        "retry": 1,
                        "backoffDelay": "PT0.01S",
                        "deadLetterSink": {"uri": dead_letters.url},
                    },
                },
            }
        )
        assert (await cemesh.post_event("/default/default", EVENT)).status_code == 202
        [dead] = await dead_letters.wait_for(1)
        assert subscriber.received == []  # no handshake completed, no request arrived
        assert dead.event is not None
        assert dead.event.get(ERROR_DEST) == subscriber.url
        assert dead.event.get(ERROR_CODE) == "500"  # no HTTP status: a transport failure
        deliveries = cemesh.runtime.metrics.deliveries
        async with asyncio.timeout(5):  # counted once the dead letter settled
            while deliveries["dead_lettered"] != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.msg == "event dead-lettered"]
    assert len(reasons) == 1 and "certificate" in reasons[0].lower(), reasons
