"""Valid resources of every kind cemesh serves, and hypothesis strategies that vary and break them.

``SAMPLES`` holds one valid object per registered kind (a test checks that no kind is missing,
so a new kind must add its sample here). :func:`valid_resources` varies a sample's name,
labels and annotations while keeping it valid; :func:`mutated_resources` breaks it at a random
place: a value replaced by a wrong type, a huge or deeply nested value or odd unicode, a field
deleted, an unknown field added.

The samples are harmless when applied to a running cemesh: commands are ``sleep``, sinks and
subscribers point at a closed loopback port, schedules fire at most once a minute, and Services
scale from zero (no replica starts until a request arrives).
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from broker.controlplane.catalog import ResourceType
from broker.server.features import CATALOG

NOWHERE = "http://127.0.0.1:9/"  # the discard port: nothing listens

_BROKER_REF = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}
_DELIVERY = {
    "retry": 2,
    "backoffPolicy": "exponential",
    "backoffDelay": "PT0.2S",
    "timeout": "PT5S",
    "deadLetterSink": {"uri": NOWHERE},
}
_SLEEP = {"name": "main", "image": "example/sleep", "command": ["sleep"], "args": ["30"]}


def _obj(api_version: str, kind: str, **content: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": "sample"}, **content}


SAMPLES: dict[str, dict[str, Any]] = {
    "Broker": _obj("eventing.knative.dev/v1", "Broker", spec={"delivery": _DELIVERY}),
    "Trigger": _obj(
        "eventing.knative.dev/v1",
        "Trigger",
        spec={
            "broker": "default",
            "filter": {"attributes": {"type": "com.example.order"}},
            "filters": [
                {"cesql": "type LIKE 'com.example.%' AND source = '/shop'"},
                {"any": [{"exact": {"type": "a"}}, {"not": {"prefix": {"source": "/x"}}}]},
            ],
            "subscriber": {"uri": NOWHERE},
            "delivery": _DELIVERY,
        },
    ),
    "Channel": _obj(
        "messaging.knative.dev/v1",
        "Channel",
        spec={
            "channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"}
        },
    ),
    "InMemoryChannel": _obj(
        "messaging.knative.dev/v1", "InMemoryChannel", spec={"delivery": _DELIVERY}
    ),
    "KafkaChannel": _obj(
        "messaging.knative.dev/v1beta1",
        "KafkaChannel",
        spec={"numPartitions": 1, "replicationFactor": 1, "retentionDuration": "PT168H"},
    ),
    "NatsJetStreamChannel": _obj("messaging.knative.dev/v1alpha1", "NatsJetStreamChannel"),
    "PubSubChannel": _obj("messaging.cemesh.dev/v1alpha1", "PubSubChannel"),
    "RedisStreamChannel": _obj("messaging.cemesh.dev/v1alpha1", "RedisStreamChannel"),
    "Subscription": _obj(
        "messaging.knative.dev/v1",
        "Subscription",
        spec={
            "channel": {
                "apiVersion": "messaging.knative.dev/v1",
                "kind": "InMemoryChannel",
                "name": "sample",
            },
            "subscriber": {"uri": NOWHERE},
            "reply": {"uri": NOWHERE},
            "delivery": _DELIVERY,
        },
    ),
    "Secret": _obj("v1", "Secret", type="Opaque", stringData={"token": "s3cret"}),
    "ConfigMap": _obj(
        "v1",
        "ConfigMap",
        data={
            "channel-template-spec": "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"
        },
    ),
    "Sequence": _obj(
        "flows.knative.dev/v1",
        "Sequence",
        spec={
            "steps": [{"uri": NOWHERE}, {"uri": NOWHERE, "delivery": _DELIVERY}],
            "reply": {"uri": NOWHERE},
        },
    ),
    "Parallel": _obj(
        "flows.knative.dev/v1",
        "Parallel",
        spec={
            "branches": [
                {"subscriber": {"uri": NOWHERE}, "filter": {"uri": NOWHERE}},
                {"subscriber": {"uri": NOWHERE}, "delivery": _DELIVERY},
            ],
            "reply": {"uri": NOWHERE},
        },
    ),
    "Service": _obj(
        "serving.knative.dev/v1",
        "Service",
        spec={
            "template": {
                "metadata": {
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": "0",
                        "autoscaling.knative.dev/max-scale": "1",
                    }
                },
                "spec": {
                    "containerConcurrency": 1,
                    "timeoutSeconds": 30,
                    "containers": [{**_SLEEP, "env": [{"name": "A", "value": "b"}]}],
                },
            }
        },
    ),
    "Revision": _obj(
        "serving.knative.dev/v1",
        "Revision",
        metadata={
            "name": "sample-00001",
            "ownerReferences": [
                {
                    "apiVersion": "serving.knative.dev/v1",
                    "kind": "Service",
                    "name": "sample",
                    "uid": "0",
                    "controller": True,
                }
            ],
        },
        spec={"containers": [_SLEEP], "containerConcurrency": 0, "timeoutSeconds": 30},
    ),
    "PingSource": _obj(
        "sources.knative.dev/v1",
        "PingSource",
        spec={
            "schedule": "0 0 1 1 *",
            "timezone": "Europe/Berlin",
            "contentType": "application/json",
            "data": '{"hello": "world"}',
            "sink": {"uri": NOWHERE},
            "ceOverrides": {"extensions": {"team": "a"}},
        },
    ),
    "ApiServerSource": _obj(
        "sources.knative.dev/v1",
        "ApiServerSource",
        spec={
            "mode": "Reference",
            "resources": [
                {"apiVersion": "v1", "kind": "Pod", "selector": {"matchLabels": {"app": "x"}}}
            ],
            "sink": {"uri": NOWHERE},
        },
    ),
    "ContainerSource": _obj(
        "sources.knative.dev/v1",
        "ContainerSource",
        spec={"template": {"spec": {"containers": [_SLEEP]}}, "sink": {"uri": NOWHERE}},
    ),
    "SinkBinding": _obj(
        "sources.knative.dev/v1",
        "SinkBinding",
        spec={
            "subject": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "x"},
            "sink": {"ref": _BROKER_REF},
        },
    ),
    "GitHubSource": _obj(
        "sources.knative.dev/v1alpha1",
        "GitHubSource",
        spec={
            "ownerAndRepository": "example/repo",
            "eventTypes": ["push", "pull_request"],
            "secretToken": {"secretKeyRef": {"name": "github", "key": "secret"}},
            "githubAPIURL": "https://api.github.com/",
            "sink": {"ref": _BROKER_REF},
        },
    ),
    "EventType": _obj(
        "eventing.knative.dev/v1beta2",
        "EventType",
        spec={"type": "com.example.order", "source": "/shop", "description": "an order"},
    ),
    "EventPolicy": _obj(
        "eventing.knative.dev/v1alpha1",
        "EventPolicy",
        spec={
            "to": [{"ref": {**_BROKER_REF}}],
            "from": [{"sub": "system:serviceaccount:default:shop-*"}],
            "filters": [{"prefix": {"type": "com.example."}}],
        },
    ),
    "Archive": _obj(
        "eventing.cemesh.dev/v1alpha1",
        "Archive",
        spec={
            "broker": "default",
            "retention": "P1D",
            "filters": [{"prefix": {"type": "com.example."}}],
        },
    ),
    "Replay": _obj(
        "eventing.cemesh.dev/v1alpha1",
        "Replay",
        spec={
            "archive": "orders",
            "startTime": "2026-12-06T08:00:00Z",
            "endTime": "2026-12-06T09:00:00Z",
            "trigger": "orders",
            "rate": 50,
        },
    ),
}


def resource_type(kind: str) -> ResourceType:
    return next(t for t in CATALOG.kinds if t.kind == kind)


# --- valid variations ---------------------------------------------------------------------------

_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True)
_LABEL_VALUES = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?", fullmatch=True)
_LABELS = st.dictionaries(
    st.from_regex(r"(example\.com/)?[a-z][a-z0-9]{0,10}", fullmatch=True), _LABEL_VALUES, max_size=3
)
_ANNOTATIONS = st.dictionaries(
    st.from_regex(r"example\.com/[a-z][a-z0-9]{0,10}", fullmatch=True),
    st.text(max_size=40),
    max_size=3,
)


@st.composite
def valid_resources(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A valid ``kind`` object: its sample with a drawn name, labels and annotations."""
    obj = copy.deepcopy(SAMPLES[kind])
    metadata = obj["metadata"]
    if kind == "Revision":  # must start with its Service's name
        metadata["name"] = f"sample-{draw(_NAMES)}"
    else:
        metadata["name"] = draw(_NAMES)
    metadata["labels"] = draw(_LABELS)
    metadata["annotations"] = draw(_ANNOTATIONS)
    return obj


# --- breaking them --------------------------------------------------------------------------------

_ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\u202e",
        "\ud7ff",
        "\ufeff",
        "\U0001d518\U0001d52b",  # mathematical letters
        "a" * 5000,
        "\u00e9" * 300,
        "../..",
        "%ff",
    ]
)


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


ODD_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    _ODD_TEXT,
    st.lists(
        st.one_of(st.integers(), st.text(max_size=5), st.lists(st.text(max_size=3))), max_size=3
    ),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.sampled_from([[["push"]], {"a": {"b": {}}}, [{}], [[]], {"": ""}]),
    st.integers(min_value=90, max_value=600).map(_deep),
    st.sampled_from(
        ["P99999Y", "P2.5Y", "P999999999999D", "PT", "-PT1S", "http://[::1", "0 0 31 2 *"]
    ),
    st.sampled_from(
        ["NOT " * 400 + "true", " AND ".join(["true"] * 400), "(" * 300 + "1" + ")" * 300]
    ),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and list indexes) into ``value``, the empty path included.

    Not below 8 levels: a deep value put there by an earlier mutation is one place, not 600.
    """
    found = [prefix]
    if len(prefix) >= 8:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(paths(item, (*prefix, index)))
    return found


def _parent(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        obj = obj[part]
    return obj


@st.composite
def mutated_resources(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A ``kind`` object broken at one to three random places (it may still happen to be valid)."""
    obj = draw(valid_resources(kind))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = [path for path in paths(obj) if path]
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent = _parent(obj, path)
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        odd = copy.deepcopy(draw(ODD_VALUES))  # sampled values are shared: never change them
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=10))] = odd
        elif action == "add" and isinstance(parent[path[-1]], list):
            parent[path[-1]].append(odd)
        else:
            parent[path[-1]] = odd
    return obj
