"""SinkBinding (K185): its subject's processes get K_SINK and K_CE_OVERRIDES, as Knative injects
them into the pods it binds. The subject here is a Service whose replica, a real child process,
sends one CloudEvent to $K_SINK when it starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.cemesh import running_cemesh
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.timeout(60)

# Announces itself to K_SINK (binary mode, with the ceOverrides extensions), then serves on PORT.
EMITTER = """
import json, os, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

headers = {"ce-specversion": "1.0", "ce-id": str(os.getpid()), "ce-source": "/emitter",
           "ce-type": "dev.example.started", "content-type": "application/json"}
overrides = os.environ.get("K_CE_OVERRIDES")
for name, value in (json.loads(overrides)["extensions"] if overrides else {}).items():
    headers["ce-" + name] = value
if os.environ.get("K_SINK"):  # not bound (yet): nothing to announce to
    request = urllib.request.Request(os.environ["K_SINK"], data=b"{}", headers=headers)
    urllib.request.urlopen(request, timeout=5).read()

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def service(script: Path) -> dict:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "emitter", "labels": {"app": "emitter"}},
        "spec": {
            "template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "1"}},
                "spec": {"containers": [{"command": [sys.executable, str(script)]}]},
            }
        },
    }


def sink_binding(sink_url: str, subject: dict) -> dict:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": {"name": "bind-emitter"},
        "spec": {
            "subject": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", **subject},
            "sink": {"uri": sink_url},
            "ceOverrides": {"extensions": {"team": "blue"}},
        },
    }


@pytest.mark.parametrize(
    "subject", [{"name": "emitter"}, {"selector": {"matchLabels": {"app": "emitter"}}}]
)
async def test_k185_sink_binding_gives_its_service_k_sink_and_ce_overrides(
    tmp_path: Path, subject: dict
) -> None:
    script = tmp_path / "emitter.py"
    script.write_text(EMITTER)
    async with RecordingSubscriber() as sink, running_cemesh(tmp_path) as mesh:
        await mesh.apply(sink_binding(sink.url + "/", subject))
        await mesh.apply(service(script))
        [request] = await sink.wait_for(1, timeout=30)
        assert request.headers["ce-type"] == "dev.example.started"
        assert request.headers["ce-team"] == "blue"  # K_CE_OVERRIDES reached the process
        binding = (
            await mesh.client.get(
                "/apis/sources.knative.dev/v1/namespaces/default/sinkbindings/bind-emitter"
            )
        ).json()
        assert binding["status"]["sinkUri"] == sink.url + "/"
        assert json.dumps(binding["status"]).count('"Ready"') == 1


async def test_k185_a_binding_applied_after_its_service_still_reaches_its_replicas(
    tmp_path: Path,
) -> None:
    script = tmp_path / "emitter.py"
    script.write_text(EMITTER)
    async with RecordingSubscriber() as sink, running_cemesh(tmp_path) as mesh:
        await mesh.apply(service(script))
        await mesh.apply(sink_binding(sink.url + "/", {"name": "emitter"}))
        [request] = await sink.wait_for(1, timeout=30)
        assert request.headers["ce-team"] == "blue"
