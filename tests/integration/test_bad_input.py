"""Known bad input, each a class of fault: a precise 4xx naming the field and the limit, never a
5xx (issue 11). The property tests (tests/properties/) look for more of each class; these pin
the reproducers found by hand, one rule each."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.cemesh import running_cemesh
from tests.support.resource_samples import SAMPLES, resource_type

BROKERS = "/apis/eventing.knative.dev/v1/namespaces/default/brokers"
JSON = {"content-type": "application/json"}


def _with(kind: str, *path_and_value: Any) -> dict[str, Any]:
    """The sample of ``kind`` with ``path`` set to ``value`` (pairs)."""
    obj = copy.deepcopy(SAMPLES[kind])
    for path, value in zip(path_and_value[::2], path_and_value[1::2], strict=True):
        target = obj
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return obj


def _deep(depth: int) -> str:
    """JSON text of a list nested ``depth`` deep (built as text: no encoder recurses)."""
    return "[" * depth + "1" + "]" * depth


DELIVERY = ("spec", "delivery")
# (kind, object, status, words the message must contain)
CASES: list[tuple[str, dict[str, Any], int, list[str]]] = [
    *[
        (
            "Broker",
            _with("Broker", (*DELIVERY, key), text),
            422,
            [f"spec.delivery.{key}", words],
        )
        for key in ("backoffDelay", "timeout", "retryAfterMax")
        for text, words in (
            ("P99999Y", "100 years"),
            ("P2.5Y", "fraction"),
            ("P999999999999D", "100 years"),
        )
    ],
    (
        "KafkaChannel",
        _with("KafkaChannel", ("spec", "retentionDuration"), "P99999Y"),
        422,
        ["spec.retentionDuration", "100 years"],
    ),
    (
        "Sequence",
        _with("Sequence", ("spec", "steps", 1, "delivery", "backoffDelay"), "P2.5Y"),
        422,
        ["spec.steps[1].delivery.backoffDelay", "fraction"],
    ),
    (
        "Trigger",
        _with("Trigger", ("spec", "filters"), [{"cesql": "NOT " * 400 + "true"}]),
        422,
        ["spec.filters[0].cesql", "100 operators deep"],
    ),
    (
        "Trigger",
        _with("Trigger", ("spec", "filters"), [{"cesql": " AND ".join(["true"] * 400)}]),
        422,
        ["spec.filters[0].cesql", "100 operators deep"],
    ),
    (
        "Trigger",
        _with("Trigger", ("spec", "filters"), [{"cesql": "+".join(["1"] * 400) + " = 1"}]),
        422,
        ["100 operators deep"],
    ),
    (
        "Trigger",
        _with("Trigger", ("spec", "filters"), [{"cesql": "a = 'x' OR " * 500 + "true"}]),
        422,
        ["spec.filters[0].cesql", "4096"],
    ),
    (
        "GitHubSource",
        _with("GitHubSource", ("spec", "eventTypes"), [["push"]]),
        422,
        ["spec.eventTypes[0]"],
    ),
    (
        "GitHubSource",
        _with("GitHubSource", ("spec", "githubAPIURL"), "http://[::1"),
        422,
        ["spec.githubAPIURL"],
    ),
    (
        "Trigger",
        _with("Trigger", ("spec", "subscriber", "uri"), "http://127.0.0.1:99999/"),
        422,
        ["spec.subscriber.uri"],
    ),
    (
        "PingSource",
        _with("PingSource", ("spec", "timezone"), "A" * 300),
        422,
        ["spec.timezone", "64 characters"],
    ),
    (
        "PingSource",
        _with("PingSource", ("spec", "timezone"), "Europe/\x00Berlin"),
        422,
        ["spec.timezone"],
    ),
    (
        "PingSource",
        _with("PingSource", ("spec", "schedule"), "0 0 31 2 *"),
        422,
        ["spec.schedule", "never fires"],
    ),
    (
        "PingSource",
        _with("PingSource", ("spec", "data"), _deep(2000)),
        422,
        ["spec.data", "not valid JSON"],
    ),
    (
        "Service",
        _with("Service", ("spec", "template", "spec", "containers", 0, "args"), ["a\x00b"]),
        422,
        ["spec.template.spec.containers[0].args[0]", "NUL"],
    ),
    (
        "ContainerSource",
        _with(
            "ContainerSource", ("spec", "template", "spec", "containers", 0, "command"), ["\x00"]
        ),
        422,
        ["spec.template.spec.containers[0].command[0]", "NUL"],
    ),
    (
        "Broker",
        _with("Broker", ("spec", "x"), orjson.Fragment(_deep(450))),
        422,
        ["spec.x[0][0]", "100 levels"],
    ),
    (
        "Trigger",
        _with(
            "Trigger",
            ("metadata", "annotations"),
            {"knative.dev/dependency": _deep(900)},
        ),
        422,
        ["knative.dev/dependency"],
    ),
]


@pytest.mark.parametrize(("kind", "obj", "status", "words"), CASES)
async def test_bad_resource_gets_4xx_naming_the_field_and_limit(
    tmp_path: Path, kind: str, obj: dict[str, Any], status: int, words: list[str]
) -> None:
    async with running_cemesh(tmp_path) as mesh:
        path = resource_type(kind).collection_path("default")
        response = await mesh.client.post(path, content=orjson.dumps(obj), headers=JSON)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["kind"] == "Status" and body["code"] == status
        for word in words:
            assert word in body["message"], body["message"]


# (body, Content-Type, status, words): what the API's one body reader answers
BODIES: list[tuple[bytes, str | None, int, str]] = [
    (b'{"metadata": 1}', "application/json", 422, "metadata: must be an object"),
    (b'{"metadata": "x"}', "application/json", 422, "metadata: must be an object"),
    (b'{"metadata": [1]}', "application/yaml", 422, "metadata: must be an object"),
    # No Content-Type: a body a web page can send without a CORS preflight (a Blob), refused.
    (b'{"metadata": {"name": "x"}}', None, 415, "application/json"),
    (b"[" * 5000 + b"]" * 5000, "application/json", 422, "100 levels"),
    (b'{"spec": ' + b"[" * 450 + b"]" * 450 + b"}", "application/json", 422, "100 levels"),
    (b"{", "application/json", 400, "not valid JSON"),
    (b'{"a": NaN}', "application/json", 400, "not valid JSON"),
    (b"\xff\xfe", "application/json", 400, "not valid JSON"),
    (b"[]", "application/json", 422, "must be an object"),
    (b"null", "application/json", 422, "must be an object"),
    (b"- kind: Broker", "application/yaml", 422, "must be an object"),
    (b"a: [" + b"[" * 2000 + b"]" * 2000 + b"]", "application/yaml", 422, "100 levels"),
    (b"a=b", "application/x-www-form-urlencoded", 415, "application/json"),
    (b" " * (2 * 1024 * 1024), "application/json", 413, "larger than"),
]


async def test_put_and_post_bodies_that_are_not_objects_get_4xx(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        created = await mesh.client.post(BROKERS, json={"metadata": {"name": "b"}})
        assert created.status_code == 201, created.text
        for body, content_type, status, words in BODIES:
            headers = {"content-type": content_type} if content_type else {}
            for method, path in (("PUT", f"{BROKERS}/b"), ("POST", BROKERS)):
                response = await mesh.client.request(method, path, content=body, headers=headers)
                what = f"{method} {body[:40]!r}"
                assert response.status_code == status, (what, response.text)
                assert words in response.json()["message"], (what, response.text)
        response = await mesh.client.put(
            f"{BROKERS}/b", content=b'{"metadata": {"resourceVersion": [1]}}', headers=JSON
        )
        assert response.status_code == 422, response.text
        assert "metadata.resourceVersion" in response.json()["message"]
        # A PUT whose metadata is null or absent keeps the name in the URL.
        for body in (b'{"metadata": null}', b"{}"):
            response = await mesh.client.put(f"{BROKERS}/b", content=body, headers=JSON)
            assert response.status_code == 200, response.text


async def test_unknown_paths_and_methods_answer_status_bodies(tmp_path: Path) -> None:
    async with running_cemesh(tmp_path) as mesh:
        for method, path, status in (
            ("GET", "/apis/nope/v1/namespaces/default/things", 404),
            ("GET", "/no/such/path/at/all", 404),
            ("DELETE", BROKERS, 405),
        ):
            response = await mesh.client.request(method, path)
            assert response.status_code == status, response.text
            body = response.json()
            assert body["kind"] == "Status" and body["code"] == status, body


async def test_an_unexpected_fault_is_logged_and_answered_500_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last resort: a genuine server fault (here: the store's get breaks) is a 500 with a
    Status body; the traceback goes to the log, not to the client; the server goes on."""
    async with running_cemesh(tmp_path) as mesh:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise ZeroDivisionError("a server fault")

        original = mesh.runtime.store.get
        mesh.runtime.store.get = broken
        try:
            response = await mesh.client.get(f"{BROKERS}/b")
        finally:
            mesh.runtime.store.get = original
        assert response.status_code == 500
        body = response.json()
        assert body["kind"] == "Status" and body["reason"] == "InternalError"
        assert "ZeroDivisionError" not in response.text and "Traceback" not in response.text
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
        assert (await mesh.client.get(f"{BROKERS}/b")).status_code == 404
