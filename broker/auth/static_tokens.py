"""Static bearer tokens from a YAML file (``CEMESH_API_TOKENS_FILE``), each with a subject name.

The file is a list (or ``tokens:`` holding one) of entries::

    - name: alice            # the subject RBAC bindings name (User "alice")
      groups: [developers]   # optional; Group subjects
      sha256: 3b1f...        # hex SHA-256 of the token (``cemesh token hash``), preferred
    - name: ci
      token: s3cr3t          # or the token itself (then anyone who reads the file has it)

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every entry,
so the time taken does not tell how much of a token matched, nor which entry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from broker.auth.principal import Principal
from broker.core.errors import InvalidConfig

VIA = "static-token"
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token``: what a tokens file stores under ``sha256``."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StaticToken:
    """One entry of the tokens file: the digest of its token and the principal it proves."""

    digest: bytes
    principal: Principal


def parse_tokens(document: Any, source: str) -> list[StaticToken]:
    """The entries of a loaded tokens file (pure); InvalidConfig naming the bad entry."""
    entries = document.get("tokens") if isinstance(document, dict) else document
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise InvalidConfig(f"{source}: expected a list of tokens (name, groups, sha256|token)")
    tokens: list[StaticToken] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}: tokens[{index}]"
        if not isinstance(entry, dict):
            raise InvalidConfig(f"{where}: must be a mapping with name and sha256 or token")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidConfig(f"{where}.name: is required (the subject RBAC bindings name)")
        if name in names:
            raise InvalidConfig(f"{where}.name: {name!r} is given twice")
        names.add(name)
        groups = entry.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise InvalidConfig(f"{where}.groups: must be a list of strings")
        digest_hex, plain = entry.get("sha256"), entry.get("token")
        if (digest_hex is None) == (plain is None):
            raise InvalidConfig(f"{where}: give exactly one of sha256 (preferred) or token")
        if digest_hex is not None:
            if not isinstance(digest_hex, str) or not _HEX_SHA256.fullmatch(digest_hex):
                raise InvalidConfig(
                    f"{where}.sha256: must be 64 hex digits (from 'cemesh token hash')"
                )
            digest = bytes.fromhex(digest_hex)
        else:
            if not isinstance(plain, str) or len(plain) < 16:
                raise InvalidConfig(f"{where}.token: must be a string of 16 characters or more")
            digest = hashlib.sha256(plain.encode()).digest()
        tokens.append(StaticToken(digest, Principal(name, tuple(groups), VIA)))
    return tokens


def load_tokens(path: Path) -> list[StaticToken]:
    """The entries of the tokens file at ``path``; InvalidConfig when unreadable or malformed."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidConfig(f"cannot read the API tokens file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"the API tokens file {path} is not valid YAML: {exc}") from exc
    return parse_tokens(document, str(path))


class StaticTokenAuthenticator:
    """Recognises the tokens of a tokens file."""

    def __init__(self, tokens: Sequence[StaticToken]) -> None:
        self._tokens = tuple(tokens)

    async def authenticate(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for entry in self._tokens:  # every entry, always: no early exit
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        return found
