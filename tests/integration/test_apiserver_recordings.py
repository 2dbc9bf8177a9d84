"""ApiServerSource over the project's own watch recordings (tests/data/k8s, see its README).

The watcher reaches the fake kube-apiserver (tests/support/k8s_replay.py) over real HTTP with a
kubeconfig, lists, then watches; the server replays a recording as a stream of changes, each with
the next resourceVersion. What is checked:

- Resource mode: one event per change of a watched kind (add/update/delete), data the object as
  the server sent it, source the API server URL, subject Knative's self link, the kind, name,
  namespace and apiVersion extensions; changes of one object arrive in order;
- Reference mode: data is the object reference, in Knative's field order;
- a label selector is sent to the server and an owner filter keeps only controlled objects;
- a stream that opens with the ``k8s.io/initial-events-end`` BOOKMARK is followed;
- the recorded 410 ``Expired`` ERROR event makes the watcher relist and report only the gap;
- connection loss resumes from the last resourceVersion (the generic cases are in
  test_apiserver_source.py; these add a recorded rollout across a drop).

The ``../shared`` recordings (kind-cluster and pulumi captures) run in test_apiserver_source.py
as an extra conformance pass.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from broker.features.sources.apiserver_objects import to_cloudevent
from tests.integration.test_apiserver_source import data, is_list, pod, watching
from tests.support.k8s_replay import FakeKubeApiServer, read_watch_stream

RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "k8s"
CHANGE = {"ADDED": "add", "MODIFIED": "update", "DELETED": "delete"}


def recording(name: str) -> list[tuple[str, dict]]:
    return read_watch_stream(RECORDINGS / name)


async def test_a_recorded_rollout_gives_one_resource_event_per_pod_and_event_change(
    tmp_path: Path,
) -> None:
    rollout = recording("deployment-rollout.ndjson")
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
        stored = await api.replay(rollout)
        watched = [
            (change, obj)
            for (change, _), obj in zip(rollout, stored, strict=True)
            if obj["apiVersion"] == "v1"
        ]
        assert len(watched) == 12  # 5 Events, 7 changes of 3 Pods; no Deployment/ReplicaSet
        events = await recorder.wait_for(len(watched))

    assert len(events) == len(watched)
    assert len({e.id for e in events}) == len(events)
    by_object: dict[str, list] = {}
    for event in events:
        by_object.setdefault(str(event.attributes["subject"]), []).append(event)
    for change, obj in watched:
        meta = obj["metadata"]
        plural = {"Event": "events", "Pod": "pods"}[obj["kind"]]
        subject = f"/apis/v1/namespaces/default/{plural}/{meta['name']}"
        event = next(e for e in by_object[subject] if data(e) == obj)
        assert event.type == f"dev.knative.apiserver.resource.{CHANGE[change]}"
        assert event.source == api.url
        assert event.datacontenttype == "application/json"
        uuid.UUID(event.id)
        assert {k: event.attributes[k] for k in ("kind", "name", "namespace", "apiversion")} == {
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": "default",
            "apiversion": "v1",
        }
    # one object's changes arrive in the order they happened
    first_pod = f"/apis/v1/namespaces/default/pods/{watched[0][1]['metadata']['name']}"
    assert [e.type.rsplit(".", 1)[1] for e in by_object[first_pod]] == ["add", "update", "update"]


@pytest.mark.parametrize("name", ["pod-crashloop.ndjson", "pod-image-pull-error.ndjson"])
async def test_a_recorded_pod_lifecycle_is_reported_change_by_change_then_deleted(
    tmp_path: Path, name: str
) -> None:
    lifecycle = recording(name)
    lifecycle.append(("DELETED", lifecycle[-1][1]))
    async with (
        FakeKubeApiServer() as api,
        watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (_, recorder),
    ):
        stored = await api.replay(lifecycle)
        events = await recorder.wait_for(len(lifecycle))

    assert [e.type for e in events] == [
        f"dev.knative.apiserver.resource.{CHANGE[change]}" for change, _ in lifecycle
    ]
    assert [data(e) for e in events] == stored
    assert [int(data(e)["metadata"]["resourceVersion"]) for e in events] == sorted(
        int(o["metadata"]["resourceVersion"]) for o in stored
    )
    assert {e.attributes["subject"] for e in events} == {"/apis/v1/namespaces/default/pods/worker"}


async def test_reference_mode_reports_a_job_and_a_custom_resource_by_reference(
    tmp_path: Path,
) -> None:
    job = recording("job-backoff-limit.ndjson")
    widget = [(t, o) for t, o in recording("widget-watch.ndjson") if t != "BOOKMARK"]
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
    ):  # Reference is the default mode
        await api.replay(job)
        await api.replay(widget)
        events = await recorder.wait_for(len(job) + len(widget))

    jobs = [e for e in events if e.attributes["kind"] == "Job"]
    widgets = [e for e in events if e.attributes["kind"] == "Widget"]
    assert [e.type for e in jobs] == [
        "dev.knative.apiserver.ref.add",
        "dev.knative.apiserver.ref.update",
        "dev.knative.apiserver.ref.update",
    ]
    assert [e.type for e in widgets] == [
        "dev.knative.apiserver.ref.add",
        "dev.knative.apiserver.ref.update",
        "dev.knative.apiserver.ref.delete",
    ]
    assert jobs[2].data == (
        b'{"kind":"Job","namespace":"default","name":"nightly-report","apiVersion":"batch/v1"}'
    )
    assert jobs[0].attributes["subject"] == "/apis/batch/v1/namespaces/default/jobs/nightly-report"
    assert widgets[0].attributes["subject"] == (
        "/apis/fixture.example.com/v1/namespaces/demo/widgets/w1"
    )


async def test_a_label_selector_reaches_the_server_and_only_matching_pods_are_reported(
    tmp_path: Path,
) -> None:
    pods = [(t, o) for t, o in recording("deployment-rollout.ndjson") if o["kind"] == "Pod"]
    selector = {
        "matchLabels": {"app": "shop"},
        "matchExpressions": [
            {"key": "pod-template-hash", "operator": "NotIn", "values": ["canary1"]}
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
        events = await recorder.wait_for(6)

    assert "shop-canary" not in {e.attributes["name"] for e in events}
    assert [e.type.rsplit(".", 1)[1] for e in events].count("add") == 2
    sent = {r.query.get("labelSelector") for r in api.requests if r.path.endswith("/pods")}
    assert sent == {"app=shop,pod-template-hash notin (canary1)"}


async def test_an_owner_filter_keeps_only_pods_controlled_by_a_replica_set(
    tmp_path: Path,
) -> None:
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
        await api.replay(recording("deployment-rollout.ndjson"))
        await api.apply("ADDED", pod("last-orphan"))  # marks the end: no controller, filtered
        await api.apply(
            "ADDED",
            {
                **pod("end"),
                "metadata": {
                    **pod("end")["metadata"],
                    "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}
                        | {"controller": True}
                    ],
                },
            },
        )
        events = await recorder.wait_for(7)

    # 6 changes of the two controlled Pods, then "end"; not the canary, orphan or ReplicaSet
    assert [e.attributes["kind"] for e in events] == ["Pod"] * 7
    assert {e.attributes["name"] for e in events[:6]} == {
        "shop-5d8f7c9b4-x7k2p",
        "shop-5d8f7c9b4-q9w4z",
    }
    assert events[6].attributes["name"] == "end"


async def test_a_stream_opening_with_the_initial_events_end_bookmark_is_followed(
    tmp_path: Path,
) -> None:
    stream = recording("widget-watch.ndjson")
    assert stream[0][0] == "BOOKMARK"
    assert stream[0][1]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
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
        await api.send_bookmarks()
        stored = await api.replay([(t, o) for t, o in stream if t != "BOOKMARK"])
        events = await recorder.wait_for(3)
    assert [data(e)["spec"] for e in events] == [{"size": 3}, {"size": 4}, {"size": 4}]
    assert [data(e) for e in events] == stored
    assert len(events) == 3, "a BOOKMARK is never an event"


async def test_the_recorded_410_expired_error_relists_and_reports_only_the_gap(
    tmp_path: Path,
) -> None:
    [(kind, status)] = recording("watch-expired.ndjson")
    assert (kind, status["code"], status["reason"]) == ("ERROR", 410, "Expired")
    async with (
        FakeKubeApiServer() as api,
        watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (watcher, recorder),
    ):
        await api.apply("ADDED", pod("stays"))
        await api.apply("ADDED", pod("leaves"))
        await recorder.wait_for(2)
        await api.hold()
        moved = await api.apply("MODIFIED", pod("stays", image="v2"))
        await api.apply("DELETED", pod("leaves"))
        await api.compact()
        await api.expire_watches(status)
        await api.release()
        events = await recorder.wait_for(4)
        await api.apply("ADDED", pod("after"))
        events = await recorder.wait_for(5)

    gap = sorted((e.type.rsplit(".", 1)[1], e.attributes["name"]) for e in events[2:4])
    assert gap == [("delete", "leaves"), ("update", "stays")]
    assert data(events[2] if events[2].attributes["name"] == "stays" else events[3]) == moved
    assert events[4].attributes["name"] == "after"
    assert len([r for r in api.requests if is_list(r)]) == 2  # the start, and the relist
    assert watcher.resource_version() == str(api.resource_version)


async def test_a_recorded_rollout_across_a_dropped_connection_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    rollout = [(t, o) for t, o in recording("deployment-rollout.ndjson") if o["kind"] == "Pod"]
    async with (
        FakeKubeApiServer() as api,
        watching(
            api, tmp_path, resources=[{"apiVersion": "v1", "kind": "Pod"}], mode="Resource"
        ) as (_, recorder),
    ):
        first = await api.replay(rollout[:3])
        await recorder.wait_for(3)
        await api.hold()
        second = await api.replay(rollout[3:])
        await api.drop_watches()
        await api.release()
        events = await recorder.wait_for(len(rollout))

    assert [data(e) for e in events] == first + second
    assert len([r for r in api.requests if is_list(r)]) == 1  # resumed, no relist


def test_subject_is_knatives_self_link_for_an_events_k8s_io_event() -> None:
    event_v1 = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "shop.17d3a1", "namespace": "default"},
        "reason": "ScalingReplicaSet",
        "regarding": {"kind": "Deployment", "name": "shop", "namespace": "default"},
        "note": "Scaled up replica set shop-5d8f7c9b4 to 2",
    }
    event = to_cloudevent("add", event_v1, mode="Resource", source="https://10.96.0.1:443")
    assert event.attributes["subject"] == (
        "/apis/events.k8s.io/v1/namespaces/default/events/shop.17d3a1"
    )
    assert json.loads(event.data or b"") == event_v1
