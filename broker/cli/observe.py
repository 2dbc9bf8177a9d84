"""The commands that look at a running mesh: ``tail`` (live events), ``describe`` (one object),
and the watch loop of ``get -w``.

``tail broker/NAME`` (or ``channel/NAME``, or any channel kind such as ``imc/NAME``) reads the
management API's live stream (:mod:`broker.controlplane.api.tail`) and prints one line per
event, or with ``-o json`` the event itself as one JSON line; ``--filter`` is a CESQL expression
the server applies. ``describe`` shows an object's spec, its conditions and, for Triggers and
Subscriptions, what ``/metrics`` counted for it since cemesh started (deliveries by response,
retries, dead letters): cemesh keeps no per-event delivery history, so these totals are what
there is. ``get -w`` polls the list (the API has no watch) and prints it again when a
``resourceVersion`` changed.

The line formats are pure functions (:func:`event_line`, :func:`describe_text`), tested alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import click
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broker.cli.client import ApiClient
from broker.cli.failures import CliError
from broker.cli.redaction import redact
from broker.cli.state import _State, namespace_option, pass_state
from broker.controlplane.catalog import ResourceType
from broker.server.features import type_for_name

DATA_PREVIEW = 120  # characters of an event's data shown on a readable line


def event_line(event: Mapping[str, Any]) -> str:
    """One readable line: time, type, source, id, the extensions cemesh adds, a data preview."""
    when = event.get("time") or event.get("knativearrivaltime") or "-"
    data = event.get("data")
    if data is None and "data_base64" in event:
        preview = f"<{len(str(event['data_base64'])) * 3 // 4} bytes, base64>"
    elif data is None:
        preview = ""
    else:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        preview = text if len(text) <= DATA_PREVIEW else f"{text[:DATA_PREVIEW]}..."
    return f"{when}  {event.get('type')}  {event.get('source')}  id={event.get('id')}  {preview}"


def tail_target(target: str) -> ResourceType:
    """The kind of ``KIND/NAME`` for ``tail``: a Broker or a channel kind."""
    kind, _, name = target.partition("/")
    if not name:
        raise click.UsageError(f"name what to tail as KIND/NAME (broker/default), not {target!r}")
    rtype = type_for_name(kind)
    if rtype.kind != "Broker" and not rtype.kind.endswith("Channel"):
        raise click.UsageError(f"{rtype.kind} has no event stream; tail a broker or a channel")
    return rtype


def stream_events(
    api: ApiClient,
    rtype: ResourceType,
    namespace: str,
    name: str,
    expression: str | None,
    on_notice: Callable[[str], None],
) -> Iterable[dict[str, Any]]:
    """The events of the live stream, as they arrive; notices (watching, dropped) go to
    ``on_notice``."""
    path = f"{rtype.collection_path(namespace)}/{name}/events"
    params = {"filter": expression} if expression else None
    for line in api.stream_lines(path, params):
        if not line.strip():
            continue  # heartbeat
        message = json.loads(line)
        if "event" in message:
            yield message["event"]
        elif "watching" in message:
            on_notice(f"watching {message['watching']} (Ctrl-C to stop)")
        elif "dropped" in message:
            on_notice(
                f"warning: {message['dropped']} events dropped so far: this reader is too slow"
            )


@click.command()
@click.argument("target", metavar="KIND/NAME")
@namespace_option
@click.option("--filter", "expression", help="CESQL expression an event must match.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    help="One readable line per event (text) or the event as one JSON line (json).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Exit after this many events.")
@pass_state
def tail(
    state: _State,
    target: str,
    namespace: str,
    expression: str | None,
    output: str,
    limit: int | None,
) -> None:
    """Stream the events a Broker or Channel accepts, as they arrive (broker/NAME, channel/NAME).

    Only what arrives after the stream started is shown. Events a slow reader could not keep up
    with are dropped for this reader only (cemesh says how many), never slowing the mesh.
    """
    rtype = tail_target(target)
    name = target.partition("/")[2]
    events = stream_events(state.api, rtype, namespace, name, expression, _notice)
    for seen, event in enumerate(events, start=1):
        if output == "json":
            click.echo(json.dumps(event, separators=(",", ":")))
        else:
            click.echo(event_line(event))
        if limit is not None and seen >= limit:
            return


def _notice(text: str) -> None:
    click.echo(text, err=True)


def describe_text(obj: Mapping[str, Any], counts: Mapping[str, float] | None) -> str:
    """``describe``'s text: identity, spec, status fields, conditions, delivery totals."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    lines = [
        f"Name:       {meta.get('name')}",
        f"Namespace:  {meta.get('namespace')}",
        f"Kind:       {obj.get('kind')} ({obj.get('apiVersion')})",
        f"Created:    {meta.get('creationTimestamp', '-')}",
        f"Generation: {meta.get('generation', '-')} "
        f"(observed {status.get('observedGeneration', '-')})",
    ]
    spec = obj.get("spec") or obj.get("data")
    if spec:
        lines += ["Spec:", _indent(yaml.safe_dump(spec, sort_keys=False))]
    extra = {k: v for k, v in status.items() if k not in ("conditions", "observedGeneration")}
    if extra:
        lines += ["Status:", _indent(yaml.safe_dump(extra, sort_keys=False))]
    conditions = status.get("conditions") or []
    lines.append("Conditions:" if conditions else "Conditions: none reported")
    for condition in conditions:
        reason = condition.get("reason") or ""
        message = condition.get("message") or ""
        lines.append(
            f"  {condition.get('type')}={condition.get('status')}  {reason}  {message}".rstrip()
        )
    if counts is not None:
        lines.append("Deliveries since cemesh started (from /metrics):")
        if not counts:
            lines.append("  none yet")
        for what, count in sorted(counts.items()):
            lines.append(f"  {what}: {count:g}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.rstrip("\n").splitlines())


def delivery_counts(metrics_text: str, kind: str, namespace: str, name: str) -> dict[str, float]:
    """What ``/metrics`` says of one Trigger's or Subscription's deliveries: events by the
    subscriber's response code, outcomes (delivered, dead_lettered, ...) and retries."""
    counts: dict[str, float] = {}
    child = f"{kind.lower()}_name"
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("namespace_name") != namespace:
                continue
            if sample.name.endswith("_event_count_total") and labels.get(child) == name:
                counts[f"response {labels['response_code']}"] = sample.value
            elif (
                labels.get("resource_kind") == kind.lower() and labels.get("resource_name") == name
            ):
                if sample.name == "cemesh_delivery_outcomes_total":
                    counts[labels["outcome"]] = sample.value
                elif sample.name == "cemesh_delivery_retries_total":
                    counts["retries"] = sample.value
    return counts


@click.command()
@click.argument("kind")
@click.argument("name")
@namespace_option
@pass_state
def describe(state: _State, kind: str, name: str, namespace: str) -> None:
    """Show one object: its spec, status, conditions and (Triggers, Subscriptions) deliveries."""
    rtype = type_for_name(kind)
    obj = redact(state.api.get(rtype, namespace, name))
    counts = None
    if rtype.kind in ("Trigger", "Subscription"):
        response = state.api.request("GET", "/metrics")
        if response.is_success:
            counts = delivery_counts(response.text, rtype.kind, namespace, name)
    click.echo(describe_text(obj, counts))


def watch_list(
    fetch: Callable[[], list[dict[str, Any]]],
    show: Callable[[list[dict[str, Any]]], None],
    interval: float,
    rounds: int | None = None,
) -> None:
    """Show ``fetch()`` now and again whenever an object's resourceVersion (or the set of
    objects) changed, polling every ``interval`` seconds (``rounds``: stop after so many)."""
    last: tuple[tuple[str, str], ...] | None = None
    done = 0
    while rounds is None or done < rounds:
        items = fetch()
        versions = tuple(
            sorted(
                (
                    f"{(i.get('metadata') or {}).get('namespace')}/{i['metadata'].get('name')}",
                    str(i["metadata"].get("resourceVersion")),
                )
                for i in items
            )
        )
        if versions != last:
            if last is not None:
                click.echo(f"--- {datetime.now(UTC).strftime('%H:%M:%S')}")
            show(items)
            last = versions
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval)


def no_watch_with(output: str) -> None:
    if output in ("yaml", "json"):
        raise CliError("-w shows tables; use it without -o yaml/json")
