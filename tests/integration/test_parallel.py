"""Parallel through a real cemesh: each branch whose filter returns an event runs its subscriber
with that event (K172, K173), a branch without a filter sees every event, every branch sees each
event independently (K175), replies go to the branch's reply else the Parallel's (K174); status
lists the ingress channel and each branch (K171, K176); ``cemesh get parallels``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from broker.cli import table_rows
from broker.core.events import CloudEvent
from tests.conftest import shared_fixture_dir
from tests.support.cemesh import running_cemesh
from tests.support.flows import (
    appended,
    appender,
    displayed,
    replying,
    services_ready,
    wait_until,
    with_command,
)
from tests.support.subscriber import Received, RecordingSubscriber


def headers(event_id: str, type_: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/tests/parallel",
        "ce-type": type_,
        "content-type": "application/json",
    }


def only(type_: str) -> Any:
    """A filter: returns the event (marked) when its type is ``type_``, else 202 (skip)."""

    def keep(event: CloudEvent) -> CloudEvent | None:
        return appended(event, f" [{type_}]") if event.type == type_ else None

    return replying(keep)


def message(received: Received) -> str:
    return str(orjson.loads(received.body)["message"])


def condition(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


async def test_k172_k175_filtered_branches_run_only_for_events_their_filter_returns(
    tmp_path: Path,
) -> None:
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(only("com.example.even")) as even_filter,
        RecordingSubscriber(only("com.example.odd")) as odd_filter,
        RecordingSubscriber(appender(" -> we are even!")) as even,
        RecordingSubscriber(appender(" -> this is odd!")) as odd,
        RecordingSubscriber(appender(" -> audited")) as audit,
        RecordingSubscriber() as display,
        RecordingSubscriber() as audit_log,
    ):
        [par] = await mesh.apply(
            {
                "apiVersion": "flows.knative.dev/v1",
                "kind": "Parallel",
                "metadata": {"name": "odd-even-parallel"},
                "spec": {
                    "channelTemplate": {
                        "apiVersion": "messaging.knative.dev/v1",
                        "kind": "InMemoryChannel",
                    },
                    "branches": [
                        {"filter": {"uri": even_filter.url}, "subscriber": {"uri": even.url}},
                        {"filter": {"uri": odd_filter.url}, "subscriber": {"uri": odd.url}},
                        # No filter: every event; its own reply (K174).
                        {"subscriber": {"uri": audit.url}, "reply": {"uri": audit_log.url}},
                    ],
                    "reply": {"uri": display.url},
                },
            }
        )
        assert condition(par)["status"] == "True", par["status"]
        url = f"{mesh.url}/channels/default/odd-even-parallel-kn-parallel"
        assert par["status"]["address"]["url"] == url
        assert par["status"]["ingressChannelStatus"]["channel"]["name"] == (
            "odd-even-parallel-kn-parallel"
        )
        branches = par["status"]["branchStatuses"]
        assert [b["filterChannelStatus"]["channel"]["name"] for b in branches] == [
            f"odd-even-parallel-kn-parallel-{i}" for i in range(3)
        ]
        assert [b["filterSubscriptionStatus"]["subscription"]["name"] for b in branches] == [
            f"odd-even-parallel-kn-parallel-filter-{i}" for i in range(3)
        ]
        assert [b["subscriberSubscriptionStatus"]["subscription"]["name"] for b in branches] == [
            f"odd-even-parallel-kn-parallel-{i}" for i in range(3)
        ]

        for event_id, type_ in (("e-1", "com.example.even"), ("o-1", "com.example.odd")):
            response = await mesh.post_event(
                "/channels/default/odd-even-parallel-kn-parallel",
                headers(event_id, type_),
                b'{"message": "Even or odd?"}',
            )
            assert response.status_code == 202, response.text

        results = await display.wait_for(2)
        assert sorted(message(r) for r in results) == [
            "Even or odd? [com.example.even] -> we are even!",
            "Even or odd? [com.example.odd] -> this is odd!",
        ]
        audited = await audit_log.wait_for(2)
        assert sorted(message(r) for r in audited) == ["Even or odd? -> audited"] * 2
        # Every filter saw every event; each subscriber only what its filter returned.
        assert len(await even_filter.wait_for(2)) == 2
        assert len(await odd_filter.wait_for(2)) == 2
        assert [r.event.id for r in even.received] == ["e-1"]  # type: ignore[union-attr]
        assert [r.event.id for r in odd.received] == ["o-1"]  # type: ignore[union-attr]

        [header, row] = table_rows("Parallel", [par], now=datetime.now(UTC))
        assert header[:5] == ["NAME", "URL", "READY", "REASON", "BRANCHES"]
        assert row[:5] == ["odd-even-parallel", url, "True", "", "3"]


async def test_k174_branch_delivery_dead_letters_its_subscribers_failures(tmp_path: Path) -> None:
    async with (
        running_cemesh(tmp_path) as mesh,
        RecordingSubscriber(lambda r: (503, [], b"down")) as failing,
        RecordingSubscriber() as dead_letters,
    ):
        [par] = await mesh.apply(
            {
                "apiVersion": "flows.knative.dev/v1",
                "kind": "Parallel",
                "metadata": {"name": "p"},
                "spec": {
                    "branches": [
                        {
                            "subscriber": {"uri": failing.url},
                            "delivery": {
                                "retry": 1,
                                "backoffDelay": "PT0.01S",
                                "deadLetterSink": {"uri": dead_letters.url},
                            },
                        }
                    ]
                },
            }
        )
        assert condition(par)["status"] == "True", par["status"]
        response = await mesh.post_event(
            "/channels/default/p-kn-parallel", headers("x-1", "t"), b'{"message": "x"}'
        )
        assert response.status_code == 202
        [dead] = await dead_letters.wait_for(1)
        assert dead.event is not None
        assert dead.event.id == "x-1"
        assert dead.event.attributes["knativeerrordest"] == failing.url
        assert str(dead.event.attributes["knativeerrorcode"]) == "503"
        assert len(failing.received) == 2


@pytest.mark.shared_conformance
async def test_knative_docs_parallel_applies_unchanged_and_waits_naming_the_missing_service(
    tmp_path: Path,
) -> None:
    """The docs' multiple-branches Parallel, applied unchanged before its Services."""
    folder = shared_fixture_dir("knative-docs", "code-samples", "eventing", "parallel")
    for example in ("multiple-branches", "mutual-exclusivity"):
        (tmp_path / example).mkdir()
        async with running_cemesh(tmp_path / example) as mesh:
            [par] = await mesh.apply((folder / example / "parallel.yaml").read_text())
            ready = condition(par)
            assert ready["status"] == "False", par["status"]
            assert 'Service "default/' in ready["message"], ready
            assert par["status"]["address"]["url"].endswith(
                f"/channels/default/{par['metadata']['name']}-kn-parallel"
            )


@pytest.mark.shared_conformance
async def test_knative_docs_parallel_multiple_branches_walkthrough(tmp_path: Path) -> None:
    """code-samples/eventing/parallel/multiple-branches: filters.yaml, transformers.yaml and
    event-display.yaml with local commands, parallel.yaml unchanged. An event of an even minute
    gets "we are even!", one of an odd minute "this is odd!" (the README's result); events are
    posted as the PingSource would send them, at chosen times."""
    example = shared_fixture_dir("knative-docs", "code-samples", "eventing", "parallel")
    example = example / "multiple-branches"
    shown = tmp_path / "display.jsonl"
    async with running_cemesh(tmp_path) as mesh:
        for doc in with_command((example / "filters.yaml").read_text(), "filter"):
            await mesh.apply(doc)
        for doc in with_command((example / "transformers.yaml").read_text(), "transformer"):
            await mesh.apply(doc)
        for doc in with_command((example / "event-display.yaml").read_text(), "event-display"):
            doc["spec"]["template"]["spec"]["containers"][0]["command"].append(str(shown))
            await mesh.apply(doc)
        await services_ready(mesh.client)  # a Service is Ready once its replica listens
        [par] = await mesh.apply((example / "parallel.yaml").read_text())
        assert condition(par)["status"] == "True", par["status"]

        for event_id, time in (("even", "2030-01-01T00:02:00Z"), ("odd", "2030-01-01T00:03:00Z")):
            response = await mesh.post_event(
                "/channels/default/odd-even-parallel-kn-parallel",
                {**headers(event_id, "dev.knative.sources.ping"), "ce-time": time},
                b'{"message": "Even or odd?"}',
            )
            assert response.status_code == 202, response.text
        await wait_until(lambda: len(displayed(shown)) >= 2, timeout=20)
        results = {e["headers"]["ce-id"]: json.loads(e["data"]) for e in displayed(shown)}
        assert results == {
            "even": {"message": "we are even!"},
            "odd": {"message": "this is odd!"},
        }
