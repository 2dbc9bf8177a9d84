"""The pure parts of the ``cemesh`` CLI: manifests, the apply decision, tables, redaction, send.

The commands themselves, against a real cemesh, are in tests/integration/test_cli.py.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import cli
from broker.cli.manifests import Document
from broker.controlplane.resources import BROKER, SECRET, TRIGGER
from broker.core.errors import InvalidResource
from broker.server.features import type_for_name

NOW = datetime(2026, 6, 20, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- manifests ------------------------------------------------------------------------------


def test_multi_document_yaml_gives_every_object_and_skips_empty_documents() -> None:
    text = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: a}
---
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
"""
    documents, problems = cli.load_documents(text, "x.yaml")
    assert [d.obj["kind"] for d in documents] == ["Broker", "Trigger"]
    assert [d.source for d in documents] == ["x.yaml (document 1)", "x.yaml (document 2)"]
    assert problems == []


def test_json_manifest_and_json_list_are_loaded() -> None:
    one = json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
    documents, _ = cli.load_documents(one, "s.json")
    assert documents[0].obj["metadata"]["name"] == "s"

    many = json.dumps(
        [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n}} for n in "ab"]
    )
    documents, _ = cli.load_documents(many, "s.json")
    assert [d.obj["metadata"]["name"] for d in documents] == ["a", "b"]


def test_kind_list_with_items_is_expanded_like_kubectl() -> None:
    text = """
apiVersion: v1
kind: List
items:
- {apiVersion: eventing.knative.dev/v1, kind: Broker, metadata: {name: a}}
- {apiVersion: eventing.knative.dev/v1, kind: Broker, metadata: {name: b}}
"""
    documents, problems = cli.load_documents(text, "l.yaml")
    assert [d.obj["metadata"]["name"] for d in documents] == ["a", "b"]
    assert problems == []


def test_a_document_that_is_not_a_kubernetes_object_is_reported_not_sent() -> None:
    documents, problems = cli.load_documents("channels:\n  - name: InMemoryChannel\n", "c.yaml")
    assert documents == []
    assert problems == ["c.yaml: not a Kubernetes object: apiVersion and kind not set"]


def test_invalid_yaml_is_one_error_naming_file_and_line() -> None:
    with pytest.raises(cli.ManifestError, match=r"^bad.yaml: not valid YAML \(line 2\)"):
        cli.load_documents("a: b\n  c: : d\n", "bad.yaml")


def test_manifest_files_of_a_directory_are_yaml_yml_json_in_name_order(tmp_path) -> None:
    for name in ("b.yml", "a.yaml", "c.json", "readme.md"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yaml").write_text("{}")
    assert [p.name for p in cli.manifest_files(tmp_path)] == ["a.yaml", "b.yml", "c.json"]
    assert [p.name for p in cli.manifest_files(tmp_path, recursive=True)] == [
        "a.yaml",
        "b.yml",
        "c.json",
        "d.yaml",
    ]


def test_object_type_names_kind_and_api_version_of_kinds_not_served() -> None:
    with pytest.raises(
        cli.ManifestError, match=r"kind KafkaSource \(sources.knative.dev/v1beta1\)"
    ):
        cli.object_type({"apiVersion": "sources.knative.dev/v1beta1", "kind": "KafkaSource"})
    assert cli.object_type({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger"}) is TRIGGER


def test_object_refs_use_kubectl_names() -> None:
    assert cli.object_ref(BROKER, "default") == "broker.eventing.knative.dev/default"
    assert cli.object_ref(SECRET, "s") == "secret/s"
    assert cli.object_namespace({"metadata": {"namespace": "x"}}, "default") == "x"
    assert cli.object_namespace({"metadata": {}}, "dev") == "dev"
    with pytest.raises(InvalidResource, match=r"metadata\.name"):
        cli.object_name({"metadata": {}})


# --- apply decision -----------------------------------------------------------------------


def _trigger(**spec: object) -> dict:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t", "labels": {"a": "b"}},
        "spec": {"broker": "default", "subscriber": {"uri": "http://x"}, **spec},
    }


def _stored(obj: dict) -> dict:
    stored = json.loads(json.dumps(obj))
    stored["metadata"].update(
        namespace="default", uid="u", resourceVersion="7", creationTimestamp=ago(seconds=5)
    )
    stored["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    return stored


def test_apply_decision_unchanged_ignores_server_set_metadata_and_status() -> None:
    assert cli.apply_decision(_trigger(), _stored(_trigger())) == "unchanged"


def test_apply_decision_configured_when_spec_labels_or_annotations_differ() -> None:
    stored = _stored(_trigger())
    assert (
        cli.apply_decision(_trigger(filter={"attributes": {"type": "x"}}), stored) == "configured"
    )
    relabelled = _trigger()
    relabelled["metadata"]["labels"] = {"a": "c"}
    assert cli.apply_decision(relabelled, stored) == "configured"
    annotated = _trigger()
    annotated["metadata"]["annotations"] = {"k": "v"}
    assert cli.apply_decision(annotated, stored) == "configured"


def test_apply_decision_uses_admission_defaults_so_reapplying_is_unchanged() -> None:
    """Server defaults (K59 broker class, K67 empty filter and broker label) are no change."""
    from broker.server.features import admit

    written = _trigger()
    stored = _stored(admit(json.loads(json.dumps(written)), namespace="default"))
    assert cli.apply_decision(written, stored) == "configured"  # as written: defaults differ
    defaults = cli.admission_defaults("default", stored)
    assert cli.apply_decision(written, stored, defaults=defaults) == "unchanged"


def test_apply_decision_folds_secret_string_data_into_data() -> None:
    written = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "type": "Opaque",
        "stringData": {"token": "hunter2"},
    }
    stored = _stored({**written, "data": {"token": base64.b64encode(b"hunter2").decode()}})
    del stored["stringData"]
    assert cli.apply_decision(written, stored) == "unchanged"
    written["stringData"] = {"token": "other"}
    assert cli.apply_decision(written, stored) == "configured"


def test_with_version_sets_namespace_and_resource_version_and_drops_status() -> None:
    body = cli.with_version(_stored(_trigger()), "dev", "42")
    assert body["metadata"]["namespace"] == "dev"
    assert body["metadata"]["resourceVersion"] == "42"
    assert "status" not in body


# --- redaction ------------------------------------------------------------------------------


def test_redact_replaces_every_secret_value_in_objects_and_lists() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"x":"hunter2"}'},
        },
        "data": {"a": "aHVudGVyMg==", "b": "eA=="},
        "stringData": {"c": "hunter2"},
    }
    for redacted in (
        cli.redact(secret),
        cli.redact({"kind": "List", "items": [secret]})["items"][0],
    ):
        text = json.dumps(redacted)
        assert "hunter2" not in text and "aHVudGVyMg" not in text
        assert redacted["data"] == {"a": cli.REDACTED, "b": cli.REDACTED}
        assert redacted["stringData"] == {"c": cli.REDACTED}
    assert secret["data"]["a"] == "aHVudGVyMg=="  # the input is left alone


def test_redact_leaves_other_kinds_alone() -> None:
    broker = {"kind": "Broker", "data": {"a": "b"}}
    assert cli.redact(broker) == broker


# --- tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=3, seconds=20), "3m20s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(minutes=90), "90m"),
        (timedelta(hours=5, minutes=7), "5h7m"),
        (timedelta(hours=30), "30h"),
        (timedelta(days=2, hours=3), "2d3h"),
        (timedelta(days=400), "400d"),
        (timedelta(days=365 * 3 + 10), "3y10d"),
    ],
)
def test_human_age_matches_kubectl(delta: timedelta, text: str) -> None:
    created = (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cli.human_age(created, NOW) == text


def test_human_age_of_missing_or_bad_timestamps() -> None:
    assert cli.human_age(None, NOW) == "<unknown>"
    assert cli.human_age("yesterday", NOW) == "<invalid>"


def _broker(name: str, ns: str = "default", ready: str = "True", reason: str = "") -> dict:
    return {
        "kind": "Broker",
        "metadata": {
            "name": name,
            "namespace": ns,
            "creationTimestamp": ago(seconds=30),
            "annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"},
        },
        "status": {
            "address": {"url": f"http://127.0.0.1:8080/{ns}/{name}"},
            "conditions": [{"type": "Ready", "status": ready, "reason": reason}],
        },
    }


def test_broker_table_has_kn_columns() -> None:
    table = cli.render_table(
        "Broker", [_broker("default"), _broker("b2", ready="False", reason="X")], now=NOW
    )
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "URL", "READY", "REASON", "AGE"]
    assert lines[1].split() == ["default", "http://127.0.0.1:8080/default/default", "True", "30s"]
    assert lines[2].split() == ["b2", "http://127.0.0.1:8080/default/b2", "False", "X", "30s"]
    # columns are aligned: every row's READY starts at the same offset
    assert {
        line.index(word) for line, word in zip(lines, ("READY", "True", "False"), strict=True)
    } == {lines[0].index("READY")}


def test_all_namespaces_adds_namespace_and_wide_adds_wide_columns() -> None:
    rows = cli.table_rows("Broker", [_broker("a", "dev")], now=NOW, all_namespaces=True, wide=True)
    assert rows[0] == ["NAME", "NAMESPACE", "URL", "READY", "REASON", "CLASS", "CHANNEL", "AGE"]
    assert rows[1][:2] == ["a", "dev"] and rows[1][5] == "MTChannelBasedBroker"


def test_trigger_subscription_channel_secret_columns() -> None:
    trigger = {
        "metadata": {"name": "t"},
        "spec": {"broker": "default"},
        "status": {"subscriberUri": "http://sub", "conditions": []},
    }
    assert cli.table_rows("Trigger", [trigger], now=NOW)[1] == [
        "t",
        "default",
        "http://sub",
        "Unknown",
        "",
        "<unknown>",
    ]
    subscription = {
        "metadata": {"name": "s"},
        "spec": {"channel": {"kind": "InMemoryChannel", "name": "c"}},
        "status": {"physicalSubscription": {"subscriberUri": "http://a", "replyUri": "http://b"}},
    }
    rows = cli.table_rows("Subscription", [subscription], now=NOW)
    assert rows[0] == ["NAME", "CHANNEL", "SUBSCRIBER_URI", "REPLY_URI", "READY", "AGE"]
    assert rows[1][:4] == ["s", "InMemoryChannel:c", "http://a", "http://b"]
    channel_rows = cli.table_rows("InMemoryChannel", [_broker("c")], now=NOW)
    assert channel_rows[0] == ["NAME", "URL", "READY", "AGE"]
    secret = {"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "eA==", "b": "eA=="}}
    assert cli.table_rows("Secret", [secret], now=NOW) == [
        ["NAME", "TYPE", "DATA", "AGE"],
        ["s", "Opaque", "2", "<unknown>"],
    ]


def test_broker_wide_table_shows_its_backing_channel_kind() -> None:
    broker = _broker("b")
    broker["status"]["annotations"] = {"knative.dev/channelKind": "KafkaChannel"}
    rows = cli.table_rows("Broker", [broker], now=NOW, wide=True)
    assert rows[1][rows[0].index("CHANNEL")] == "KafkaChannel"
    assert "CHANNEL" not in cli.table_rows("Broker", [broker], now=NOW)[0]


def test_channel_table_shows_the_backing_kind_as_kn_does() -> None:
    channel = _broker("ch")
    channel["status"]["channel"] = {"kind": "KafkaChannel", "name": "ch"}
    rows = cli.table_rows("Channel", [channel], now=NOW)
    assert rows[0] == ["NAME", "TYPE", "URL", "READY", "AGE"]
    assert rows[1][:4] == ["ch", "KafkaChannel", "http://127.0.0.1:8080/default/ch", "True"]


@pytest.mark.parametrize(
    "kind", ["InMemoryChannel", "KafkaChannel", "NatsJetStreamChannel", "PubSubChannel"]
)
def test_every_channel_kind_has_url_and_ready_columns(kind: str) -> None:
    assert cli.table_rows(kind, [_broker("c")], now=NOW)[0] == ["NAME", "URL", "READY", "AGE"]


def test_kafka_channel_wide_table_shows_partitions_replication_and_retention() -> None:
    channel = _broker("k")
    channel["spec"] = {"numPartitions": 3, "replicationFactor": 1, "retentionDuration": "PT1H"}
    rows = cli.table_rows("KafkaChannel", [channel], now=NOW, wide=True)
    assert rows[0][-4:] == ["PARTITIONS", "REPLICATION", "RETENTION", "AGE"]
    assert rows[1][-4:-1] == ["3", "1", "PT1H"]


def test_config_map_table_counts_its_keys_like_kubectl() -> None:
    config_map = {"metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": "eA=="}}
    assert cli.table_rows("ConfigMap", [config_map], now=NOW) == [
        ["NAME", "DATA", "AGE"],
        ["c", "2", "<unknown>"],
    ]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("kafkachannels", "KafkaChannel"),
        ("kc", "KafkaChannel"),
        ("natsjetstreamchannels", "NatsJetStreamChannel"),
        ("natschannel", "NatsJetStreamChannel"),
        ("pubsubchannels", "PubSubChannel"),
        ("redisstreamchannels", "RedisStreamChannel"),
        ("redischannel", "RedisStreamChannel"),
        ("cm", "ConfigMap"),
        ("configmaps", "ConfigMap"),
    ],
)
def test_get_names_the_new_channel_kinds_and_config_maps(name: str, kind: str) -> None:
    assert type_for_name(name).kind == kind


def test_kinds_without_a_columns_row_get_ready_and_reason() -> None:
    rows = cli.table_rows("KafkaSource", [_broker("p")], now=NOW)
    assert rows[0] == ["NAME", "READY", "REASON", "AGE"]


def test_empty_message_like_kubectl() -> None:
    assert cli.empty_message("dev") == "No resources found in dev namespace."
    assert cli.empty_message(None) == "No resources found"


# --- send -----------------------------------------------------------------------------------


def test_resolve_target_broker_channel_and_url() -> None:
    server = "http://127.0.0.1:9000"
    assert cli.resolve_target("broker:dev/default", server) == "http://127.0.0.1:9000/dev/default"
    assert cli.resolve_target("broker:default", server) == "http://127.0.0.1:9000/default/default"
    assert cli.resolve_target("channel:dev/c", server) == "http://127.0.0.1:9000/channels/dev/c"
    assert cli.resolve_target("http://elsewhere/x", server) == "http://elsewhere/x"
    for bad in ("broker:", "queue:a/b", "broker:a/b/c", "nowhere"):
        with pytest.raises(click.BadParameter):
            cli.resolve_target(bad, server)


def test_build_event_defaults_content_type_from_data_and_adds_subject_and_extensions() -> None:
    event = cli.build_event(
        type="t",
        source="cemesh/cli",
        data=b'{"a": 1}',
        content_type=None,
        id=None,
        subject="s",
        extensions={"ext": "v"},
    )
    assert event.datacontenttype == "application/json"
    assert event.get("subject") == "s" and event.get("ext") == "v"
    assert event.id and event.get("time")  # generated
    text = cli.build_event(
        type="t", source="s", data=b"hi", content_type=None, id="1", subject=None, extensions={}
    )
    assert text.datacontenttype == "text/plain" and text.id == "1"
    empty = cli.build_event(
        type="t", source="s", data=None, content_type=None, id="1", subject=None, extensions={}
    )
    assert empty.datacontenttype is None and empty.data is None


def test_parse_extensions_checks_names() -> None:
    assert cli.parse_extensions(["a1=x=y", "b="]) == {"a1": "x=y", "b": ""}
    for bad in ("novalue", "=v", "Upper=x", "dash-ed=x"):
        with pytest.raises(click.BadParameter):
            cli.parse_extensions([bad])


# --- misc -----------------------------------------------------------------------------------


def test_mask_password() -> None:
    assert (
        cli.mask_password("postgresql+asyncpg://me:s3cr%40t@db:5432/cemesh")
        == "postgresql+asyncpg://me:***@db:5432/cemesh"
    )
    assert cli.mask_password("sqlite+aiosqlite:///./cemesh.db") == "sqlite+aiosqlite:///./cemesh.db"
    assert cli.mask_password("postgresql://me@db/x") == "postgresql://me@db/x"


def test_transport_reason_names_connection_refused() -> None:
    import httpx

    error = httpx.ConnectError("[Errno 111] Connection refused")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert cli.transport_reason(error) == "connection refused"
    assert cli.transport_reason(httpx.ReadTimeout("x")) == "timed out"


def test_settings_error_is_one_line_naming_the_field() -> None:
    from broker.core.config import Settings

    with pytest.raises(ValueError) as caught:
        Settings(port="many")
    message = cli.settings_error(caught.value)
    assert message.startswith("invalid configuration: port: ")
    assert "\n" not in message


def test_server_message_reads_status_ingress_and_fastapi_bodies() -> None:
    import httpx

    def answer(status: int, body: bytes) -> httpx.Response:
        return httpx.Response(status, content=body, request=httpx.Request("GET", "http://x"))

    assert cli.server_message(answer(404, b'{"kind":"Status","message":"x not found"}')) == (
        "x not found"
    )
    assert cli.server_message(answer(405, b'{"detail":"Method Not Allowed"}')) == (
        "Method Not Allowed"
    )
    assert cli.server_message(answer(502, b"bad gateway\nmore")) == "bad gateway"
    assert cli.server_message(answer(503, b"")) == "Service Unavailable"


def test_empty_subject_is_refused_c9() -> None:
    with pytest.raises(click.BadParameter):
        cli.build_event(
            type="t", source="s", data=None, content_type=None, id="1", subject="", extensions={}
        )


def _manifest_items() -> st.SearchStrategy[list[Document | str]]:
    document = st.builds(
        lambda kind, name: Document({"kind": kind, "metadata": {"name": name}}, "m.yaml"),
        st.sampled_from(["Broker", "Trigger"]),
        st.sampled_from([f"n{index}" for index in range(80)]),
    )
    return st.lists(document | st.just("m.yaml: bad document"), max_size=300)


@given(_manifest_items())
@settings(max_examples=200, deadline=None)
def test_apply_sends_in_a_bounded_window_never_one_object_twice_and_prints_in_order(
    items: list[Document | str],
) -> None:
    from broker.cli.manifests import APPLY_CONCURRENCY, apply_schedule, document_identity

    sent: list[Document | str] = []
    finished: list[Document | str] = []
    under_way: list[Document] = []
    for step, item in apply_schedule(items):
        if step == "send":
            assert isinstance(item, Document)
            assert document_identity(item) not in {document_identity(other) for other in under_way}
            under_way.append(item)
            assert len(under_way) <= APPLY_CONCURRENCY
            sent.append(item)
        else:
            if isinstance(item, Document):
                assert under_way[0] is item  # the oldest under way finishes first
                under_way.pop(0)
            finished.append(item)
    assert finished == items  # every document and message, in document order
    assert sent == [item for item in items if isinstance(item, Document)]
    assert not under_way


def test_apply_holds_back_only_what_the_window_or_a_repeated_object_requires() -> None:
    from broker.cli.manifests import APPLY_CONCURRENCY, apply_schedule

    def doc(name: str) -> Document:
        return Document({"kind": "Trigger", "metadata": {"name": name}}, "m.yaml")

    distinct = [doc(f"x{n}") for n in range(APPLY_CONCURRENCY + 1)]
    steps = [step for step, _ in apply_schedule(distinct)]
    # A full window of distinct objects is sent before the first finishes; then one at a time.
    assert steps[: APPLY_CONCURRENCY + 2] == ["send"] * APPLY_CONCURRENCY + ["finish", "send"]
    again: list[Document | str] = [doc("a"), doc("b"), doc("a")]
    named = [(step, item) for step, item in apply_schedule(again) if isinstance(item, Document)]
    assert [(step, item.obj["metadata"]["name"]) for step, item in named] == [
        ("send", "a"),
        ("send", "b"),
        ("finish", "a"),  # the same object again waits for its first document
        ("send", "a"),
        ("finish", "b"),
        ("finish", "a"),
    ]
