"""Who cemesh says it is when it delivers for a Trigger or Subscription: the token's ``sub``.

Knative gives each Trigger and Subscription an OIDC service account named
``<name>-oidc-<group>-<kind>`` (lower case, shortened with a hash to a 63-character name when
longer) and sends tokens of that account, whose subject is
``system:serviceaccount:<namespace>:<account>``. cemesh uses the same names, so an EventPolicy
or a subscriber written for Knative's subjects accepts cemesh's tokens unchanged.
"""

from __future__ import annotations

import hashlib

MAX_NAME = 63  # a Kubernetes object name (DNS-1123 label)


def service_account_name(group: str, kind: str, name: str) -> str:
    """The OIDC service account Knative would create for object ``name`` of ``group``/``kind``."""
    suffix = f"-oidc-{group}-{kind}".lower()
    full = f"{name}{suffix}".lower()
    if len(full) <= MAX_NAME:
        return full
    # Too long: keep a prefix of the name and make it unique with a hash of the whole name.
    digest = hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
    room = max(MAX_NAME - len(suffix) - len(digest), 0)
    return (f"{name[:room]}{digest}"[: MAX_NAME - len(suffix)] + suffix).lower()


def delivery_subject(group: str, kind: str, namespace: str, name: str) -> str:
    """``sub`` of the tokens cemesh sends on behalf of a Trigger or Subscription."""
    return f"system:serviceaccount:{namespace}:{service_account_name(group, kind, name)}"
