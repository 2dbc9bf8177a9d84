"""The CLI's root group and per-invocation state: how every failure becomes one ``error:`` line,
which server and token a command uses, and the options every command shares.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx

from broker.cli.client import ApiClient
from broker.cli.failures import CliError, settings_error
from broker.cli.manifests import DEFAULT_NAMESPACE
from broker.core.errors import CemeshError


class _Cli(click.Group):
    """The root group: turns every failure into one ``error:`` line, never a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            # Usage errors too: one line (click would print the usage block and "Error: ...").
            message = exc.format_message()
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CemeshError as exc:
            raise CliError(exc.message) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"HTTP error: {exc}") from exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}") from exc
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            raise CliError(f"unexpected {type(exc).__name__}: {exc}") from exc


@dataclass
class _State:
    server: str
    token: str | None = None
    token_file: Path | None = None
    ca_file: str | None = None
    _api: ApiClient | None = None

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            token, source = self._token()
            self._api = ApiClient(
                self.server, token=token, token_source=source, ca_file=self.ca_file
            )
        return self._api

    def _token(self) -> tuple[str | None, str]:
        """The bearer token to send, and where it came from (for a 401's message)."""
        if self.token:
            return self.token, "the token from --token/CEMESH_TOKEN"
        from broker.auth.local_token import default_token_path, read_token

        path = self.token_file or default_token_path()
        try:
            token = read_token(path)
        except OSError as exc:
            raise CliError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
        if token is None:
            return None, f"no token: {path} does not exist (give --token or CEMESH_TOKEN)"
        return token, f"the token from {path}"

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


pass_state = click.make_pass_decorator(_State)

namespace_option = click.option(
    "-n",
    "--namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Namespace of the objects (a manifest's metadata.namespace wins).",
)


def load_settings(**overrides: Any) -> Any:
    """Settings with the given flags on top of env and config file; one error line when bad."""
    from broker.core.config import Settings

    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise CliError(settings_error(exc)) from exc
