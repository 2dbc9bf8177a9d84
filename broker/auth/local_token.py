"""The local admin token (Jupyter-style): one random token per user, in a file only they can read.

cemesh creates it on first start (``secrets.token_urlsafe``) in ``token`` under the user's config
directory (platformdirs: ``$XDG_CONFIG_HOME/cemesh`` or ``~/.config/cemesh`` on Linux), the
directory mode 0700 and the file 0600, created exclusively so two replicas starting together
agree on one token. The CLI reads the same file, so on one machine ``cemesh apply`` works with
nothing to configure. The subject it proves, :data:`LOCAL_SUBJECT`, is admin cluster-wide.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import platformdirs

from broker.auth.principal import Principal

LOCAL_SUBJECT = "cemesh:local-admin"
VIA = "local-token"
TOKEN_BYTES = 32  # token_urlsafe(32): 43 characters, 256 bits


def default_token_path() -> Path:
    """Where the local token lives when no setting moves it."""
    return Path(platformdirs.user_config_dir("cemesh", appauthor=False)) / "token"


def read_token(path: Path) -> str | None:
    """The token in ``path``, or None when there is no (non-empty) file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def ensure_token(path: Path) -> str:
    """The token in ``path``, created (0600, its directory 0700) when missing.

    Raises OSError when the file cannot be read or made (the caller names the path).
    """
    existing = read_token(path)
    if existing is not None:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica made it first: use theirs
        raced = read_token(path)
        if raced is None:
            raise
        return raced
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    with contextlib.suppress(OSError):  # a umask cannot widen it, but be explicit
        os.chmod(path, 0o600)
    return token


class LocalTokenAuthenticator:
    """Recognises exactly the local token; its subject is :data:`LOCAL_SUBJECT`."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    async def authenticate(self, token: str) -> Principal | None:
        presented = hashlib.sha256(token.encode()).digest()
        if hmac.compare_digest(presented, self._digest):
            return Principal(LOCAL_SUBJECT, via=VIA)
        return None
