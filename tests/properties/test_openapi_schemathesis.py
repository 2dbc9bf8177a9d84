"""schemathesis against a running cemesh: every documented operation of every kind, generated
from the OpenAPI document (bodies, paths, query), answers no 5xx and matches the document.

Bounded (a few examples per operation) so it runs in about a minute; README "Errors" says how
to run it longer (``CEMESH_SCHEMATHESIS_EXAMPLES``) or with the schemathesis CLI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from broker.core.config import Settings
from broker.server.app import create_app
from tests.support.cemesh import RunningCemesh
from tests.support.cemesh_thread import cemesh_in_thread
from tests.support.resource_samples import NOWHERE

EXAMPLES = int(os.environ.get("CEMESH_SCHEMATHESIS_EXAMPLES", "3"))


def document() -> dict:
    """The document as the app serves it (the kinds are registered on import, the routes
    static); built with authentication off so that no token file is made for it."""
    return create_app(Settings(auth="none")).api.api.openapi()


schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCemesh]:
    with cemesh_in_thread(
        tmp_path_factory.mktemp("schemathesis"),
        kafka_bootstrap_servers="127.0.0.1:9",
        nats_url="nats://127.0.0.1:9",
        nats_connect_timeout=0.5,
        redis_url="redis://127.0.0.1:9/0",
        redis_connect_timeout=0.5,
        pubsub_emulator_host="127.0.0.1:9",
        pubsub_rpc_timeout=0.5,
    ) as cemesh:
        yield cemesh


def test_the_document_describes_every_kind_its_bodies_and_its_4xx():
    document_ = document()
    brokers = document_["paths"]["/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers"]
    body = brokers["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["kind"]["enum"] == ["Broker"]
    assert set(body["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}
    for code in ("400", "401", "403", "404", "409", "413", "415", "421", "422"):
        answer = brokers["post"]["responses"][code]["content"]["application/json"]["schema"]
        assert answer["properties"]["kind"]["enum"] == ["Status"]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_no_5xx_and_as_documented(case: schemathesis.Case, mesh: RunningCemesh) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("spec"), dict):
        # Destinations that resolve nowhere: a generated object must not call anything real.
        for key in ("sink", "subscriber"):
            if key in case.body["spec"]:
                case.body["spec"][key] = {"uri": NOWHERE}
    # Not checked: that every schema-valid object is accepted. The document gives each kind's
    # object shape, not every rule of its spec (admission's 422 names the field instead).
    case.call_and_validate(
        base_url=mesh.url,
        headers={"Authorization": f"Bearer {mesh.token}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
