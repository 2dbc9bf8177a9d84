"""What a management API request body may be: its media types, and parsing them (pure).

Only ``application/json``, ``application/yaml`` (parsed as kubectl's YAML: one document) and
``application/merge-patch+json`` (RFC 7386, for PATCH: :func:`merge_patch`) are accepted. None
of them is a type a browser may send cross-origin without a CORS preflight (forms send
urlencoded, multipart or text/plain), so a web page cannot make the user's browser write to
cemesh.
"""

from __future__ import annotations

from typing import Any

import orjson
import yaml

from broker.controlplane.resources import MAX_RESOURCE_DEPTH
from broker.core.errors import BindingError, InvalidResource

JSON = "application/json"
YAML = "application/yaml"
MERGE_PATCH = "application/merge-patch+json"
ACCEPTED_MEDIA_TYPES = (JSON, YAML, MERGE_PATCH)


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json`` ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_accepted(content_type: str | None) -> bool:
    return media_type(content_type) in ACCEPTED_MEDIA_TYPES


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors/aliases: an alias bomb stays small here and explodes on output."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise BindingError("request body: YAML aliases (*name) are not accepted")
        return super().compose_node(parent, index)


def parse_object(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object a request body holds; BindingError (400) when it is not one."""
    if media_type(content_type) == YAML:
        try:
            documents = [d for d in yaml.load_all(raw, Loader=_NoAliasLoader) if d is not None]
        except yaml.YAMLError as exc:
            raise BindingError(f"request body is not valid YAML: {exc}") from exc
        except RecursionError as exc:  # PyYAML composes nested nodes recursively
            raise _too_deep() from exc
        if len(documents) != 1:
            raise BindingError(
                f"request body must hold one YAML document, it holds {len(documents)}"
            )
        body = documents[0]
    else:
        # orjson bounds nesting itself (1024 levels) and never recurses in Python; the tighter
        # resource limit is admission's (broker.controlplane.resources.check_depth), reported the
        # same way.
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc).lower():
                raise _too_deep() from exc
            raise BindingError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__
        raise InvalidResource("", f"request body must be an object (a mapping), got {kind}")
    return body


def _too_deep() -> InvalidResource:
    return InvalidResource(
        "", f"the object nests deeper than {MAX_RESOURCE_DEPTH} levels, the limit"
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the JSON merge patch ``patch`` applied (RFC 7386), as a new value.

    A patch that is not an object replaces the target; in an object, ``null`` removes a key and
    any other value is merged into it. (Eight lines of the RFC's own pseudocode: no library.)
    """
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
