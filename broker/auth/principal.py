"""The authenticated caller (:class:`Principal`) and the :class:`Authenticator` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated subject.

    ``name`` is what RBAC bindings and EventPolicy ``from.sub`` match: a static token's name, an
    OIDC token's ``sub``. ``groups`` are matched by Group subjects. ``via`` says which kind of
    credential proved it (for logs: "local-token", "static-token", "oidc").
    """

    name: str
    groups: tuple[str, ...] = ()
    via: str = ""


class Authenticator(Protocol):
    """Turns a bearer token into a :class:`Principal`.

    Returns ``None`` when the token is not of this authenticator's kind (the next one is asked);
    raises :class:`broker.core.errors.Unauthenticated` when it is of this kind but does not verify
    (expired, wrong audience, bad signature), with a message naming why.
    """

    async def authenticate(self, token: str) -> Principal | None: ...
