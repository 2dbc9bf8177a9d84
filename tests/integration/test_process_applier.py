"""Every local process start names who applied the object it runs for (issue 10).

The API stamps ``cemesh.dev/applied-by``; the reconcilers carry it to the runtime specs (a
ContainerSource's SourceSpec, a Revision's template from its Service), and the supervisor's
"started" log line names it beside the command.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from broker.auth.processes import APPLIED_BY
from broker.features.serving.backend import RevisionRef
from broker.features.serving.process import ProcessBackend
from broker.features.serving.specs import APPLIED_BY as TEMPLATE_APPLIED_BY
from broker.features.serving.specs import RevisionSpec, revision_key
from broker.features.sources.base import SourceSpec
from broker.features.sources.container import container_process_spec
from tests.unit.test_serving_reconcile import service_obj, settle

FUNCTION = str(Path(__file__).parents[1] / "support" / "function_server.py")


def test_a_revision_carries_the_applier_of_its_service() -> None:
    service = service_obj()
    service["metadata"]["annotations"][APPLIED_BY] = "alice"
    result, _ = settle([service])
    spec = result.snapshot.components["invoker"][revision_key("default", "fn-00001")]
    assert isinstance(spec, RevisionSpec)
    assert spec.template[TEMPLATE_APPLIED_BY] == "alice"


def test_a_container_source_spec_carries_its_applier() -> None:
    from broker.core.spec import DeliveryPolicy
    from broker.server.features import admit, reconcile

    obj = admit(
        {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "ContainerSource",
            "metadata": {"name": "cs", "annotations": {APPLIED_BY: "bob"}},
            "spec": {
                "template": {"spec": {"containers": [{"image": "x", "command": ["true"]}]}},
                "sink": {"uri": "http://127.0.0.1:9/"},
            },
        }
    )
    obj["metadata"].update(uid="cs-uid", generation=1)
    result = reconcile(
        [obj], base_url="http://127.0.0.1:8080", default_delivery=DeliveryPolicy(), now="t"
    )
    spec = result.snapshot.components["sources"]["cs-uid"]
    assert isinstance(spec, SourceSpec) and spec.applied_by == "bob"
    process = container_process_spec("default", "cs", spec.spec, spec.sink_uri, {}, "bob")
    assert process.applied_by == "bob"


async def test_a_replica_start_is_logged_with_the_applier_and_the_command(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    ref = RevisionRef("default", "fn", "fn-00001")
    template = {
        "containers": [{"image": "x", "command": [sys.executable], "args": [FUNCTION]}],
        "annotations": {},
        TEMPLATE_APPLIED_BY: "carol",
    }
    backend = ProcessBackend()
    try:
        await backend.ensure(ref, template, 1)
        assert await backend.wait_ready(ref, 20)
    finally:
        await backend.stop()
    [started] = [r for r in caplog.records if getattr(r, "applied_by", None) == "carol"]
    assert "revision/default/fn-00001" in started.getMessage()
    assert "applied by carol" in started.getMessage()
    assert started.command == [sys.executable, FUNCTION]  # type: ignore[attr-defined]
