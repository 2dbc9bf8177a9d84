"""What the CLI never prints: Secret values and database passwords (pure, no I/O)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"


def redact(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` with every Secret value replaced by ``<redacted>``.

    Applies to a Secret (``data``, ``stringData``, and kubectl's last-applied annotation, which
    embeds them) and to every Secret inside a list's ``items``; other objects are copied as is.
    """
    result = copy.deepcopy(dict(obj))
    if isinstance(result.get("items"), list):
        result["items"] = [
            redact(item) if isinstance(item, dict) else item for item in result["items"]
        ]
    if result.get("kind") != "Secret":
        return result
    for field in ("data", "stringData"):
        if isinstance(result.get(field), dict):
            result[field] = {key: REDACTED for key in result[field]}
    annotations = (result.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        for key in annotations:
            if key.endswith("last-applied-configuration"):
                annotations[key] = REDACTED
    return result


def mask_password(url: str) -> str:
    """``postgresql://user:***@host/db``: a URL safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def hide_secret(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ``***``."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text
