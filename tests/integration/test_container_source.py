"""ContainerSource and SinkBinding (sources.knative.dev/v1): admission, the local process, events.

A ContainerSource's command runs as a supervised child process with K_SINK and K_CE_OVERRIDES
(K185) in its environment; the child here is a real Python script that POSTs binary-mode
CloudEvents to a real RecordingSubscriber, applying the ceOverrides extensions itself (K179).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest

from broker.core.errors import InvalidResource
from broker.features.sources import container
from broker.features.sources.base import PrepareContext, SourceNotReady, SourceSpec
from broker.features.sources.container import (
    CONTAINER_SOURCE_KIND,
    ContainerSource,
    admit_sink_binding,
    binding_env,
    container_process_spec,
    expand,
)
from broker.server.features import admit
from tests.support.cemesh import running_cemesh
from tests.support.subscriber import RecordingSubscriber

pytestmark = pytest.mark.timeout(30)

HEARTBEATS = textwrap.dedent("""
    import itertools, json, os, sys, time, urllib.request

    sink = sys.argv[1]  # given as $(K_SINK) in args
    assert sink == os.environ["K_SINK"], (sink, os.environ["K_SINK"])
    overrides = json.loads(os.environ["K_CE_OVERRIDES"] or "{}").get("extensions", {})
    print("sending to", sink, flush=True)
    for n in itertools.count():
        headers = {
            "ce-specversion": "1.0",
            "ce-id": f"{os.getpid()}-{n}",
            "ce-source": "/apis/v1/namespaces/default/containersources/heartbeats",
            "ce-type": "dev.knative.eventing.samples.heartbeat",
            "content-type": "application/json",
        }
        headers.update({"ce-" + name: value for name, value in overrides.items()})
        body = json.dumps({"pid": os.getpid(), "n": n, "label": os.environ["LABEL"]}).encode()
        request = urllib.request.Request(sink, data=body, headers=headers, method="POST")
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except OSError as exc:
            print("send failed:", exc, file=sys.stderr, flush=True)
        time.sleep(float(os.environ["PERIOD"]))
""")


def container_source(container_fields: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ContainerSource",
        "metadata": {"name": "heartbeats", "namespace": "default"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "heartbeats", **container_fields}]}},
            "sink": {"uri": "http://127.0.0.1:9/events"},
            **spec,
        },
    }


def admit_error(obj: dict[str, Any]) -> InvalidResource:
    with pytest.raises(InvalidResource) as caught:
        admit(obj)
    return caught.value


# --- admission ------------------------------------------------------------------------------------


def test_container_source_with_command_is_admitted_as_written() -> None:
    obj = container_source(
        {
            "image": "ghcr.io/example/heartbeats",
            "command": ["python", "heartbeats.py"],
            "args": ["--period", "1"],
            "env": [{"name": "POD_NAME", "value": "heartbeats"}],
            "ports": [{"containerPort": 8080}],  # accepted and ignored
        },
        ceOverrides={"extensions": {"team": "blue"}},
    )
    admitted = admit(copy.deepcopy(obj))
    assert admitted["spec"]["template"] == obj["spec"]["template"]


def test_image_without_command_applies_but_is_not_runnable_naming_the_command_field() -> None:
    """Knative YAML applies unchanged; the source is not Ready and says to add a command."""
    obj = admit(container_source({"image": "ghcr.io/example/heartbeats"}))
    kind = CONTAINER_SOURCE_KIND
    with pytest.raises(SourceNotReady) as caught:
        kind.prepare(obj, PrepareContext("http://127.0.0.1:8080", {}))
    assert caught.value.reason == "NotRunnable"
    assert "spec.template.spec.containers[0].command" in caught.value.message
    assert "cemesh runs the container's command locally" in caught.value.message
    assert "ghcr.io/example/heartbeats" in caught.value.message


def test_container_without_command_or_image_is_rejected_naming_the_command_field() -> None:
    error = admit_error(container_source({"name": "nothing"}))
    assert error.field == "spec.template.spec.containers[0].command"


def test_env_value_from_is_rejected_with_a_clear_reason() -> None:
    error = admit_error(
        container_source(
            {
                "command": ["run"],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ],
            }
        )
    )
    assert error.field == "spec.template.spec.containers[0].env[1].valueFrom"
    assert "not supported (TOKEN)" in error.reason and "inline" in error.reason


@pytest.mark.parametrize(
    ("spec_template", "field", "words"),
    [
        (None, "spec.template", "is required"),
        ({"spec": {"containers": []}}, "spec.template.spec.containers", "is required"),
        (
            {"spec": {"containers": [{"command": ["a"]}, {"command": ["b"]}]}},
            "spec.template.spec.containers",
            "has 2 containers",
        ),
        (
            {"spec": {"containers": [{"command": "python x.py"}]}},
            "spec.template.spec.containers[0].command",
            "must be a list of strings",
        ),
        (
            {"spec": {"containers": [{"command": ["sleep"], "args": [5]}]}},
            "spec.template.spec.containers[0].args[0]",
            "quote it",
        ),
        (
            {"spec": {"containers": [{"command": ["x"], "envFrom": [{"configMapRef": {}}]}]}},
            "spec.template.spec.containers[0].envFrom",
            "not supported",
        ),
        (
            {"spec": {"containers": [{"command": ["x"], "env": [{"name": "N", "value": 1}]}]}},
            "spec.template.spec.containers[0].env[0].value",
            "quote it",
        ),
        (
            {"spec": {"initContainers": [{"image": "i"}], "containers": [{"command": ["x"]}]}},
            "spec.template.spec.initContainers",
            "not supported",
        ),
    ],
)
def test_invalid_template_is_rejected_naming_the_field(
    spec_template: Any, field: str, words: str
) -> None:
    obj = container_source({"command": ["x"]})
    obj["spec"]["template"] = spec_template
    error = admit_error(obj)
    assert error.field == field
    assert words in error.reason


def test_K177_container_source_needs_a_sink() -> None:
    obj = container_source({"command": ["x"]})
    del obj["spec"]["sink"]
    assert admit_error(obj).field == "spec.sink"


def test_K180_ce_overrides_extension_names_are_checked() -> None:
    obj = container_source({"command": ["x"]}, ceOverrides={"extensions": {"Bad-Name": "v"}})
    assert admit_error(obj).field == "spec.ceOverrides.extensions"


def sink_binding(subject: Any) -> dict[str, Any]:
    # As resources.admit hands it to a kind's check: metadata normalized, spec a dict.
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": {"name": "bind", "namespace": "default", "labels": {}, "annotations": {}},
        "spec": {"subject": subject, "sink": {"uri": "http://127.0.0.1:9"}},
    }


def test_sink_binding_subject_namespace_defaults_to_the_binding() -> None:
    obj = sink_binding({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
    admit_sink_binding(obj, None)
    assert obj["spec"]["subject"]["namespace"] == "default"
    selector = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}],
    }
    obj = sink_binding({"apiVersion": "apps/v1", "kind": "Deployment", "selector": selector})
    admit_sink_binding(obj, None)


@pytest.mark.parametrize(
    ("subject", "field", "words"),
    [
        (None, "spec.subject", "is required"),
        ({"kind": "Deployment", "name": "web"}, "spec.subject.apiVersion", "is required"),
        ({"apiVersion": "apps/v1", "kind": "Deployment"}, "spec.subject", "name or selector"),
        (
            {"apiVersion": "apps/v1", "kind": "Job", "name": "a", "selector": {}},
            "spec.subject",
            "not both",
        ),
        (
            {"apiVersion": "v1", "kind": "Pod", "name": "a", "namespace": "other"},
            "spec.subject.namespace",
            "must be empty or this SinkBinding's namespace",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
            },
            "spec.subject.selector.matchExpressions[0].operator",
            "must be one of",
        ),
    ],
)
def test_sink_binding_invalid_subject_is_rejected(subject: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        admit_sink_binding(sink_binding(subject), None)
    assert caught.value.field == field
    assert words in caught.value.reason


# --- environment and process spec (pure) ----------------------------------------------------------


def test_K185_binding_env_sets_K_SINK_and_K_CE_OVERRIDES_as_knative_does() -> None:
    env = binding_env("http://127.0.0.1:8080/default/default", {"team": "blue", "a": "1"})
    assert env == {
        "K_SINK": "http://127.0.0.1:8080/default/default",
        "K_CE_OVERRIDES": '{"extensions":{"a":"1","team":"blue"}}',
    }
    assert binding_env("http://x", {}) == {"K_SINK": "http://x", "K_CE_OVERRIDES": ""}


def test_expand_follows_kubernetes_dollar_paren_rules() -> None:
    variables = {"K_SINK": "http://s", "A": "1"}
    assert expand("--sink=$(K_SINK)", variables) == "--sink=http://s"
    assert expand("$$(K_SINK) $(MISSING) $A $(A", variables) == "$(K_SINK) $(MISSING) $A $(A"
    assert expand("$(A)$(A)$", variables) == "11$"


def test_container_process_spec_runs_command_and_args_with_the_binding_env() -> None:
    obj = admit(
        container_source(
            {
                "image": "ignored",
                "command": ["python", "beat.py"],
                "args": ["--sink", "$(K_SINK)", "--label=$(LABEL)"],
                "env": [
                    {"name": "BASE", "value": "x"},
                    {"name": "LABEL", "value": "$(BASE)-y"},
                    {"name": "K_SINK", "value": "user value loses"},
                    {"name": "EMPTY"},
                ],
                "workingDir": "/tmp",
            }
        )
    )
    spec = container_process_spec("default", "heartbeats", obj["spec"], "http://s/", {"t": "v"})
    assert spec.name == "containersource/default/heartbeats"
    assert list(spec.command) == ["python", "beat.py", "--sink", "http://s/", "--label=x-y"]
    assert spec.env == {
        "BASE": "x",
        "LABEL": "x-y",
        "K_SINK": "http://s/",
        "EMPTY": "",
        "K_CE_OVERRIDES": '{"extensions":{"t":"v"}}',
    }
    assert spec.cwd == "/tmp"


# --- the running source ---------------------------------------------------------------------


def _pid(received: Any) -> int:
    return int(json.loads(received.body)["pid"])


async def test_K179_K185_container_source_child_sends_events_and_is_restarted_when_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command gets K_SINK and K_CE_OVERRIDES; its events (with the override extension)
    reach the sink; killed, it is started again and events resume."""
    monkeypatch.setattr(container, "BACKOFF_INITIAL", 0.05)
    script = tmp_path / "heartbeats.py"
    script.write_text(HEARTBEATS)
    async with RecordingSubscriber() as sink:
        obj = admit(
            container_source(
                {
                    "image": "ghcr.io/example/heartbeats",
                    "command": [sys.executable, str(script)],
                    "args": ["$(K_SINK)"],
                    "env": [{"name": "PERIOD", "value": "0.1"}, {"name": "LABEL", "value": "hb"}],
                    "workingDir": str(tmp_path),
                },
                ceOverrides={"extensions": {"team": "blue"}},
            )
        )
        spec = SourceSpec(
            kind="ContainerSource",
            namespace="default",
            name="heartbeats",
            uid="uid-1",
            sink_uri=f"{sink.url}/events",
            ce_overrides={"team": "blue"},
            spec=obj["spec"],
        )
        source = ContainerSource(spec, cast(Any, None), cast(Any, None))
        task = asyncio.create_task(source.run())
        try:
            first = await sink.wait_for(3)
            for received in first[:3]:
                assert received.path == "/events"
                assert received.event is not None
                assert received.event.get("team") == "blue"
                assert received.event.type == "dev.knative.eventing.samples.heartbeat"
                assert json.loads(received.body)["label"] == "hb"
            pid = _pid(first[0])
            process = source._process
            assert process is not None and process.pid == pid

            os.kill(pid, signal.SIGKILL)  # our own child: the test started it through the source
            async with asyncio.timeout(10):
                while not any(_pid(r) != pid for r in sink.received):
                    await sink.wait_for(len(sink.received) + 1)
            restarted = [r for r in sink.received if _pid(r) != pid]
            assert process.restarts >= 1 and process.pid == _pid(restarted[0])
            assert restarted[0].event is not None and restarted[0].event.get("team") == "blue"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await source.close()
        assert process is not None and not process.running


async def test_a_container_source_that_keeps_exiting_is_not_ready_with_code_and_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exits in a row make it CrashLoopBackOff (Ready False, exit code and last output in the
    message) while it keeps being restarted with backoff."""
    monkeypatch.setattr(container, "BACKOFF_INITIAL", 0.05)
    crashing = [sys.executable, "-c", "import sys; print('no API key'); sys.exit(7)"]
    path = "/apis/sources.knative.dev/v1/namespaces/default/containersources/crashy"
    async with (
        RecordingSubscriber() as sink,
        running_cemesh(tmp_path, resync_interval=0.05) as mesh,
    ):
        manifest = container_source({"image": "x", "command": crashing})
        manifest["metadata"]["name"] = "crashy"
        manifest["spec"]["sink"] = {"uri": sink.url}
        await mesh.apply(manifest)
        async with asyncio.timeout(20):
            while True:
                status = (await mesh.client.get(path)).json().get("status") or {}
                ready = next(
                    (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {}
                )
                if ready.get("status") == "False":
                    break
                await asyncio.sleep(0.05)
        assert ready["reason"] == "CrashLoopBackOff", ready
        assert "code 7" in ready["message"] and "no API key" in ready["message"], ready
        deployed = next(c for c in status["conditions"] if c["type"] == "Deployed")
        assert deployed["reason"] == "CrashLoopBackOff"
        uid = (await mesh.client.get(path)).json()["metadata"]["uid"]
        runner = cast(Any, mesh.runtime.component("sources"))
        process = runner.source(uid)._process
        restarts = process.restarts
        async with asyncio.timeout(10):  # still restarted (with backoff), so it can recover
            while process.restarts == restarts:  # noqa: ASYNC110 (a child process: no event)
                await asyncio.sleep(0.05)
