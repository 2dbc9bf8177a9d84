"""ApiServerSource (K187-K193): the watcher against a fake kube-apiserver.

The fake server (tests/support/k8s_replay.py) is real HTTP on 127.0.0.1; the watcher reaches it
through a kubeconfig with kubernetes_asyncio, as it would reach a cluster. Most tests build their
changes in code. The tests marked ``shared_conformance`` replay real streams from
``shared_fixture_dir("k8s")`` (kspan Events/Pods from a kind cluster, pulumi Pod/Job workflows,
an apiextensions CR watch with its 410 Expired ERROR event) as an extra conformance pass; the
project's own recordings of the same situations run in test_apiserver_recordings.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from broker.controlplane import resources  # noqa: F401  (loads the resource kinds before broker.features.sources)
from broker.core.errors import InvalidResource
from broker.core.events import CloudEvent
from broker.core.labels import label_selector_string
from broker.dataplane.dispatch.httpclient import Http1Client
from broker.features.sources.apiserver import ApiServerSource, ApiServerWatcher, Backoff
from broker.features.sources.apiserver_objects import (
    admit_api_server_source,
    guess_plural,
    self_link,
    to_cloudevent,
)
from broker.features.sources.base import EventSender, SourceSpec
from tests.conftest import shared_fixture_dir
from tests.support.cemesh import running_cemesh
from tests.support.k8s_replay import (
    FakeKubeApiServer,
    Request,
    read_watch_stream,
    write_kubeconfig,
)
from tests.support.subscriber import RecordingSubscriber

FAST = Backoff(initial=0.01, maximum=0.05)


def k8s(*parts: str) -> Path:
    return shared_fixture_dir("k8s").joinpath(*parts)


class Recorder:
    """An ``on_event`` that records, and lets a test wait for a number of events."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self._changed = asyncio.Condition()

    async def __call__(self, event: CloudEvent) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[CloudEvent]:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.events) >= count)
        except TimeoutError:
            raise AssertionError(f"expected {count} events, got {len(self.events)}") from None
        return list(self.events)


@asynccontextmanager
async def watching(
    api: FakeKubeApiServer, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[ApiServerWatcher, Recorder]]:
    """Run a watcher against ``api`` until the block ends; yield once it listed and watches."""
    recorder = Recorder()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    watcher = ApiServerWatcher(
        kubeconfig=str(kubeconfig), on_event=recorder, backoff=FAST, **options
    )
    task = asyncio.create_task(watcher.run())
    try:
        ready = asyncio.create_task(watcher.ready.wait())
        await asyncio.wait({ready, task}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # re-raise why it stopped
        assert ready.done(), "the watcher did not list within 5s"
        await api.wait_for_watches(len(watcher.targets))
        yield watcher, recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def data(event: CloudEvent) -> Any:
    assert event.data is not None
    return json.loads(event.data)


def is_list(request: Request) -> bool:
    return not request.is_watch and request.path != "/version"


def watch_versions(api: FakeKubeApiServer) -> list[str]:
    return [r.query["resourceVersion"] for r in api.requests if r.is_watch]


def pod(
    name: str, *, uid: str | None = None, labels: Mapping[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": uid or f"uid-{name}"}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": dict(spec)}


# -- Resource mode over recorded streams ----------------------------------------------------


@pytest.mark.shared_conformance
async def test_resource_mode_turns_each_recorded_event_and_pod_into_a_cloudevent_K187_K189_K191(
    tmp_path: Path,
) -> None:
    """kspan's Deployment rollout (19 core/v1 Events, 4 Pods): one add per object, data = it."""
    recorded = read_watch_stream(k8s("derived", "kspan-deployment-2-pods.all-kinds.ndjson"))
    async with (
        FakeKubeApiServer() as api,
        watching(
            api,
            tmp_path,
            resources=[{"apiVersion": "v1", "kind": "Event"}, {"apiVersion": "v1", "kind": "Pod"}],
            mode="Resource",
            namespace="default",
        ) as (_, recorder),
    ):
        stored = await api.replay(recorded)
        expected = [o for o in stored if o["kind"] in ("Event", "Pod") and o["apiVersion"] == "v1"]
        assert len(expected) == 23
        events = await recorder.wait_for(len(expected))

    by_subject = {e.attributes["subject"]: e for e in events}
    assert len(by_subject) == len(events) == len(expected)  # each object once, no duplicate
    for obj in expected:
        meta = obj["metadata"]
        plural = {"Event": "events", "Pod": "pods"}[obj["kind"]]
        event = by_subject[f"/apis/v1/namespaces/default/{plural}/{meta['name']}"]
        assert event.type == "dev.knative.apiserver.resource.add"
        assert event.source == api.url  # K189: the API server URL
        assert event.specversion == "1.0"
        assert event.datacontenttype == "application/json"
        uuid.UUID(event.id)  # K189: a new UUID per event
        assert data(event) == obj  # K187: the whole object, as the server sent it
        assert {k: event.attributes[k] for k in ("kind", "name", "namespace", "apiversion")} == {
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": "default",
            "apiversion": "v1",
        }  # K191
    assert len({e.id for e in events}) == len(events)


@pytest.mark.shared_conformance
@pytest.mark.parametrize(
    "workflow",
    [
        "createSuccess",
        "containerTerminatedError",
        "containerTerminatedSuccess",
        "containerTerminatedSuccessRestartNever",
        "imagePullError",
        "imagePullErrorResolved",
        "scheduled",
        "unready",
        "unscheduled",
    ],
)
async def test_resource_mode_reports_each_pod_change_in_order_and_the_delete_K187(
    tmp_path: Path, workflow: str
) -> None:
    """A recorded Pod lifecycle: add, one update per MODIFIED, delete with the last state."""
    recorded = read_watch_stream(k8s("derived", f"pulumi-pod-{workflow}.ndjson"))
    recorded.append(("DELETED", recorded[-1][1]))
    async with (
        FakeKubeApiServer() as api,
        watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (_, recorder),
    ):
        stored = await api.replay(recorded)
        events = await recorder.wait_for(len(recorded))

    changes = {"ADDED": "add", "MODIFIED": "update", "DELETED": "delete"}
    assert [e.type for e in events] == [
        f"dev.knative.apiserver.resource.{changes[t]}" for t, _ in recorded
    ]
    assert [data(e) for e in events] == stored
    assert {e.attributes["subject"] for e in events} == {"/apis/v1/namespaces/default/pods/foo"}


# -- Reference mode ------------------------------------------------------------------------


@pytest.mark.shared_conformance
async def test_reference_mode_sends_the_object_reference_K188_K190(tmp_path: Path) -> None:
    """Jobs and a custom resource: data is {kind, namespace, name, apiVersion}, Go's order."""
    jobs = read_watch_stream(k8s("derived", "pulumi-job-backoffLimitExceeded.ndjson"))
    widgets = read_watch_stream(k8s("local-apiextensions", "crd-watch-recorded.jsonl"))
    widgets = [(t, o) for t, o in widgets if t != "BOOKMARK"]
    async with (
        FakeKubeApiServer() as api,
        watching(
            api,
            tmp_path,
            resources=[
                {"apiVersion": "batch/v1", "kind": "Job"},
                {"apiVersion": "fixture.example.com/v1", "kind": "Widget"},
            ],
        ) as (_, recorder),
    ):  # mode defaults to Reference
        await api.replay(jobs)
        await api.replay(widgets)
        events = await recorder.wait_for(len(jobs) + len(widgets))

    job_events = [e for e in events if e.attributes["kind"] == "Job"]
    widget_events = [e for e in events if e.attributes["kind"] == "Widget"]
    assert [e.type for e in job_events] == [
        "dev.knative.apiserver.ref.add",
        "dev.knative.apiserver.ref.update",
        "dev.knative.apiserver.ref.update",
    ]
    assert [e.type for e in widget_events] == [
        "dev.knative.apiserver.ref.add",
        "dev.knative.apiserver.ref.update",
        "dev.knative.apiserver.ref.delete",
    ]
    assert job_events[0].data == (
        b'{"kind":"Job","namespace":"default","name":"foo","apiVersion":"batch/v1"}'
    )
    assert data(widget_events[2]) == {
        "kind": "Widget",
        "namespace": "demo",
        "name": "w1",
        "apiVersion": "fixture.example.com/v1",
    }
    assert job_events[0].attributes["subject"] == "/apis/batch/v1/namespaces/default/jobs/foo"
    assert (
        widget_events[0].attributes["subject"]
        == "/apis/fixture.example.com/v1/namespaces/demo/widgets/w1"
    )


# -- Filters ---------------------------------------------------------------------------------


@pytest.mark.shared_conformance
async def test_label_selector_is_sent_to_the_server_and_only_matching_pods_are_reported_K192(
    tmp_path: Path,
) -> None:
    recorded = read_watch_stream(k8s("derived", "kspan-deployment-2-pods.all-kinds.ndjson"))
    pods = [(t, o) for t, o in recorded if o["kind"] == "Pod"]
    selector = {
        "matchLabels": {"app": "podinfo"},
        "matchExpressions": [
            {"key": "pod-template-hash", "operator": "In", "values": ["7df978b9bf"]}
        ],
    }
    async with (
        FakeKubeApiServer() as api,
        watching(
            api,
            tmp_path,
            resources=[{"apiVersion": "v1", "kind": "Pod", "selector": selector}],
            namespace="default",
        ) as (_, recorder),
    ):
        await api.replay(pods)
        await api.apply(
            "ADDED", pod("later", labels={"app": "podinfo", "pod-template-hash": "7df978b9bf"})
        )
        events = await recorder.wait_for(3)

    assert [e.attributes["name"] for e in events] == [
        "px-7df978b9bf-jm22q",
        "px-7df978b9bf-bfdrj",
        "later",
    ]
    sent = {r.query.get("labelSelector") for r in api.requests if r.path.endswith("/pods")}
    assert sent == {"app=podinfo,pod-template-hash in (7df978b9bf)"}


@pytest.mark.shared_conformance
async def test_owner_filter_keeps_only_objects_controlled_by_that_kind_K192(tmp_path: Path) -> None:
    """owner ReplicaSet: the Pods pass (controlled by a ReplicaSet), the ReplicaSets do not."""
    recorded = read_watch_stream(k8s("derived", "kspan-deployment-2-pods.all-kinds.ndjson"))
    async with (
        FakeKubeApiServer() as api,
        watching(
            api,
            tmp_path,
            resources=[
                {"apiVersion": "apps/v1", "kind": "ReplicaSet"},
                {"apiVersion": "v1", "kind": "Pod"},
            ],
            owner={"apiVersion": "apps/v1", "kind": "ReplicaSet"},
            namespace="default",
        ) as (_, recorder),
    ):
        await api.replay(recorded)
        await api.apply("ADDED", pod("orphan"))  # no controller: filtered out
        await api.apply(
            "ADDED",
            {
                **pod("last"),
                "metadata": {
                    **pod("last")["metadata"],
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": "rs",
                            "uid": "x",
                            "controller": True,
                        }
                    ],
                },
            },
        )
        events = await recorder.wait_for(5)

    assert [e.attributes["kind"] for e in events] == ["Pod"] * 5
    assert events[-1].attributes["name"] == "last"


async def test_objects_existing_at_start_are_not_announced_as_knative_does_K187(
    tmp_path: Path,
) -> None:
    """Knative's Reflector lists into a Store whose Replace is a no-op: no add at start."""
    async with FakeKubeApiServer() as api:
        await api.apply("ADDED", pod("old"))
        async with watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (_, recorder):
            await api.apply("MODIFIED", pod("old", image="v2"))
            [event] = await recorder.wait_for(1)
            await api.apply("ADDED", pod("new"))
            events = await recorder.wait_for(2)
    assert event.type == "dev.knative.apiserver.resource.update"
    assert [e.attributes["name"] for e in events] == ["old", "new"]


# -- Connection loss, 410 and bookmarks --------------------------------------------------------


async def test_a_dropped_connection_resumes_from_the_last_version_without_loss_or_duplicate(
    tmp_path: Path,
) -> None:
    """Cut mid-stream: the watch reconnects from the last resourceVersion it handled (K193)."""
    async with (
        FakeKubeApiServer() as api,
        watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (watcher, recorder),
    ):
        first = [await api.apply("ADDED", pod(f"p{i}")) for i in range(3)]
        await recorder.wait_for(3)
        await api.hold()  # the next changes happen, but the open stream does not carry them
        second = [await api.apply("MODIFIED", pod(f"p{i}", image="v2")) for i in range(3)]
        await api.drop_watches()
        await api.release()
        events = await recorder.wait_for(6)
        await api.apply("DELETED", pod("p0"))
        events = await recorder.wait_for(7)

    assert [data(e) for e in events[:6]] == first + second
    assert events[6].type == "dev.knative.apiserver.resource.delete"
    assert len([r for r in api.requests if is_list(r)]) == 1  # no relist was needed
    assert watch_versions(api)[:2] == ["1000", first[-1]["metadata"]["resourceVersion"]]
    assert watcher.resource_version() == str(api.resource_version)


async def test_dropped_connections_while_the_sink_is_slow_lose_and_repeat_nothing(
    tmp_path: Path,
) -> None:
    """Back-pressure: on_event blocks; whatever was in flight when the cut came is not lost."""
    gate = asyncio.Event()
    seen: list[str] = []

    async with FakeKubeApiServer() as api:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        done = asyncio.Event()

        async def slow(event: CloudEvent) -> None:
            if len(seen) == 2:
                await gate.wait()
            seen.append(f"{event.type.rsplit('.', 1)[1]} {event.attributes['name']}")
            if len(seen) == 11:
                done.set()

        watcher = ApiServerWatcher(
            resources=[{"apiVersion": "v1", "kind": "Pod"}],
            kubeconfig=str(kubeconfig),
            on_event=slow,
            backoff=FAST,
        )
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(watcher.ready.wait(), 5)
            await api.wait_for_watches(1)
            for i in range(6):
                await api.apply("ADDED", pod(f"p{i}"))
            await api.drop_watches()  # cut while the watcher is blocked on the third event
            for i in range(6, 10):
                await api.apply("ADDED", pod(f"p{i}"))
            gate.set()
            await api.wait_for_requests(lambda r: r.is_watch, count=2)
            await api.drop_watches()
            await api.apply("DELETED", pod("p9"))
            await asyncio.wait_for(done.wait(), 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert seen == [f"add p{i}" for i in range(10)] + ["delete p9"]


@pytest.mark.shared_conformance
async def test_410_expired_error_event_relists_and_reports_only_what_changed_in_the_gap(
    tmp_path: Path,
) -> None:
    """The recorded apiextensions 410 ERROR event; the relist diff emits exactly the changes."""
    [(kind, status)] = read_watch_stream(k8s("local-apiextensions", "crd-watch-410.ndjson"))
    assert kind == "ERROR" and status["code"] == 410
    async with (
        FakeKubeApiServer() as api,
        watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (watcher, recorder),
    ):
        for name in ("keep", "change", "gone", "replaced"):
            await api.apply("ADDED", pod(name))
        before = await recorder.wait_for(4)
        last_gone = api.objects("v1", "pods")
        await api.hold()
        changed = await api.apply("MODIFIED", pod("change", image="v2"))
        await api.apply("DELETED", pod("gone"))
        added = await api.apply("ADDED", pod("added"))
        await api.apply("ADDED", pod("brief"))
        await api.apply("DELETED", pod("brief"))  # created and deleted in the gap: nothing
        await api.apply("DELETED", pod("replaced"))
        replaced = await api.apply("ADDED", pod("replaced", uid="uid-replaced-2"))
        await api.compact()
        await api.expire_watches(status)
        await api.release()
        events = await recorder.wait_for(9)
        await api.apply("MODIFIED", pod("keep", image="v3"))
        events = await recorder.wait_for(10)

    gap = [(e.type.rsplit(".", 1)[1], data(e)) for e in events[4:9]]
    old = {o["metadata"]["name"]: o for o in last_gone}
    assert sorted(gap, key=lambda c: (c[1]["metadata"]["name"], c[0])) == [
        ("add", added),
        ("update", changed),
        ("delete", old["gone"]),  # the last known state
        ("add", replaced),
        ("delete", old["replaced"]),
    ]
    assert events[:4] == before
    assert events[9].attributes["name"] == "keep"
    assert len([r for r in api.requests if is_list(r)]) == 2
    assert watcher.resource_version() == str(api.resource_version)


async def test_reconnecting_with_a_compacted_version_gets_410_and_relists_without_duplicates(
    tmp_path: Path,
) -> None:
    """Dropped while behind, and the history was compacted: WATCH answers 410, then relist."""
    async with (
        FakeKubeApiServer() as api,
        watching(api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}]) as (_, recorder),
    ):
        await api.apply("ADDED", pod("a"))
        await recorder.wait_for(1)
        await api.hold()
        await api.apply("ADDED", pod("b"))
        compacted = await api.compact()
        await api.drop_watches()
        await api.release()
        events = await recorder.wait_for(2)
        await api.apply("ADDED", pod("c"))
        events = await recorder.wait_for(3)

    assert [(e.type, e.attributes["name"]) for e in events] == [
        ("dev.knative.apiserver.ref.add", "a"),
        ("dev.knative.apiserver.ref.add", "b"),
        ("dev.knative.apiserver.ref.add", "c"),
    ]
    versions = watch_versions(api)
    assert int(versions[1]) < compacted  # the stale resume that got the 410 ERROR event
    assert versions[2] == str(compacted)  # the relist's version
    assert len([r for r in api.requests if is_list(r)]) == 2


async def test_bookmarks_advance_the_resource_version_so_a_reconnect_needs_no_relist(
    tmp_path: Path,
) -> None:
    """Changes the selector hides move the version on; a BOOKMARK tells the watcher."""
    async with (
        FakeKubeApiServer() as api,
        watching(
            api,
            tmp_path,
            resources=[
                {"apiVersion": "v1", "kind": "Pod", "selector": {"matchLabels": {"app": "x"}}}
            ],
        ) as (watcher, recorder),
    ):
        start = watcher.resource_version()
        for i in range(5):
            await api.apply("ADDED", pod(f"other{i}", labels={"app": "y"}))
        await api.send_bookmarks()
        async with asyncio.timeout(5):
            await watcher.wait_for_resource_version(str(api.resource_version))
        compacted = await api.compact()
        await api.drop_watches()
        await api.apply("ADDED", pod("mine", labels={"app": "x"}))
        [event] = await recorder.wait_for(1)

    assert start == "1000"
    assert event.attributes["name"] == "mine"
    assert watch_versions(api)[1] == str(compacted)  # resumed from the bookmark: no 410
    assert len([r for r in api.requests if is_list(r)]) == 1


@pytest.mark.shared_conformance
async def test_the_recorded_watch_stream_with_an_initial_events_end_bookmark_is_followed(
    tmp_path: Path,
) -> None:
    """The raw apiextensions stream (BOOKMARK first, then add/update/delete of a Widget)."""
    raw = read_watch_stream(k8s("local-apiextensions", "crd-watch-raw.ndjson"))
    async with (
        FakeKubeApiServer() as api,
        watching(
            api,
            tmp_path,
            resources=[{"apiVersion": "fixture.example.com/v1", "kind": "Widget"}],
            mode="Resource",
            namespace="demo",
        ) as (_, recorder),
    ):
        stored = await api.replay([(t, o) for t, o in raw if t != "BOOKMARK"])
        events = await recorder.wait_for(3)
    assert [data(e)["spec"] for e in events] == [{"size": 3}, {"size": 4}, {"size": 4}]
    assert [data(e) for e in events] == stored


async def test_namespace_selector_watches_the_matching_namespaces_K192(tmp_path: Path) -> None:
    async with FakeKubeApiServer() as api:
        for name, team in (("a", "blue"), ("b", "red"), ("c", "blue")):
            await api.apply(
                "ADDED",
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "labels": {"team": team}},
                },
            )
        async with watching(
            api,
            tmp_path,
            resources=[{"apiVersion": "v1", "kind": "Pod"}],
            namespace_selector={"matchLabels": {"team": "blue"}},
        ) as (watcher, recorder):
            for namespace in ("a", "b", "c"):
                await api.apply(
                    "ADDED",
                    {
                        **pod("p"),
                        "metadata": {"name": "p", "namespace": namespace, "uid": namespace},
                    },
                )
            events = await recorder.wait_for(2)
    assert sorted(str(e.attributes["namespace"]) for e in events) == ["a", "c"]
    assert sorted(t.namespace or "" for t in watcher.targets) == ["a", "c"]


# -- As a source of the framework ----------------------------------------------------------


async def test_the_source_sends_to_its_sink_in_binary_mode_with_ce_overrides_K182_K187(
    tmp_path: Path,
) -> None:
    """ApiServerSource run by broker.features.sources: its namespace only, ceOverrides added."""
    obj = source_obj(mode="Resource", resources=[{"apiVersion": "v1", "kind": "Pod"}])
    admit_api_server_source(obj, None)
    client = Http1Client()
    async with FakeKubeApiServer() as api, RecordingSubscriber() as sink:
        spec = SourceSpec(
            kind="ApiServerSource",
            namespace="default",
            name="s",
            uid="uid-1",
            sink_uri=f"{sink.url}/sink",
            ce_overrides={"team": "blue"},
            spec=obj["spec"],
        )
        settings = SimpleNamespace(
            kubeconfig=str(write_kubeconfig(tmp_path / "kc", api.url)),
            kube_watch_progress_bound=150.0,
        )
        context = cast(Any, SimpleNamespace(settings=settings))
        source = ApiServerSource(
            spec, EventSender(client, spec.sink_uri, spec.ce_overrides), context
        )
        task = asyncio.create_task(source.run())
        try:
            await api.wait_for_watches(1)
            other = {**pod("elsewhere"), "metadata": {"name": "x", "namespace": "other"}}
            await api.apply("ADDED", other)
            stored = await api.apply("ADDED", pod("here"))
            [received] = await sink.wait_for(1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await source.close()
            await client.close()
    assert [r.path for r in api.requests if r.is_watch] == ["/api/v1/namespaces/default/pods"]
    assert received.headers["ce-type"] == "dev.knative.apiserver.resource.add"
    assert received.headers["ce-team"] == "blue"
    assert received.headers["ce-subject"] == "/apis/v1/namespaces/default/pods/here"
    assert json.loads(received.body) == stored


# -- The pure parts ------------------------------------------------------------------------


@pytest.mark.shared_conformance
def test_subject_is_knatives_guessed_self_link_K190() -> None:
    events_v1 = json.loads(k8s("k8s-api-testdata", "events.k8s.io.v1.Event.json").read_text())
    event = to_cloudevent("add", events_v1, mode="Resource", source="https://10.96.0.1:443")
    assert event.attributes["subject"] == (
        "/apis/events.k8s.io/v1/namespaces/namespaceValue/events/nameValue"
    )
    assert self_link("serving.knative.dev", "Revision", "ns", "r") == (
        "/apis/serving.knative.dev/versionUnknown/namespaces/ns/revisions/r"
    )
    assert [guess_plural(k) for k in ("Pod", "Ingress", "NetworkPolicy", "Endpoints")] == [
        "pods",
        "ingresses",
        "networkpolicies",
        "endpoints",
    ]


def test_resource_data_has_sorted_keys_as_go_marshals_a_map_K187() -> None:
    obj = {"metadata": {"name": "n", "namespace": "d"}, "kind": "Pod", "apiVersion": "v1"}
    event = to_cloudevent("delete", obj, mode="Resource", source="s")
    assert event.data == (
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"n","namespace":"d"}}'
    )
    assert event.type == "dev.knative.apiserver.resource.delete"


def test_a_cluster_scoped_object_has_no_namespace_in_its_reference_or_extensions_K188() -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}
    event = to_cloudevent("update", namespace, mode="Reference", source="s")
    assert event.data == b'{"kind":"Namespace","name":"demo","apiVersion":"v1"}'
    assert "namespace" not in event.attributes
    assert event.type == "dev.knative.apiserver.ref.update"


def test_label_selector_string_matches_kubernetes_printing() -> None:
    selector = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [
            {"key": "c", "operator": "NotIn", "values": ["y", "x"]},
            {"key": "d", "operator": "Exists"},
            {"key": "aa", "operator": "DoesNotExist"},
        ],
    }
    assert label_selector_string(selector) == "a=1,!aa,b=2,c notin (x,y),d"
    assert label_selector_string(None) == label_selector_string({}) == ""


def source_obj(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "ApiServerSource",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"resources": [{"apiVersion": "v1", "kind": "Event"}], **spec},
    }


def test_admission_defaults_mode_to_reference_K192() -> None:
    obj = source_obj()
    admit_api_server_source(obj, None)
    assert obj["spec"]["mode"] == "Reference"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"resources": []}, "spec.resources"),
        ({"resources": [{"apiVersion": "v1"}]}, "spec.resources[0].kind"),
        ({"resources": [{"kind": "Pod"}]}, "spec.resources[0].apiVersion"),
        ({"resources": [{"apiVersion": "a/b/c", "kind": "Pod"}]}, "spec.resources[0].apiVersion"),
        ({"mode": "Ref"}, "spec.mode"),
        ({"owner": {"apiVersion": "apps/v1"}}, "spec.owner.kind"),
        (
            {
                "resources": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]},
                    }
                ]
            },
            "spec.resources[0].selector.matchExpressions[0].operator",
        ),
        (
            {"namespaceSelector": {"matchLabels": {"team": 1}}},
            "spec.namespaceSelector.matchLabels[team]",
        ),
    ],
)
def test_admission_names_the_bad_field_K192(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        admit_api_server_source(source_obj(**spec), None)
    assert caught.value.field == field


async def test_an_applied_api_server_source_reaches_a_trigger_through_a_broker_K187(
    tmp_path: Path,
) -> None:
    """The whole path: ApiServerSource applied to a running cemesh (CEMESH_KUBECONFIG), its sink
    a Broker, a Trigger on the add type to a subscriber; the source is Ready with sinkUri and
    its event types are listed as EventTypes."""
    async with FakeKubeApiServer() as api, RecordingSubscriber() as subscriber:
        kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", api.url))
        async with running_cemesh(tmp_path, kubeconfig=kubeconfig) as mesh:
            await mesh.apply(
                """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: pods}
spec:
  broker: default
  filter: {attributes: {type: dev.knative.apiserver.resource.add}}
  subscriber: {uri: SUBSCRIBER/pods}
---
apiVersion: sources.knative.dev/v1
kind: ApiServerSource
metadata: {name: pods}
spec:
  mode: Resource
  resources: [{apiVersion: v1, kind: Pod}]
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
""".replace("SUBSCRIBER", subscriber.url)
            )
            await api.wait_for_watches(1)
            stored = await api.apply("ADDED", pod("web"))
            [received] = await subscriber.wait_for(1)
            path = "/apis/sources.knative.dev/v1/namespaces/default/apiserversources/pods"
            status = (await mesh.client.get(path)).json()["status"]
            types = (
                await mesh.client.get(
                    "/apis/eventing.knative.dev/v1beta2/namespaces/default/eventtypes"
                )
            ).json()["items"]
    assert received.headers["ce-subject"] == "/apis/v1/namespaces/default/pods/web"
    assert json.loads(received.body) == stored
    assert status["sinkUri"] == f"{mesh.url}/default/default"
    assert {t["spec"]["type"] for t in types} >= {
        "dev.knative.apiserver.resource.add",
        "dev.knative.apiserver.resource.update",
        "dev.knative.apiserver.resource.delete",
    }
