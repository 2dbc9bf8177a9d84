"""How the CLI fails: its error classes and the one-line messages they carry (pure).

Every failure ends as ONE line on stderr, ``error: ...``, and a non-zero exit. This module
owns the classes (:class:`CliError` and its kinds) and the wording: why a request got no
answer (:func:`transport_reason`), what an error answer said (:func:`server_message`), and
what is wrong with the configuration (:func:`settings_error`). The cemesh error tree itself
stays in :mod:`broker.core.errors`; these are click exceptions for the command line only.
"""

from __future__ import annotations

import errno
import os

import click
import httpx
import yaml


class CliError(click.ClickException):
    """A failure reported as one ``error: ...`` line on stderr (by ``_Cli.main``), exit 1."""


class Unreachable(CliError):
    """No answer at all (refused, timed out, DNS): later requests would fail the same way."""


class ApiError(CliError):
    """The server answered with an error ``Status`` (or another non-2xx body)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def server_message(response: httpx.Response) -> str:
    """The ``message`` of a JSON error body (Status or ingress), else the text, else the reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        # Status bodies and the ingress say "message"; FastAPI's own errors say "detail".
        for key in ("message", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    text = response.text.strip()
    return (
        text.splitlines()[0] if text else response.reason_phrase or f"HTTP {response.status_code}"
    )


def settings_error(exc: Exception) -> str:
    """One line for a bad configuration (pydantic ValidationError or the config file's error)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for error in errors():
            field = ".".join(str(part) for part in error.get("loc", ()))
            parts.append(f"{field}: {error.get('msg')}" if field else str(error.get("msg")))
        if parts:
            return "invalid configuration: " + "; ".join(parts)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    cause = exc.__cause__
    # PyYAML's messages span several lines (with a caret drawing); keep line and problem.
    if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
        first = f"{first.split(': ')[0]} (line {cause.problem_mark.line + 1}): {cause.problem}"
    return f"invalid configuration: {first}"


def transport_reason(exc: BaseException) -> str:
    """ "connection refused", "timed out"...: why a request never got an answer."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            if seen.errno == errno.ECONNREFUSED:
                return "connection refused"
            return (seen.strerror or os.strerror(seen.errno)).lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    return text.split("] ", 1)[-1].lower() if text else type(exc).__name__


def api_error(response: httpx.Response) -> ApiError:
    reason = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            reason = str(body.get("reason") or "")
    except ValueError:
        pass
    return ApiError(response.status_code, reason, server_message(response))


def unreachable(url: str, exc: BaseException, *, hint: bool) -> Unreachable:
    suffix = "; is 'cemesh serve' running?" if hint else ""
    return Unreachable(
        f"cannot reach {'cemesh at ' if hint else ''}{url} ({transport_reason(exc)}){suffix}"
    )
