"""Authorization, Kubernetes-shaped: three roles, bindings to users and groups, one decision.

Roles (the names of Kubernetes' user-facing ClusterRoles):

- ``view``: get, list, watch every kind except Secrets (their data is never shown: the request
  is refused, as Kubernetes' own ``view`` refuses it);
- ``edit``: everything ``view`` does, plus create, update, patch, delete, still without Secrets
  and without starting local processes;
- ``admin`` (also accepted as ``cluster-admin``): everything, including Secrets and the
  :data:`PROCESSES` pseudo-resource (creating or changing what runs a local process).

A :class:`Binding` grants one role to subjects (User or Group names) in one namespace or, with
``namespace`` None, cluster-wide. A request on all namespaces (a list without a namespace) needs
a cluster-wide binding. :func:`authorize` is pure; :func:`parse_bindings` reads Kubernetes
``RoleBinding`` / ``ClusterRoleBinding`` documents, so an existing binding YAML applies as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from broker.auth.principal import Principal
from broker.core.errors import InvalidConfig

READ_VERBS = frozenset({"get", "list", "watch"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
VERBS = READ_VERBS | WRITE_VERBS
ROLES = ("view", "edit", "admin")
ROLE_ALIASES = {"cluster-admin": "admin"}
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Resource:
    """What a request acts on: an API group ("" for core) and a plural, as in Kubernetes."""

    group: str
    plural: str


SECRETS = Resource("", "secrets")
# Not a stored kind: the permission to create or change what starts a local process.
PROCESSES = Resource("cemesh.dev", "processes")
_ADMIN_ONLY = frozenset({SECRETS, PROCESSES})


@dataclass(frozen=True, slots=True)
class Subject:
    kind: Literal["User", "Group"]
    name: str


@dataclass(frozen=True, slots=True)
class Binding:
    """``role`` for ``subjects`` in ``namespace`` (None: every namespace and cluster scope)."""

    role: str
    subjects: tuple[Subject, ...]
    namespace: str | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # the binding that allowed it, or the Kubernetes-style refusal


def role_allows(role: str, verb: str, resource: Resource) -> bool:
    """Whether ``role`` permits ``verb`` on ``resource`` (pure)."""
    role = ROLE_ALIASES.get(role, role)
    if role == "admin":
        return True
    if resource in _ADMIN_ONLY:
        return False
    if role == "edit":
        return verb in VERBS
    if role == "view":
        return verb in READ_VERBS
    return False


def subject_matches(subject: Subject, principal: Principal) -> bool:
    if subject.kind == "User":
        return subject.name == principal.name
    return subject.name in principal.groups


def refusal(principal: Principal, verb: str, resource: Resource, namespace: str | None) -> str:
    """The 403 message, worded as Kubernetes words it."""
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'User "{principal.name}" cannot {verb} resource "{resource.plural}" '
        f'in API group "{resource.group}" {where}'
    )


def authorize(
    principal: Principal,
    verb: str,
    resource: Resource,
    namespace: str | None,
    bindings: Iterable[Binding],
) -> Decision:
    """May ``principal`` do ``verb`` on ``resource`` in ``namespace`` (None: all namespaces)?

    A binding applies when one of its subjects matches and it is cluster-wide or in
    ``namespace``; the request is allowed when an applying binding's role permits it.
    """
    for binding in bindings:
        if binding.namespace is not None and binding.namespace != namespace:
            continue
        if not any(subject_matches(s, principal) for s in binding.subjects):
            continue
        if role_allows(binding.role, verb, resource):
            scope = f"namespace {binding.namespace}" if binding.namespace else "cluster-wide"
            return Decision(True, f"{binding.role} ({scope}) by binding {binding.name!r}")
    return Decision(False, refusal(principal, verb, resource, namespace))


# --- the bindings file ----------------------------------------------------------------------


def parse_bindings(documents: Sequence[Any], source: str) -> list[Binding]:
    """Bindings from loaded YAML documents (pure); InvalidConfig naming the bad document.

    Accepts ``RoleBinding`` (namespace from ``metadata.namespace``, default "default") and
    ``ClusterRoleBinding`` (cluster-wide) documents, and ``List``s of them.
    """
    bindings: list[Binding] = []
    for index, document in enumerate(_expand(documents)):
        if document is None:
            continue
        where = f"{source}: document {index + 1}"
        if not isinstance(document, dict):
            raise InvalidConfig(f"{where}: must be a RoleBinding or ClusterRoleBinding mapping")
        kind = document.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            raise InvalidConfig(
                f"{where}: kind {kind!r} is not supported; use RoleBinding or ClusterRoleBinding"
            )
        metadata = document.get("metadata") or {}
        name = str(metadata.get("name") or f"{kind}#{index + 1}")
        where = f"{source}: {kind} {name!r}"
        role_ref = document.get("roleRef") or {}
        role = role_ref.get("name") if isinstance(role_ref, dict) else None
        if role not in ROLES and role not in ROLE_ALIASES:
            known = ", ".join([*ROLES, *ROLE_ALIASES])
            raise InvalidConfig(f"{where}: roleRef.name {role!r} is not a role ({known})")
        subjects = document.get("subjects")
        if not isinstance(subjects, list) or not subjects:
            raise InvalidConfig(f"{where}: subjects must be a non-empty list")
        parsed: list[Subject] = []
        for number, subject in enumerate(subjects):
            if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
                raise InvalidConfig(f"{where}: subjects[{number}] needs a kind and a name")
            if subject.get("kind") not in ("User", "Group"):
                raise InvalidConfig(
                    f"{where}: subjects[{number}].kind {subject.get('kind')!r} is not supported; "
                    "use User (a token's name, an OIDC sub) or Group"
                )
            parsed.append(Subject(subject["kind"], subject["name"]))
        namespace = None
        if kind == "RoleBinding":
            namespace = str(metadata.get("namespace") or DEFAULT_NAMESPACE)
        role_name = str(role)
        bindings.append(
            Binding(ROLE_ALIASES.get(role_name, role_name), tuple(parsed), namespace, name)
        )
    return bindings


def _expand(documents: Sequence[Any]) -> Iterable[Any]:
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items") or []
        else:
            yield document


def load_bindings(path: Path) -> list[Binding]:
    """The bindings in the YAML file at ``path``; InvalidConfig when unreadable or malformed."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InvalidConfig(f"cannot read the RBAC file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"the RBAC file {path} is not valid YAML: {exc}") from exc
    return parse_bindings(documents, str(path))
