"""``cemesh replay broker/NAME --from ... --to ...``: create a Replay and show its progress.

It finds the Archive of the Broker (``--archive`` when it has several), creates a Replay of the
archived events the Broker accepted in [from, to) for one Trigger (``--trigger``) or all of them,
at ``--rate`` events per second at most, then follows the Replay's status until it succeeded:
a progress bar on a terminal (click's), a plain line per second otherwise (logs, pipes).
``--no-wait`` returns once the Replay exists.

The parts that decide (times, the Replay object, the progress line) are pure functions.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from broker.cli.client import ApiClient
from broker.cli.failures import ApiError, CliError
from broker.cli.state import _State, namespace_option, pass_state
from broker.controlplane.resources import BROKER
from broker.features.archive.kinds import ARCHIVE, DEFAULT_RATE, REPLAY

POLL_INTERVAL = 0.5  # seconds between reads of the Replay's status
_AGO = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_moment(text: str, now: datetime, option: str) -> datetime:
    """``now``, a time ago (``90s``, ``15m``, ``1h``, ``2d``) or an RFC 3339 time with an offset."""
    if text == "now":
        return now
    ago = _AGO.match(text)
    if ago:
        return now - timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither 'now', a time ago (15m, 1h, 2d) nor an RFC 3339 time "
            "(2026-12-06T08:00:00Z)",
            param_hint=option,
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            f"{text!r} has no time zone: add Z or an offset such as +01:00", param_hint=option
        )
    return moment


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def replay_object(
    name: str, archive: str, start: datetime, end: datetime, trigger: str | None, rate: float
) -> dict[str, Any]:
    """The Replay to create."""
    spec: dict[str, Any] = {
        "archive": archive,
        "startTime": rfc3339(start),
        "endTime": rfc3339(end),
        "rate": rate,
    }
    if trigger:
        spec["trigger"] = trigger
    return {
        "apiVersion": REPLAY.api_version,
        "kind": REPLAY.kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def default_name(broker: str, now: datetime) -> str:
    """``<broker>-<UTC time>``: a new name per run, cut to fit a name's 253 characters."""
    return f"{broker[:200]}-{now.astimezone(UTC).strftime('%Y%m%d-%H%M%S')}"


def pick_archive(broker: str, archives: list[Mapping[str, Any]], wanted: str | None) -> str:
    """The name of the Broker's archive to replay; CliError when there is none or it is unclear."""
    names = sorted(
        str(a["metadata"]["name"])
        for a in archives
        if (a.get("spec") or {}).get("broker") == broker
    )
    if wanted is not None:
        if wanted not in names:
            raise CliError(f"broker {broker!r} has no archive {wanted!r} (its archives: {names})")
        return wanted
    if not names:
        raise CliError(
            f"broker {broker!r} has no archive: create an Archive (eventing.cemesh.dev/v1alpha1) "
            "naming it first; only what it archived can be replayed"
        )
    if len(names) > 1:
        raise CliError(f"broker {broker!r} has several archives {names}: pick one with --archive")
    return names[0]


def progress_of(status: Mapping[str, Any]) -> tuple[int, int | None, bool]:
    """(replayed, total or None when not counted yet, finished) from a Replay's status.

    Finished once the status says so whole: the replayer's ``completedAt`` and the Succeeded
    condition the controller derives from it at its next sync (a ``cemesh get`` right after
    the CLI said "done" must not show Succeeded Unknown)."""
    total = status.get("total")
    succeeded = any(
        c.get("type") == "Succeeded" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return (
        int(status.get("replayed") or 0),
        int(total) if isinstance(total, int) else None,
        bool(status.get("completedAt")) and succeeded,
    )


def progress_line(name: str, status: Mapping[str, Any]) -> str:
    """One plain line: ``replay NAME: 120/1000 events (12%)``, or why it waits."""
    replayed, total, finished = progress_of(status)
    if total is None:
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        why = f": {ready.get('message')}" if ready and ready.get("message") else ""
        return f"replay {name}: waiting{why}"
    percent = 100 if total == 0 else replayed * 100 // total
    state = " done" if finished else ""
    return f"replay {name}: {replayed}/{total} events ({percent}%){state}"


def _follow(api: ApiClient, namespace: str, name: str, timeout: float | None) -> Mapping[str, Any]:
    """Show the Replay's progress until it finished; its last status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar: Any = None
    shown = ""
    done = 0
    last_line = 0.0
    try:
        while True:
            status = api.get(REPLAY, namespace, name).get("status") or {}
            replayed, total, finished = progress_of(status)
            if sys.stdout.isatty() and total is not None:
                if bar is None:
                    bar = click.progressbar(length=max(total, 1), label=f"replay {name}")
                    bar.__enter__()
                bar.update(replayed - done)
                done = replayed
            else:
                line = progress_line(name, status)
                if line != shown and (finished or time.monotonic() - last_line >= 1.0):
                    click.echo(line)
                    shown, last_line = line, time.monotonic()
            if finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(
                    f"replay {name} did not finish within {timeout} s: "
                    + progress_line(name, status)
                )
            time.sleep(POLL_INTERVAL)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@click.command()
@click.argument("target", metavar="broker/NAME")
@namespace_option
@click.option("--from", "start", required=True, help="Start: RFC 3339 time, or ago (1h, 15m).")
@click.option("--to", "end", default="now", show_default=True, help="End (excluded), as --from.")
@click.option("--trigger", help="Replay to this Trigger only (default: every Trigger).")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_RATE,
    show_default=True,
    help="Events per second at most.",
)
@click.option("--archive", help="Which archive of the Broker, when it has several.")
@click.option("--name", help="The Replay's name (default: <broker>-<UTC time>).")
@click.option("--no-wait", is_flag=True, help="Return once the Replay is created.")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@pass_state
def replay(
    state: _State,
    target: str,
    namespace: str,
    start: str,
    end: str,
    trigger: str | None,
    rate: float,
    archive: str | None,
    name: str | None,
    no_wait: bool,
    timeout: float | None,
) -> None:
    """Re-deliver the events a Broker archived in [--from, --to) to its Triggers.

    Each re-delivered event carries the extension cemeshreplay=<replay name>. Progress is shown
    until the replay is done; the Replay stays (`cemesh get replays`) and resumes by itself if
    cemesh restarts meanwhile.
    """
    kind, _, broker = target.partition("/")
    if kind.lower() not in ("broker", "brokers") or not broker:
        raise click.UsageError(f"name the Broker to replay as broker/NAME, not {target!r}")
    now = datetime.now(UTC)
    begin, finish = parse_moment(start, now, "--from"), parse_moment(end, now, "--to")
    if finish <= begin:
        raise click.BadParameter(
            f"{rfc3339(finish)} is not after --from {rfc3339(begin)}", param_hint="--to"
        )
    api = state.api
    try:
        api.get(BROKER, namespace, broker)
    except ApiError as exc:
        if exc.status == 404:
            raise CliError(f"broker {broker!r} does not exist in namespace {namespace!r}") from None
        raise
    chosen = pick_archive(broker, api.list(ARCHIVE, namespace, None)["items"], archive)
    replay_name = name or default_name(broker, now)
    api.create(REPLAY, namespace, replay_object(replay_name, chosen, begin, finish, trigger, rate))
    click.echo(f"replay.{REPLAY.group}/{replay_name} created", err=True)
    if no_wait:
        return
    status = _follow(api, namespace, replay_name, timeout)
    click.echo(progress_line(replay_name, status), err=sys.stdout.isatty())
