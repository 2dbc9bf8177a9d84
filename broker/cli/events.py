"""The event ``cemesh send`` posts (pure, no I/O): ``--to`` resolution and event building.

Bad flag values raise :class:`click.BadParameter`, so click names the flag in the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import click

from broker.cli.manifests import DEFAULT_NAMESPACE
from broker.core.events import AttributeValue, CloudEvent, new_event


def resolve_target(to: str, server: str, default_namespace: str = DEFAULT_NAMESPACE) -> str:
    """The URL ``--to`` names: a URL, or ``broker:NS/NAME`` / ``channel:NS/NAME`` on ``server``."""
    if to.startswith(("http://", "https://")):
        return to
    kind, sep, ref = to.partition(":")
    if sep and kind in ("broker", "channel") and ref:
        namespace, _, name = ref.rpartition("/")
        namespace = namespace or default_namespace
        if name and "/" not in namespace:
            prefix = "/channels" if kind == "channel" else ""
            return f"{server.rstrip('/')}{prefix}/{namespace}/{name}"
    raise click.BadParameter(
        f"{to!r}: expected an http(s) URL, broker:NAMESPACE/NAME or channel:NAMESPACE/NAME",
        param_hint="'--to'",
    )


def parse_extensions(values: Iterable[str]) -> dict[str, AttributeValue]:
    """``k=v`` pairs as extension attributes; names as CloudEvents allows (lowercase a-z0-9)."""
    extensions: dict[str, AttributeValue] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint="'--extension'")
        if not (name.isascii() and name.isalnum() and name == name.lower()):
            raise click.BadParameter(
                f"{name!r}: attribute names are lowercase letters and digits only",
                param_hint="'--extension'",
            )
        extensions[name] = text
    return extensions


def default_content_type(data: bytes) -> str:
    """application/json when ``data`` parses as JSON, else text/plain."""
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "text/plain"
    return "application/json"


def build_event(
    *,
    type: str,
    source: str,
    data: bytes | None,
    content_type: str | None,
    id: str | None,
    subject: str | None,
    extensions: Mapping[str, AttributeValue],
) -> CloudEvent:
    attributes: dict[str, AttributeValue] = dict(extensions)
    if subject is not None:
        if not subject:  # C9: when present, subject is non-empty
            raise click.BadParameter("must not be empty", param_hint="'--subject'")
        attributes["subject"] = subject
    if data is not None and content_type is None:
        content_type = default_content_type(data)
    return new_event(
        type=type,
        source=source,
        data=data,
        datacontenttype=content_type,
        id=id,
        extensions=attributes,
    )
