"""RBAC decisions (pure): roles, bindings, scopes, the Kubernetes-worded refusal, the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from broker.auth.principal import Principal
from broker.auth.rbac import (
    PROCESSES,
    ROLES,
    SECRETS,
    VERBS,
    WRITE_VERBS,
    Binding,
    Resource,
    Subject,
    authorize,
    load_bindings,
    parse_bindings,
    role_allows,
)
from broker.core.errors import InvalidConfig

TRIGGERS = Resource("eventing.knative.dev", "triggers")
ALICE = Principal("alice", ("devs",))

names = st.sampled_from(["alice", "bob", "devs", "ops", "x"])
namespaces = st.sampled_from(["default", "team-a", "team-b"])
resources = st.sampled_from(
    [TRIGGERS, SECRETS, PROCESSES, Resource("", "configmaps"), Resource("x.dev", "widgets")]
)
verbs = st.sampled_from(sorted(VERBS))
subjects = st.builds(Subject, st.sampled_from(["User", "Group"]), names)
bindings = st.builds(
    Binding,
    st.sampled_from(ROLES),
    st.lists(subjects, min_size=1, max_size=3).map(tuple),
    st.one_of(st.none(), namespaces),
)
principals = st.builds(Principal, names, st.lists(names, max_size=2).map(tuple))


def test_view_creating_a_trigger_is_refused_in_kubernetes_words() -> None:
    view = Binding("view", (Subject("User", "alice"),), "default")
    decision = authorize(ALICE, "create", TRIGGERS, "default", [view])
    assert not decision.allowed
    assert decision.reason == (
        'User "alice" cannot create resource "triggers" in API group "eventing.knative.dev" '
        'in the namespace "default"'
    )
    assert authorize(ALICE, "get", TRIGGERS, "default", [view]).allowed


def test_a_cluster_scope_refusal_says_so() -> None:
    decision = authorize(ALICE, "list", TRIGGERS, None, [])
    assert decision.reason.endswith("at the cluster scope")


@pytest.mark.parametrize(
    ("role", "verb", "resource", "allowed"),
    [
        ("view", "get", TRIGGERS, True),
        ("view", "list", TRIGGERS, True),
        ("view", "create", TRIGGERS, False),
        ("view", "get", SECRETS, False),
        ("edit", "delete", TRIGGERS, True),
        ("edit", "get", SECRETS, False),
        ("edit", "create", SECRETS, False),
        ("edit", "create", PROCESSES, False),
        ("admin", "create", PROCESSES, True),
        ("admin", "get", SECRETS, True),
        ("cluster-admin", "delete", SECRETS, True),
        ("nobody", "get", TRIGGERS, False),
    ],
)
def test_role_table(role: str, verb: str, resource: Resource, allowed: bool) -> None:
    assert role_allows(role, verb, resource) is allowed


def test_group_subjects_match_the_principals_groups() -> None:
    ops = Binding("admin", (Subject("Group", "devs"),), None)
    assert authorize(ALICE, "create", PROCESSES, "anywhere", [ops]).allowed
    assert not authorize(Principal("bob"), "get", TRIGGERS, "default", [ops]).allowed


@given(principals, verbs, resources, namespaces, st.lists(bindings, max_size=5))
def test_nothing_is_allowed_without_an_applying_binding(
    principal: Principal, verb: str, resource: Resource, namespace: str, given_: list[Binding]
) -> None:
    decision = authorize(principal, verb, resource, namespace, given_)
    applying = [
        b
        for b in given_
        if b.namespace in (None, namespace)
        and any(
            (s.kind == "User" and s.name == principal.name)
            or (s.kind == "Group" and s.name in principal.groups)
            for s in b.subjects
        )
    ]
    assert decision.allowed == any(role_allows(b.role, verb, resource) for b in applying)


@given(principals, verbs, resources, st.one_of(st.none(), namespaces), st.lists(bindings))
def test_adding_a_binding_never_takes_a_permission_away(
    principal: Principal,
    verb: str,
    resource: Resource,
    namespace: str | None,
    given_: list[Binding],
) -> None:
    before = authorize(principal, verb, resource, namespace, given_[:-1]).allowed
    after = authorize(principal, verb, resource, namespace, given_).allowed
    assert after or not before


@given(principals, verbs, resources, namespaces, namespaces, st.sampled_from(ROLES))
def test_a_namespaced_binding_grants_nothing_in_another_namespace_nor_cluster_wide(
    principal: Principal, verb: str, resource: Resource, bound: str, asked: str, role: str
) -> None:
    binding = Binding(role, (Subject("User", principal.name),), bound)
    if asked != bound:
        assert not authorize(principal, verb, resource, asked, [binding]).allowed
    assert not authorize(principal, verb, resource, None, [binding]).allowed


@given(principals, verbs, st.sampled_from([SECRETS, PROCESSES]), st.one_of(st.none(), namespaces))
def test_secrets_and_processes_are_for_admin_only(
    principal: Principal, verb: str, resource: Resource, namespace: str | None
) -> None:
    everyone = (Subject("User", principal.name),)
    lesser = [Binding(role, everyone, None) for role in ("view", "edit")]
    assert not authorize(principal, verb, resource, namespace, lesser).allowed
    assert authorize(principal, verb, resource, namespace, [Binding("admin", everyone)]).allowed


@given(principals, st.sampled_from(sorted(WRITE_VERBS)), resources, namespaces)
def test_view_never_writes(
    principal: Principal, verb: str, resource: Resource, namespace: str
) -> None:
    view = Binding("view", (Subject("User", principal.name),), None)
    assert not authorize(principal, verb, resource, namespace, [view]).allowed


KUBERNETES_BINDINGS = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: alice-edit
  namespace: team-a
subjects:
- kind: User
  name: alice
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: ClusterRole
  name: edit
  apiGroup: rbac.authorization.k8s.io
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ops
subjects:
- kind: Group
  name: ops
roleRef:
  kind: ClusterRole
  name: cluster-admin
  apiGroup: rbac.authorization.k8s.io
---
apiVersion: v1
kind: List
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: RoleBinding
  metadata: {name: viewers}
  subjects: [{kind: Group, name: everyone}]
  roleRef: {kind: ClusterRole, name: view}
"""


def test_kubernetes_binding_documents_load_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "rbac.yaml"
    path.write_text(KUBERNETES_BINDINGS)
    assert load_bindings(path) == [
        Binding("edit", (Subject("User", "alice"),), "team-a", "alice-edit"),
        Binding("admin", (Subject("Group", "ops"),), None, "ops"),
        Binding("view", (Subject("Group", "everyone"),), "default", "viewers"),
    ]


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"kind": "Role", "rules": []}, "kind 'Role' is not supported"),
        (
            {"kind": "RoleBinding", "roleRef": {"name": "god"}, "subjects": [{"kind": "User"}]},
            "roleRef.name 'god' is not a role",
        ),
        ({"kind": "ClusterRoleBinding", "roleRef": {"name": "view"}}, "subjects must be"),
        (
            {
                "kind": "RoleBinding",
                "roleRef": {"name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "x"}],
            },
            "'ServiceAccount' is not supported",
        ),
        ("just text", "must be a RoleBinding"),
    ],
)
def test_a_bad_bindings_document_is_refused_naming_what_is_wrong(
    document: object, words: str
) -> None:
    with pytest.raises(InvalidConfig, match=words):
        parse_bindings([document], "rbac.yaml")


def test_an_unreadable_or_broken_rbac_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="cannot read the RBAC file"):
        load_bindings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [")
    with pytest.raises(InvalidConfig, match="not valid YAML"):
        load_bindings(broken)
    assert yaml.safe_load("a: 1")  # the loader itself is fine
