"""The ``cemesh`` command line against a real cemesh served over HTTP on 127.0.0.1.

One cemesh (SQLite in a temp dir, in-memory bus) runs under uvicorn in a background thread for
the whole module; each test works in its own namespace. Commands run through click's CliRunner
with ``--server``; the console script itself is run once as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from click.testing import CliRunner, Result

from broker import Settings, create_app
from broker.cli import cli
from tests.conftest import shared_fixture_dir

SERVED_KINDS = {"Broker", "Trigger", "Channel", "InMemoryChannel", "Subscription"}


# Each test server's local token file (in its tmp dir), which run() hands to the CLI.
TOKEN_FILES: dict[str, Path] = {}


class ServerThread:
    """cemesh under uvicorn in a thread of its own, on a socket bound before it starts."""

    def __init__(self, tmp: Path) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))  # kept open and handed to uvicorn: no port race
        port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/c.db",
            port=port,
            delivery_backoff_delay="PT0.01S",
            delivery_retry=2,
            token_file=tmp / "token",
        )
        TOKEN_FILES[self.url] = tmp / "token"
        config = uvicorn.Config(
            create_app(settings),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)  # outside the main thread it installs no signals
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self, timeout: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while True:
                if not self.thread.is_alive():
                    raise RuntimeError("cemesh exited during startup (see the log above)")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cemesh at {self.url} not ready within {timeout}s")
                # Not a wait for an event we could subscribe to: /readyz is the only signal.
                time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a cemesh running for this module's tests."""
    thread = ServerThread(tmp_path_factory.mktemp("cemesh"))
    thread.start()
    try:
        yield thread.url
    finally:
        thread.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own (a DNS label made from the test's name)."""
    full = request.node.name
    name = full.removeprefix("test_").replace("_", "-").lower()
    name = "".join(c for c in name if c.isalnum() or c == "-")[:40].strip("-")
    return f"{name}-{zlib.crc32(full.encode()):08x}"


def run(server: str, *args: str, input: str | None = None) -> Result:
    token = ["--token-file", str(TOKEN_FILES[server])] if server in TOKEN_FILES else []
    return CliRunner().invoke(cli, ["--server", server, *token, *args], input=input)


def assert_one_error_line(result: Result, *fragments: str) -> str:
    """Exit status 1, exactly one line on stderr starting ``error: ``, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def broker(name: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name, **metadata},
    }


def trigger(name: str, subscriber: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": "default", "subscriber": {"uri": subscriber}, **spec},
    }


# --- the console script ------------------------------------------------------------------


def test_console_script_cemesh_help_runs_through_the_installed_entry_point() -> None:
    script = Path(sys.executable).with_name("cemesh")
    assert script.exists(), f"console script not installed at {script} (pip install -e .)"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    for command in ("serve", "apply", "get", "delete", "send", "db"):
        assert command in done.stdout


# --- apply ------------------------------------------------------------------------------


def test_apply_creates_then_unchanged_then_configured_like_kubectl_apply(
    server: str, ns: str, tmp_path: Path
) -> None:
    manifest = write(
        tmp_path / "b.yaml",
        broker("default", namespace=ns),
        trigger("t1", "http://127.0.0.1:9/a") | {"metadata": {"name": "t1", "namespace": ns}},
    )
    first = run(server, "apply", "-f", str(manifest))
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [
        "broker.eventing.knative.dev/default created",
        "trigger.eventing.knative.dev/t1 created",
    ]

    # Re-applying the same YAML changes nothing, although the server defaulted fields (K59, K67).
    again = run(server, "apply", "-f", str(manifest))
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [
        "broker.eventing.knative.dev/default unchanged",
        "trigger.eventing.knative.dev/t1 unchanged",
    ]
    stored = json.loads(run(server, "get", "trigger", "t1", "-n", ns, "-o", "json").stdout)
    version = stored["metadata"]["resourceVersion"]

    changed = trigger("t1", "http://127.0.0.1:9/b") | {"metadata": {"name": "t1"}}
    result = run(server, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(changed))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["trigger.eventing.knative.dev/t1 configured"]
    stored = json.loads(run(server, "get", "trigger", "t1", "-n", ns, "-o", "json").stdout)
    assert stored["spec"]["subscriber"]["uri"] == "http://127.0.0.1:9/b"
    assert stored["metadata"]["resourceVersion"] != version


def test_apply_of_many_objects_prints_them_in_order_and_a_repeated_object_ends_as_written_last(
    server: str, ns: str, tmp_path: Path
) -> None:
    """Objects are sent several at a time (issue 14), yet output and outcome follow the file."""
    triggers = [
        trigger(f"t{n}", f"http://127.0.0.1:9/{n}")
        | {"metadata": {"name": f"t{n}", "namespace": ns}}
        for n in range(20)
    ]
    later = trigger("t3", "http://127.0.0.1:9/later") | {
        "metadata": {"name": "t3", "namespace": ns}
    }
    manifest = write(tmp_path / "many.yaml", broker("default", namespace=ns), *triggers, later)
    result = run(server, "apply", "-f", str(manifest))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "broker.eventing.knative.dev/default created",
        *(f"trigger.eventing.knative.dev/t{n} created" for n in range(20)),
        "trigger.eventing.knative.dev/t3 configured",
    ]
    stored = json.loads(run(server, "get", "trigger", "t3", "-n", ns, "-o", "json").stdout)
    assert stored["spec"]["subscriber"]["uri"] == "http://127.0.0.1:9/later"


def test_apply_reads_json_lists_and_directories(server: str, ns: str, tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "a.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": [broker("b1"), broker("b2")]})
    )
    write(folder / "b.yml", broker("b3"))
    (folder / "notes.txt").write_text("not a manifest")
    result = run(server, "apply", "-n", ns, "-f", str(folder))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"broker.eventing.knative.dev/{name} created" for name in ("b1", "b2", "b3")
    ]


def _knative_samples() -> list[tuple[Path, dict[str, Any]]]:
    """Every Broker/Trigger/Channel/InMemoryChannel/Subscription document of the doc samples."""
    root = shared_fixture_dir("knative-docs")
    found = []
    for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in SERVED_KINDS:
                found.append((path, doc))
    return found


@pytest.mark.shared_conformance
def test_every_knative_doc_sample_of_a_served_kind_applies_unchanged(
    server: str, ns: str, tmp_path: Path
) -> None:
    """The Knative docs' Broker/Trigger/Channel/Subscription YAML applies as written."""
    samples = _knative_samples()
    assert samples, "no Broker/Trigger/Channel/Subscription samples in the knative-docs fixtures"
    for index, (path, doc) in enumerate(samples):
        single = write(tmp_path / f"{index}.yaml", doc)
        result = run(server, "apply", "-n", ns, "-f", str(single))
        assert result.exit_code == 0, (path, result.output)
        assert result.stdout.strip().endswith((" created", " unchanged")), (path, result.output)


@pytest.mark.shared_conformance
def test_apply_of_the_knative_channels_yaml_sample_reports_it_is_not_a_resource(
    server: str, ns: str
) -> None:
    """docs/versioned/eventing/channels/channels.yaml is the docs' list of channel
    implementations (a ``channels:`` mapping with no apiVersion/kind), not a manifest: apply
    says so in one line naming the file instead of sending it or failing with a traceback."""
    sample = shared_fixture_dir("knative-docs", "docs", "versioned", "eventing", "channels")
    path = sample / "channels.yaml"
    result = run(server, "apply", "-n", ns, "-f", str(path))
    assert_one_error_line(result, str(path), "not a Kubernetes object", "apiVersion and kind")
    assert result.stdout == ""


@pytest.mark.shared_conformance
def test_apply_of_a_knative_sample_folder_applies_every_object_unchanged(
    server: str, ns: str
) -> None:
    """sequence-with-broker-trigger, as the Knative docs ship it: Services, Sequence,
    PingSource and Triggers are all served, so the folder applies with exit status 0."""
    folder = shared_fixture_dir(
        "knative-docs", "docs", "versioned", "eventing", "flows", "sequence"
    ) / ("sequence-with-broker-trigger")
    result = run(server, "apply", "-n", ns, "-f", str(folder))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert sorted(result.stdout.splitlines()) == [
        "pingsource.sources.knative.dev/ping-source created",
        "sequence.flows.knative.dev/sequence created",
        "service.serving.knative.dev/first created",
        "service.serving.knative.dev/second created",
        "service.serving.knative.dev/sequence-display created",
        "service.serving.knative.dev/third created",
        "trigger.eventing.knative.dev/display-trigger created",
        "trigger.eventing.knative.dev/sequence-trigger created",
    ]
    assert result.stderr == ""


@pytest.mark.shared_conformance
def test_apply_of_the_github_secret_sample_stores_string_data(server: str, ns: str) -> None:
    path = shared_fixture_dir("knative-docs", "code-samples", "eventing", "github-source")
    result = run(server, "apply", "-n", ns, "-f", str(path / "githubsecret.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["secret/githubsecret created"]
    again = run(server, "apply", "-n", ns, "-f", str(path / "githubsecret.yaml"))
    assert again.stdout.splitlines() == ["secret/githubsecret unchanged"]


# --- get --------------------------------------------------------------------------------


def test_get_prints_a_kn_style_table_and_yaml(server: str, ns: str, tmp_path: Path) -> None:
    """K26: a Ready Broker shows its address URL; READY comes from the Ready condition."""
    run(server, "apply", "-n", ns, "-f", str(write(tmp_path / "b.yaml", broker("default"))))
    result = run(server, "get", "brokers", "-n", ns)
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "URL", "READY", "REASON", "AGE"]
    name, url, ready, age = row.split()
    assert (name, url, ready) == ("default", f"{server}/{ns}/default", "True")
    assert age.endswith("s")

    as_yaml = run(server, "get", "broker", "default", "-n", ns, "-o", "yaml")
    obj = yaml.safe_load(as_yaml.stdout)
    assert obj["kind"] == "Broker" and obj["metadata"]["namespace"] == ns
    assert obj["status"]["address"]["url"] == f"{server}/{ns}/default"

    listed = yaml.safe_load(run(server, "get", "broker", "-n", ns, "-o", "yaml").stdout)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == [
        "default"
    ]

    everywhere = run(server, "get", "broker", "-A")
    assert everywhere.stdout.splitlines()[0].split()[:2] == ["NAME", "NAMESPACE"]
    assert any(line.split()[:2] == ["default", ns] for line in everywhere.stdout.splitlines())


def test_get_trigger_table_shows_broker_and_subscriber_uri(
    server: str, ns: str, tmp_path: Path
) -> None:
    manifest = write(tmp_path / "t.yaml", broker("default"), trigger("t", "http://127.0.0.1:9/x"))
    run(server, "apply", "-n", ns, "-f", str(manifest))
    header, row = run(server, "get", "triggers", "-n", ns).stdout.splitlines()
    assert header.split() == ["NAME", "BROKER", "SUBSCRIBER_URI", "READY", "REASON", "AGE"]
    assert row.split()[:4] == ["t", "default", "http://127.0.0.1:9/x", "True"]


def test_get_channels_shows_the_backing_kind_and_the_new_channel_kinds_are_named(
    server: str, ns: str, tmp_path: Path
) -> None:
    """K140: a Channel's TYPE is its backing kind (kn's column), which ``get imc`` lists too;
    ``get broker -o wide`` shows the Broker's channel kind; ``kc`` names KafkaChannels."""
    channel = {
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "Channel",
        "metadata": {"name": "c"},
    }
    manifest = write(tmp_path / "c.yaml", channel, broker("default"))
    assert run(server, "apply", "-n", ns, "-f", str(manifest)).exit_code == 0
    again = run(server, "apply", "-n", ns, "-f", str(manifest))
    assert "channel.messaging.knative.dev/c unchanged" in again.stdout.splitlines()
    header, row = run(server, "get", "channels", "-n", ns).stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "URL", "READY", "AGE"]
    assert row.split()[:4] == ["c", "InMemoryChannel", f"{server}/channels/{ns}/c", "True"]
    header, row = run(server, "get", "imc", "-n", ns).stdout.splitlines()
    assert row.split()[:3] == ["c", f"{server}/channels/{ns}/c", "True"]
    header, row = run(server, "get", "broker", "-n", ns, "-o", "wide").stdout.splitlines()
    assert row[header.index("CHANNEL") :].split()[0] == "InMemoryChannel"  # REASON is empty
    for name in ("kafkachannels", "kc", "natsjetstreamchannels", "pubsubchannels", "cm"):
        result = run(server, "get", name, "-n", ns)
        assert result.exit_code == 0, (name, result.output)
        assert result.stderr.strip() == f"No resources found in {ns} namespace.", name


def test_get_filters_by_label_selector(server: str, ns: str, tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "b.yaml",
        broker("blue", labels={"team": "a"}),
        broker("green", labels={"team": "b"}),
    )
    run(server, "apply", "-n", ns, "-f", str(manifest))
    rows = run(server, "get", "broker", "-n", ns, "-l", "team=b").stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["green"]


def test_get_of_an_empty_namespace_says_no_resources_found(server: str) -> None:
    result = run(server, "get", "triggers", "-n", "nothing-here")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.strip() == "No resources found in nothing-here namespace."


def test_secret_values_are_never_printed(server: str, ns: str, tmp_path: Path) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "type": "Opaque",
        "stringData": {"token": "hunter2-plain"},
        "data": {"key": base64.b64encode(b"hunter3-b64").decode()},
    }
    result = run(server, "apply", "-n", ns, "-f", str(write(tmp_path / "s.yaml", secret)))
    assert result.stdout.splitlines() == ["secret/creds created"]
    secrets = ("hunter2", "hunter3", base64.b64encode(b"hunter2-plain").decode()[:8], "aHVudGVy")
    outputs = {
        "table": run(server, "get", "secret", "-n", ns),
        "yaml": run(server, "get", "secret", "creds", "-n", ns, "-o", "yaml"),
        "json": run(server, "get", "secrets", "-n", ns, "-o", "json"),
        "wide": run(server, "get", "secret", "-A", "-o", "wide"),
    }
    for how, shown in outputs.items():
        assert shown.exit_code == 0, (how, shown.output)
        for value in secrets:
            assert value not in shown.output, (how, shown.output)
    header, row = outputs["table"].stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert row.split()[:3] == ["creds", "Opaque", "2"]
    obj = yaml.safe_load(outputs["yaml"].stdout)
    assert obj["data"] == {"key": "<redacted>", "token": "<redacted>"}
    listed = json.loads(outputs["json"].stdout)
    assert listed["items"][0]["data"] == {"key": "<redacted>", "token": "<redacted>"}
    assert "<redacted>" in CliRunner().invoke(cli, ["get", "--help"]).output


# --- delete -------------------------------------------------------------------------------


def test_delete_by_name_and_by_file(server: str, ns: str, tmp_path: Path) -> None:
    manifest = write(tmp_path / "t.yaml", broker("default"), trigger("x", "http://127.0.0.1:9"))
    run(server, "apply", "-n", ns, "-f", str(manifest))
    result = run(server, "delete", "trigger", "x", "-n", ns)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ['trigger.eventing.knative.dev "x" deleted']
    gone = run(server, "get", "trigger", "x", "-n", ns)
    assert_one_error_line(gone, '"x" not found')

    by_file = run(
        server, "delete", "-n", ns, "-f", str(write(tmp_path / "b.yaml", broker("default")))
    )
    assert by_file.stdout.splitlines() == ['broker.eventing.knative.dev "default" deleted']


# --- send -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_send_to_a_broker_reaches_the_trigger_subscriber(
    server: str, ns: str, tmp_path: Path, mode: str
) -> None:
    """K29: the broker answers 202; K51: type, source, id, extensions and data arrive unchanged."""
    from tests.support.subscriber import RecordingSubscriber

    async with RecordingSubscriber() as subscriber:
        manifest = write(
            tmp_path / "t.yaml",
            broker("default"),
            trigger("t", subscriber.url, filter={"attributes": {"type": "cli.test"}}),
        )
        applied = await asyncio.to_thread(run, server, "apply", "-n", ns, "-f", str(manifest))
        assert applied.exit_code == 0, applied.output
        data = tmp_path / "data.json"
        data.write_text('{"hello": "world"}')
        result = await asyncio.to_thread(
            run,
            server,
            "send",
            "--to",
            f"broker:{ns}/default",
            "--type",
            "cli.test",
            "--id",
            f"id-{mode}",
            "--data",
            f"@{data}",
            "--extension",
            "color=blue",
            "--subject",
            "greeting",
            "--mode",
            mode,
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"event id-{mode} accepted (202)"
        [received] = await subscriber.wait_for(1)
    event = received.event
    assert event is not None
    assert (event.id, event.type, event.source) == (f"id-{mode}", "cli.test", "cemesh/cli")
    assert event.get("color") == "blue" and event.get("subject") == "greeting"
    assert event.datacontenttype == "application/json"
    assert json.loads(event.data or b"") == {"hello": "world"}


def test_send_to_a_missing_broker_prints_the_server_message(server: str) -> None:
    """K41: an unknown broker answers 404; the CLI prints the message and exits 1."""
    result = run(server, "send", "--to", "broker:nowhere/none", "--type", "t", "--data", "x")
    assert_one_error_line(result, "not accepted (404)")


# --- errors -------------------------------------------------------------------------------


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed


@pytest.mark.parametrize(
    "args",
    [
        ("get", "brokers"),
        ("delete", "broker", "x"),
        ("send", "--to", "broker:default/default", "--type", "t"),
    ],
)
def test_unreachable_server_is_one_error_line(args: Sequence[str], tmp_path: Path) -> None:
    url = _closed_port_url()
    result = run(url, *args)
    line = assert_one_error_line(result, "(connection refused); is 'cemesh serve' running?")
    assert url in line


def test_apply_to_unreachable_server_stops_at_the_first_object(tmp_path: Path) -> None:
    url = _closed_port_url()
    manifest = write(tmp_path / "b.yaml", broker("a"), broker("b"))
    line = assert_one_error_line(run(url, "apply", "-f", str(manifest)))
    assert (
        line
        == f"error: cannot reach cemesh at {url} (connection refused); is 'cemesh serve' running?"
    )


def test_unknown_kind_is_one_error_line(server: str, ns: str, tmp_path: Path) -> None:
    assert_one_error_line(run(server, "get", "foos"), "unknown resource kind 'foos'")

    manifest = write(
        tmp_path / "p.yaml",
        {
            "apiVersion": "sources.knative.dev/v1beta1",
            "kind": "KafkaSource",
            "metadata": {"name": "p"},
            "spec": {"topics": ["t"]},
        },
        broker("after"),
    )
    result = run(server, "apply", "-n", ns, "-f", str(manifest))
    assert_one_error_line(result, "KafkaSource", "sources.knative.dev/v1beta1", "not served")
    assert result.stdout.splitlines() == ["broker.eventing.knative.dev/after created"]


def test_invalid_resource_is_one_error_line_naming_the_field(
    server: str, ns: str, tmp_path: Path
) -> None:
    bad = trigger("bad", "http://127.0.0.1:9", delivery={"backoffPolicy": "sometimes"})
    result = run(server, "apply", "-n", ns, "-f", str(write(tmp_path / "t.yaml", bad)))
    assert_one_error_line(result, "trigger.eventing.knative.dev/bad", "spec.delivery.backoffPolicy")


def test_not_found_is_one_error_line(server: str, ns: str) -> None:
    line = assert_one_error_line(run(server, "get", "trigger", "foo", "-n", ns))
    assert line == 'error: triggers.eventing.knative.dev "foo" not found'
    assert_one_error_line(run(server, "delete", "imc", "nope", "-n", ns), '"nope" not found')


def test_db_upgrade_migrates_and_masks_nothing_it_does_not_have(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/up.db"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"database {url} upgraded to head"


def test_db_upgrade_of_an_unreachable_database_masks_the_password() -> None:
    url = _closed_port_url().replace("http://", "postgresql+asyncpg://me:s3cret@") + "/x"
    result = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url])
    line = assert_one_error_line(result, "me:***@")
    assert "s3cret" not in result.output
    assert line.startswith("error: cannot upgrade postgresql+asyncpg://me:***@127.0.0.1:")


def test_serve_with_a_bad_config_file_is_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "cemesh.yaml"
    config.write_text("port: not-a-number\nbus: memory\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert_one_error_line(result, "invalid configuration", "port")
    config.write_text("port: [1\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert_one_error_line(result, "not valid YAML (line 2)")
