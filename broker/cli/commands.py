"""The click commands: ``serve``, ``apply``, ``get`` (``-w`` watches), ``delete``, ``send``,
``db upgrade``, ``token hash``/``path``/``show``; ``tail`` and ``describe`` come from
:mod:`broker.cli.observe`, ``replay`` from :mod:`broker.cli.replay`.

The management API's token: ``--token`` / ``CEMESH_TOKEN``, else the local token file
(``--token-file`` / ``CEMESH_TOKEN_FILE``, default the one ``cemesh serve`` creates in the user's
config directory), read only when a command talks to the API.

Thin I/O over the pure modules of :mod:`broker.cli`. :class:`_Cli`, the root group, maps the
cemesh error tree, HTTP transport errors and Kubernetes ``Status`` bodies to ONE
``error: ...`` line on stderr and a non-zero exit; a traceback is never shown.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from broker.cli.client import DEFAULT_SERVER, HTTP_TIMEOUT, ApiClient, tls_verification
from broker.cli.events import build_event, parse_extensions, resolve_target
from broker.cli.failures import (
    ApiError,
    CliError,
    Unreachable,
    server_message,
    unreachable,
)
from broker.cli.manifests import (
    APPLY_CONCURRENCY,
    Document,
    ManifestError,
    admission_defaults,
    apply_decision,
    apply_schedule,
    load_documents,
    manifest_files,
    object_name,
    object_namespace,
    object_ref,
    object_type,
    qualified_kind,
    with_version,
)
from broker.cli.observe import describe, no_watch_with, tail, watch_list
from broker.cli.redaction import hide_secret, mask_password, redact
from broker.cli.replay import replay
from broker.cli.state import _Cli, _State, load_settings, namespace_option, pass_state
from broker.cli.tables import empty_message, render_objects, render_table
from broker.cli.waiting import WAIT_HELP, applied_key, wait_ready
from broker.controlplane.catalog import ResourceType
from broker.controlplane.eventing.types import bus_of_channel
from broker.core.errors import CemeshError
from broker.server.features import type_for_name


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="CEMESH_URL",
    default=DEFAULT_SERVER,
    show_default=True,
    help="The cemesh to talk to (env CEMESH_URL).",
)
@click.option(
    "--token",
    envvar="CEMESH_TOKEN",
    help="Bearer token for the API (env CEMESH_TOKEN; default: the local token file).",
)
@click.option(
    "--token-file",
    envvar="CEMESH_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The local token file (env CEMESH_TOKEN_FILE; default: in the user's config dir).",
)
@click.option(
    "--cacert",
    envvar="CEMESH_CA_FILE",
    default=None,
    type=click.Path(dir_okay=False),
    help="PEM CA certificates to verify an https --server with (env CEMESH_CA_FILE); "
    "default: the system's CA bundle.",
)
@click.version_option(package_name="cemesh", prog_name="cemesh")
@click.pass_context
def cli(
    ctx: click.Context,
    server: str,
    token: str | None,
    token_file: Path | None,
    cacert: str | None,
) -> None:
    """cemesh: a CloudEvents event mesh with the Knative Eventing model.

    Run it with 'cemesh serve'; manage Brokers, Triggers, Channels, Subscriptions and Secrets
    with 'apply', 'get' and 'delete' (Knative YAML applies unchanged); send events with 'send'.
    """
    state = _State(server.rstrip("/"), token=token, token_file=token_file, ca_file=cacert)
    ctx.obj = state
    ctx.call_on_close(state.close)


@cli.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8080).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of settings (env CEMESH_CONFIG); flags override env, env overrides the file.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback --host with authentication off (CEMESH_AUTH=none).",
)
def serve(host: str | None, port: int | None, config_file: Path | None, insecure: bool) -> None:
    """Run cemesh (ingress, dispatcher, management API) until SIGTERM or Ctrl-C."""
    settings = load_settings(host=host, port=port, config=config_file)
    from broker.auth.setup import listen_refusal

    refusal = listen_refusal(settings.host, settings.auth, insecure=insecure)
    if refusal is not None:
        raise CliError(refusal)
    from broker.core.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from broker.core.errors import CemeshError
    from broker.dataplane.bus import bus_factory

    try:  # the default channel's bus is needed by every Broker: no point starting without it
        name = bus_of_channel(settings.default_channel)
        # Built, not opened (no I/O): what its options need must be installed too (a driver).
        bus_factory(name)(settings.bus_options(name))
    except CemeshError as exc:
        raise CliError(
            f"cannot serve with default channel {settings.default_channel}: {exc.message}"
        ) from exc
    if settings.http_server == "granian" and importlib.util.find_spec("granian") is None:
        raise CliError("CEMESH_HTTP_SERVER=granian needs granian: pip install 'cemesh[granian]'")
    from broker.server.app import serve as run

    run(settings)


@cli.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    help="Manifest file, directory of .yaml/.yml/.json files, or - for stdin. Repeatable.",
)
@click.option("-R", "--recursive", is_flag=True, help="Also read directories' subdirectories.")
@namespace_option
@click.option("--wait", type=float, is_flag=False, flag_value=60.0, help=WAIT_HELP)
@pass_state
def apply(state: _State, files: tuple[str, ...], recursive: bool, **options: Any) -> None:
    """Create or replace the objects of Knative YAML/JSON manifests (kubectl apply).

    Prints '<kind>/<name> created', 'configured' or 'unchanged' per object. Objects that fail
    (kinds cemesh does not serve, invalid fields) print one error line each; the others are
    still applied, and the exit status is 1. ``--wait [SECONDS]`` (60) then shows how many
    are Ready until all are, failing with the ones that are not and why.
    """
    namespace, wait, applied, failed = options["namespace"], options["wait"], [], False
    # Sent while earlier ones are under way (the server shares its syncs between concurrent
    # writes), printed in document order.
    in_flight: deque[tuple[Document, Future[str]]] = deque()
    with ThreadPoolExecutor(APPLY_CONCURRENCY, thread_name_prefix="cemesh-apply") as pool:
        for step, item in apply_schedule(_documents(files, recursive)):
            if isinstance(item, str):
                _error_line(item)
                failed = True
            elif step == "send":
                in_flight.append((item, pool.submit(apply_one, state.api, item.obj, namespace)))
            else:
                document, future = in_flight.popleft()
                try:
                    click.echo(future.result())
                    applied.append(applied_key(document.obj, namespace))
                except Unreachable:
                    raise  # every other object would fail the same way
                except (CliError, CemeshError) as exc:
                    _error_line(f"{_describe(document)}: {_message(exc)}")
                    failed = True
    if wait is not None and applied:
        wait_ready(state.api, applied, wait)
    if failed:
        sys.exit(1)


def apply_one(api: ApiClient, obj: dict[str, Any], default_namespace: str) -> str:
    """Apply one object; the line to print (``broker.eventing.knative.dev/x created``)."""
    rtype = object_type(obj)
    name = object_name(obj)
    namespace = object_namespace(obj, default_namespace)
    body = with_version(obj, namespace, None)
    try:
        api.create(rtype, namespace, body)
        return f"{object_ref(rtype, name)} created"
    except ApiError as exc:
        if exc.status != 409 or exc.reason == "Conflict":
            raise
    stored = api.get(rtype, namespace, name)
    decision = apply_decision(obj, stored, defaults=admission_defaults(namespace, stored))
    if decision == "configured":
        version = (stored.get("metadata") or {}).get("resourceVersion")
        api.replace(rtype, namespace, name, with_version(obj, namespace, version))
    return f"{object_ref(rtype, name)} {decision}"


def _documents(files: Iterable[str], recursive: bool) -> Iterator[Document | str]:
    """Every object of every manifest, or a message (str) for what cannot be read."""
    for given in files:
        if given == "-":
            sources: list[tuple[str, str]] = [("<stdin>", sys.stdin.read())]
        else:
            path = Path(given)
            if not path.exists():
                yield f"{given}: no such file or directory"
                continue
            sources = []
            for file in manifest_files(path, recursive=recursive):
                try:
                    sources.append((str(file), file.read_text(encoding="utf-8")))
                except (OSError, UnicodeDecodeError) as exc:
                    yield f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}"
            if path.is_dir() and not sources:
                yield f"{given}: no .yaml, .yml or .json files in this directory"
        for source, text in sources:
            try:
                documents, problems = load_documents(text, source)
            except ManifestError as exc:
                yield exc.message
                continue
            yield from problems
            yield from documents


def _describe(document: Document) -> str:
    """How an apply/delete error names its object: kind/name, else its source."""
    obj = document.obj
    name = (obj.get("metadata") or {}).get("name")
    try:
        rtype = object_type(obj)
    except ManifestError:
        kind = str(obj.get("kind")).lower()
        group = str(obj.get("apiVersion")).rpartition("/")[0]
        label = f"{kind}.{group}" if group else kind
        return f"{label}/{name}" if name else f"{label} in {document.source}"
    return object_ref(rtype, name) if name else f"{qualified_kind(rtype)} in {document.source}"


def _message(exc: Exception) -> str:
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    if isinstance(exc, CemeshError):
        return exc.message
    return str(exc)


def _error_line(message: str) -> None:
    click.echo(f"error: {message}", err=True)


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@namespace_option
@click.option("-A", "--all-namespaces", is_flag=True, help="List across all namespaces.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "yaml", "json"]),
    default="table",
    help="Output format (default: a table).",
)
@click.option("-l", "--selector", help="Label selector, e.g. app=web,tier!=db.")
@click.option(
    "-w", "--watch", is_flag=True, help="Keep watching: show the table again when it changes."
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls (-w).")
@pass_state
def get(
    state: _State,
    kind: str,
    name: str | None,
    namespace: str,
    all_namespaces: bool,
    output: str,
    selector: str | None,
    watch: bool,
    interval: float,
) -> None:
    """Show objects of KIND (broker, trigger, channel, imc, kc, subscription, cm, secret...).

    Secret values are never printed: the table shows the number of keys, and with -o yaml/json
    every value in data (and stringData) is replaced by "<redacted>".
    """
    rtype = type_for_name(kind)
    if name and selector:
        raise click.UsageError("a name and a label selector (-l) cannot be given together")
    if watch:  # the API has no watch: poll, and show the table again when it changed
        no_watch_with(output)
        scope = None if all_namespaces else namespace

        def fetch() -> list[dict[str, Any]]:
            if name:
                return [state.api.get(rtype, namespace, name)]
            return list(state.api.list(rtype, scope, selector).get("items") or [])

        def show(items: list[dict[str, Any]]) -> None:
            now = datetime.now(UTC)
            wide = output == "wide"
            table = render_table(
                rtype.kind, items, now=now, all_namespaces=scope is None, wide=wide
            )
            click.echo(table if items else empty_message(scope))

        watch_list(fetch, show, interval)
        return
    if name:
        obj = state.api.get(rtype, namespace, name)
        items: list[dict[str, Any]] = [obj]
        document: dict[str, Any] = obj
    else:
        listed = state.api.list(rtype, None if all_namespaces else namespace, selector)
        items = list(listed.get("items") or [])
        document = {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}
    if output in ("yaml", "json"):
        click.echo(render_objects(redact(document), output).rstrip("\n"))
        return
    if not items:
        click.echo(empty_message(None if all_namespaces else namespace), err=True)
        return
    click.echo(
        render_table(
            rtype.kind,
            items,
            now=datetime.now(UTC),
            all_namespaces=all_namespaces,
            wide=output == "wide",
        )
    )


@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@namespace_option
@click.option(
    "-f", "--filename", "files", multiple=True, help="Delete the objects of these manifests."
)
@pass_state
def delete(
    state: _State, kind: str | None, names: tuple[str, ...], namespace: str, files: tuple[str, ...]
) -> None:
    """Delete objects: KIND NAME... or -f FILE.

    What they kept on the bus goes with them: a Trigger's or Subscription's consumer group, a
    Broker's or Channel's topic with the events still on it.
    """
    targets: list[tuple[ResourceType, str, str] | str] = []
    if files:
        if kind:
            raise click.UsageError("give either KIND NAME... or -f FILE, not both")
        for document in _documents(files, recursive=False):
            if isinstance(document, str):
                targets.append(document)
                continue
            try:
                obj = document.obj
                targets.append(
                    (object_type(obj), object_namespace(obj, namespace), object_name(obj))
                )
            except CemeshError as exc:
                targets.append(f"{_describe(document)}: {exc.message}")
    elif kind and names:
        rtype = type_for_name(kind)
        targets.extend((rtype, namespace, name) for name in names)
    else:
        raise click.UsageError("give KIND NAME... or -f FILE")
    failed = False
    for target in targets:
        if isinstance(target, str):
            _error_line(target)
            failed = True
            continue
        rtype, ns, name = target
        try:
            state.api.delete(rtype, ns, name)
        except ApiError as exc:  # not found, ...: say so and go on with the others
            _error_line(exc.format_message())
            failed = True
            continue
        click.echo(f'{qualified_kind(rtype)} "{name}" deleted')
    if failed:
        sys.exit(1)


@cli.command()
@click.option(
    "--to",
    "target",
    required=True,
    help="An http(s) URL, broker:NAMESPACE/NAME or channel:NAMESPACE/NAME (on --server).",
)
@click.option("--type", "event_type", required=True, help="The event's type attribute.")
@click.option("--source", default="cemesh/cli", show_default=True, help="The event's source.")
@click.option("--id", "event_id", help="The event's id (default: a new UUID).")
@click.option("--data", help="The event's data; @FILE reads it from a file.")
@click.option(
    "--content-type",
    help="datacontenttype (default: application/json if --data is JSON, else text/plain).",
)
@click.option("--subject", help="The event's subject attribute.")
@click.option(
    "-e", "--extension", "extensions", multiple=True, help="Extension NAME=VALUE. Repeatable."
)
@click.option(
    "--mode",
    type=click.Choice(["binary", "structured"]),
    default="binary",
    show_default=True,
    help="CloudEvents HTTP content mode.",
)
@pass_state
def send(
    state: _State,
    target: str,
    event_type: str,
    source: str,
    event_id: str | None,
    data: str | None,
    content_type: str | None,
    subject: str | None,
    extensions: tuple[str, ...],
    mode: str,
) -> None:
    """Send one CloudEvent over HTTP (like 'kn event send')."""
    from broker.core import binding

    url = resolve_target(target, state.server)
    event = build_event(
        type=event_type,
        source=source,
        data=_read_data(data),
        content_type=content_type,
        id=event_id,
        subject=subject,
        extensions=parse_extensions(extensions),
    )
    encode = binding.to_structured if mode == "structured" else binding.to_binary
    headers, body = encode(event)
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT, verify=tls_verification(state.ca_file)) as http:
            response = http.post(url, headers=list(headers), content=body)
    except httpx.TransportError as exc:
        raise unreachable(url, exc, hint=url.startswith(state.server + "/")) from exc
    if not response.is_success:
        raise CliError(
            f"event {event.id} not accepted ({response.status_code}): {server_message(response)}"
        )
    click.echo(f"event {event.id} accepted ({response.status_code})")


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror or exc}", param_hint="'--data'"
            ) from exc
    return data.encode()


@cli.group()
def db() -> None:
    """The resource store's schema."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of settings (env CEMESH_CONFIG).",
)
@click.option("--database-url", help="Overrides the configured database_url.")
def upgrade(revision: str, config_file: Path | None, database_url: str | None) -> None:
    """Migrate the store's schema (database_url from the settings) to REVISION."""
    settings = load_settings(config=config_file, database_url=database_url)
    from broker.controlplane.store import migrate

    url = settings.database_url
    shown = mask_password(url)
    try:
        asyncio.run(migrate.upgrade(url, revision))
    except Exception as exc:  # StoreError, alembic's CommandError...: said in one line
        text = exc.message if isinstance(exc, CemeshError) else str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CliError(f"cannot upgrade {shown}: {hide_secret(first, url)}") from exc
    click.echo(f"database {shown} upgraded to {revision}")


@cli.group()
def token() -> None:
    """Management API tokens: hash one for CEMESH_API_TOKENS_FILE, find the local one."""


@token.command("hash")
@click.argument("value", required=False)
def token_hash(value: str | None) -> None:
    """Print the sha256 of VALUE (or of stdin's first line) for a tokens file entry."""
    from broker.auth.static_tokens import hash_token

    text = value if value is not None else sys.stdin.readline().rstrip("\r\n")
    if not text:
        raise click.UsageError("give the token as an argument or on stdin")
    click.echo(hash_token(text))


@token.command("path")
@pass_state
def token_path(state: _State) -> None:
    """Print where the local token file is (created by 'cemesh serve')."""
    from broker.auth.local_token import default_token_path

    click.echo(str(state.token_file or default_token_path()))


@token.command("show")
@pass_state
def token_show(state: _State) -> None:
    """Print the local token (e.g. to copy it out of a container into CEMESH_TOKEN)."""
    from broker.auth.local_token import default_token_path, read_token

    path = state.token_file or default_token_path()
    value = read_token(path)
    if value is None:
        raise CliError(f"no local token at {path}: 'cemesh serve' creates it on first start")
    click.echo(value)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``cemesh`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="cemesh")
    raise SystemExit(0)  # cli.main exits itself in standalone mode; this keeps mypy honest


cli.add_command(tail)
cli.add_command(describe)
cli.add_command(replay)
