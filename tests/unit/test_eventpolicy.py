"""EventPolicy: subject patterns, the ingress decision, admission and reconcile (all pure)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.auth.oidc import groups_of, looks_like_jwt
from broker.controlplane.world import audience_of
from broker.core.errors import InvalidResource
from broker.core.events import CloudEvent
from broker.core.ingress_authorization import CompiledPolicy, IngressAuthorization, subject_matches
from broker.core.labels import label_selector_matches
from broker.core.spec import DeliveryPolicy
from broker.features.eventpolicy.kinds import check_subject_pattern
from broker.features.eventpolicy.reconcile import oidc_service_account_subject
from broker.server.features import admit, reconcile

subjects = st.text(alphabet="abcXYZ:-_*.0123456789", max_size=20)


# --- subject patterns (Knative's SubjectContained) ----------------------------------------------


@given(prefix=subjects.filter(lambda s: "*" not in s), rest=subjects)
def test_a_star_pattern_matches_every_sub_that_starts_with_its_prefix(prefix: str, rest: str):
    assert subject_matches(prefix + "*", prefix + rest)


@given(pattern=subjects.filter(lambda s: "*" not in s), sub=subjects)
def test_a_pattern_without_star_matches_only_the_same_sub_ignoring_case(pattern: str, sub: str):
    assert subject_matches(pattern, sub) == (pattern.casefold() == sub.casefold())


@given(prefix=subjects.filter(lambda s: "*" not in s and s != ""), sub=subjects)
def test_a_star_pattern_never_matches_a_sub_without_its_prefix(prefix: str, sub: str):
    if not sub.startswith(prefix) and (prefix + "*").casefold() != sub.casefold():
        assert not subject_matches(prefix + "*", sub)


@given(patterns=st.lists(subjects, max_size=4), sub=subjects)
def test_a_compiled_policy_admits_exactly_what_one_of_its_patterns_matches(
    patterns: list[str], sub: str
):
    compiled = CompiledPolicy("default", "p", tuple(patterns))
    assert compiled.admits(sub) == any(subject_matches(p, sub) for p in patterns)


def test_a_lone_star_matches_every_sub():
    assert subject_matches("*", "")
    assert subject_matches("*", "system:serviceaccount:x:y")


@given(pattern=subjects)
def test_admission_accepts_a_star_only_as_the_last_character(pattern: str):
    star = pattern.find("*")
    if 0 <= star < len(pattern) - 1:
        with pytest.raises(InvalidResource, match="only allowed as the last character"):
            check_subject_pattern(pattern, "spec.from[0].sub")
    else:
        check_subject_pattern(pattern, "spec.from[0].sub")


# --- the decision -------------------------------------------------------------------------------


def event(type_: str = "com.example.order", id_: str = "1") -> CloudEvent:
    return CloudEvent(
        attributes={"specversion": "1.0", "id": id_, "source": "/s", "type": type_}, data=None
    )


def policy(name: str, *subs: str, type_prefix: str | None = None) -> CompiledPolicy:
    if type_prefix is None:
        return CompiledPolicy("default", name, subs)
    return CompiledPolicy(
        "default",
        name,
        subs,
        filter=lambda e: str(e.attributes["type"]).startswith(type_prefix),
        filter_source=type_prefix,
    )


def authorization(*policies: CompiledPolicy, mode: Any = "allow-same-namespace"):
    return IngressAuthorization("aud", "default", policies, mode)


def test_with_no_policy_allow_same_namespace_admits_service_accounts_of_that_namespace_only():
    gate = authorization()
    assert gate.refusal("system:serviceaccount:default:app", [event()]) is None
    refusal = gate.refusal("system:serviceaccount:other:app", [event()])
    assert refusal is not None and "allow-same-namespace" in refusal
    assert gate.refusal("system:serviceaccount:defaultx:app", [event()]) is not None
    assert gate.refusal("alice", [event()]) is not None


def test_with_no_policy_allow_all_and_deny_all_do_what_they_say():
    assert authorization(mode="allow-all").refusal("anyone", [event()]) is None
    refusal = authorization(mode="deny-all").refusal("system:serviceaccount:default:a", [event()])
    assert refusal is not None and "deny-all" in refusal


def test_applying_policies_replace_the_default_mode():
    gate = authorization(policy("p", "alice"), mode="allow-all")
    assert gate.refusal("alice", [event()]) is None
    refusal = gate.refusal("system:serviceaccount:default:app", [event()])
    assert (
        refusal is not None and "'system:serviceaccount:default:app'" in refusal and "p" in refusal
    )


def test_every_event_of_a_batch_must_pass_the_filters_of_a_policy_that_admits_the_sender():
    gate = authorization(policy("orders", "alice", type_prefix="com.example.order"))
    assert gate.refusal("alice", [event(), event(id_="2")]) is None
    refusal = gate.refusal("alice", [event(), event("com.example.refund", "2")])
    assert refusal is not None and "'2'" in refusal and "com.example.refund" in refusal


def test_any_admitting_policy_may_pass_an_event():
    gate = authorization(
        policy("orders", "alice", type_prefix="com.example.order"),
        policy("refunds", "ali*", type_prefix="com.example.refund"),
        policy("bob-only", "bob"),
    )
    assert gate.refusal("alice", [event(), event("com.example.refund", "2")]) is None
    assert gate.refusal("alice", [event("com.example.other")]) is not None


# --- small pure helpers -------------------------------------------------------------------------


def test_audiences_follow_knatives_group_kind_namespace_name_in_lower_case():
    assert audience_of("eventing.knative.dev", "Broker", "ns", "b") == (
        "eventing.knative.dev/broker/ns/b"
    )
    assert audience_of("messaging.knative.dev", "InMemoryChannel", "ns", "c") == (
        "messaging.knative.dev/inmemorychannel/ns/c"
    )


def test_a_source_reference_resolves_to_its_oidc_service_account_subject():
    assert oidc_service_account_subject("sources.knative.dev", "PingSource", "ns", "ping") == (
        "system:serviceaccount:ns:ping-oidc-sources.knative.dev-pingsource"
    )
    long = oidc_service_account_subject("sources.knative.dev", "PingSource", "ns", "p" * 60)
    assert len(long.rpartition(":")[2]) <= 63


def test_label_selectors_match_labels_and_expressions():
    labels = {"app": "shop", "tier": "front"}
    assert label_selector_matches({}, labels)
    assert label_selector_matches({"matchLabels": {"app": "shop"}}, labels)
    assert not label_selector_matches({"matchLabels": {"app": "other"}}, labels)
    expression = {"key": "tier", "operator": "In", "values": ["front", "back"]}
    assert label_selector_matches({"matchExpressions": [expression]}, labels)
    assert not label_selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, labels
    )
    assert label_selector_matches(
        {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, labels
    )
    assert not label_selector_matches(
        {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, labels
    )


def test_only_jwt_shaped_tokens_are_taken_for_oidc_and_groups_come_from_one_claim():
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert not looks_like_jwt("cemesh-local-3b0c9a")
    assert not looks_like_jwt("a.b.c")
    assert groups_of({"groups": ["a", "", 3, "b"]}, "groups") == ("a", "b")
    assert groups_of({"groups": "ops"}, "groups") == ("ops",)
    assert groups_of({}, "groups") == ()


# --- admission ----------------------------------------------------------------------------------


def event_policy(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "EventPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec,
    }


def test_a_knative_event_policy_is_admitted_with_from_ref_namespace_defaulted():
    admitted = admit(
        event_policy(
            {
                "to": [
                    {
                        "ref": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Broker",
                            "name": "b",
                        }
                    },
                    {
                        "selector": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Broker",
                            "matchLabels": {"app": "special"},
                        }
                    },
                ],
                "from": [
                    {
                        "ref": {
                            "apiVersion": "sources.knative.dev/v1",
                            "kind": "PingSource",
                            "name": "s",
                        }
                    },
                    {"sub": "system:serviceaccount:default:other-*"},
                ],
                "filters": [{"cesql": "type IN ('a', 'b')"}, {"exact": {"type": "a"}}],
            }
        )
    )
    assert admitted["spec"]["from"][0]["ref"]["namespace"] == "default"


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"to": {"ref": {}}}, "spec.to", "must be a list"),
        ({"to": [{}]}, "spec.to[0]", "needs one of 'ref' or 'selector'"),
        (
            {
                "to": [
                    {
                        "ref": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Broker",
                            "name": "b",
                        },
                        "selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"},
                    }
                ]
            },
            "spec.to[0]",
            "set exactly one",
        ),
        (
            {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}}]},
            "spec.to[0].ref.name",
            "is required",
        ),
        (
            {
                "to": [
                    {
                        "ref": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Trigger",
                            "name": "t",
                        }
                    }
                ]
            },
            "spec.to[0].ref.kind",
            "cannot be the target",
        ),
        (
            {
                "to": [
                    {
                        "ref": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Broker",
                            "name": "b",
                            "namespace": "elsewhere",
                        }
                    }
                ]
            },
            "spec.to[0].ref.namespace",
            "its own namespace",
        ),
        (
            {
                "to": [
                    {
                        "selector": {
                            "apiVersion": "eventing.knative.dev/v1",
                            "kind": "Broker",
                            "matchExpressions": [{"key": "a", "operator": "Near"}],
                        }
                    }
                ]
            },
            "spec.to[0].selector.matchExpressions[0].operator",
            "must be one of",
        ),
        ({"from": [{"sub": "system:*:x"}]}, "spec.from[0].sub", "last character"),
        ({"from": [{"sub": ""}]}, "spec.from[0]", "needs one of 'ref' or 'sub'"),
        (
            {"from": [{"ref": {"kind": "PingSource", "name": "s"}}]},
            "spec.from[0].ref.apiVersion",
            "is required",
        ),
        ({"filters": [{"exact": {"type": ""}}]}, "spec.filters[0].exact.type", "must not be empty"),
        ({"filters": [{"cesql": "type = "}]}, "spec.filters[0].cesql", ""),
    ],
)
def test_a_bad_event_policy_is_refused_naming_the_field(spec, field, says):
    with pytest.raises(InvalidResource) as caught:
        admit(event_policy(spec))
    assert caught.value.field.startswith(field), caught.value
    assert says in str(caught.value)


# --- reconcile ----------------------------------------------------------------------------------

_uids = itertools.count()


def stored(obj: dict[str, Any]) -> dict[str, Any]:
    admitted = admit(obj)
    admitted["metadata"]["uid"] = f"uid-{next(_uids)}"
    return admitted


def broker(name: str, labels: dict[str, str] | None = None, namespace: str = "default"):
    return stored(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        }
    )


def channel(name: str):
    return stored(
        {
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "InMemoryChannel",
            "metadata": {"name": name, "namespace": "default"},
        }
    )


def run(objects: list[dict[str, Any]], *, oidc: bool = True, mode: Any = "allow-same-namespace"):
    return reconcile(
        objects,
        base_url="http://cemesh",
        default_delivery=DeliveryPolicy(),
        ingress_oidc=oidc,
        default_authorization_mode=mode,
    )


def test_with_oidc_on_addresses_carry_the_audience_and_the_snapshot_the_authorization():
    objects = [broker("b"), channel("c")]
    result = run(objects, mode="deny-all")
    b_status, c_status = (result.statuses[o["metadata"]["uid"]] for o in objects)
    assert b_status["address"]["audience"] == "eventing.knative.dev/broker/default/b"
    assert c_status["address"]["audience"] == "messaging.knative.dev/inmemorychannel/default/c"
    gates = result.snapshot.ingress_authorization
    assert gates[("broker", "default", "b")].audience == "eventing.knative.dev/broker/default/b"
    assert gates[("broker", "default", "b")].default_mode == "deny-all"
    assert gates[("channel", "default", "c")].policies == ()


def test_with_oidc_off_nothing_changes_for_brokers_and_policies_are_not_enforced():
    objects = [broker("b"), stored(event_policy({"from": [{"sub": "x"}]}))]
    result = run(objects, oidc=False)
    assert "audience" not in result.statuses[objects[0]["metadata"]["uid"]]["address"]
    assert "policies" not in result.statuses[objects[0]["metadata"]["uid"]]
    assert result.snapshot.ingress_authorization == {}
    policy_status = result.statuses[objects[1]["metadata"]["uid"]]
    ready = policy_status["conditions"][0]
    assert ready["type"] == "Ready" and ready["status"] == "False"
    assert ready["reason"] == "OIDCAuthenticationDisabled"


def test_a_policy_lists_what_it_applies_to_and_those_list_the_policy():
    objects = [
        broker("plain"),
        broker("special", {"app": "special"}),
        channel("c"),
        stored(
            event_policy(
                {
                    "to": [
                        {
                            "selector": {
                                "apiVersion": "eventing.knative.dev/v1",
                                "kind": "broker",  # Knative compares kinds ignoring case
                                "matchLabels": {"app": "special"},
                            }
                        },
                        {
                            "ref": {
                                "apiVersion": "messaging.knative.dev/v1",
                                "kind": "InMemoryChannel",
                                "name": "c",
                            }
                        },
                    ],
                    "from": [{"sub": "alice"}],
                }
            )
        ),
    ]
    result = run(objects)
    status = result.statuses[objects[3]["metadata"]["uid"]]
    assert status["appliesTo"] == [
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "special"},
        {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"},
    ]
    assert status["from"] == ["alice"]
    assert status["conditions"][0]["status"] == "True"
    listed = {"apiVersion": "eventing.knative.dev/v1alpha1", "name": "p"}
    assert result.statuses[objects[1]["metadata"]["uid"]]["policies"] == [listed]
    assert "policies" not in result.statuses[objects[0]["metadata"]["uid"]]
    gates = result.snapshot.ingress_authorization
    assert [p.name for p in gates[("broker", "default", "special")].policies] == ["p"]
    assert [p.name for p in gates[("channel", "default", "c")].policies] == ["p"]
    assert gates[("broker", "default", "plain")].policies == ()


def test_a_policy_without_to_applies_to_its_whole_namespace_only():
    objects = [
        broker("a"),
        broker("b"),
        broker("x", namespace="other"),
        stored(event_policy({"from": [{"sub": "alice"}]})),
    ]
    result = run(objects)
    names = [t["name"] for t in result.statuses[objects[3]["metadata"]["uid"]]["appliesTo"]]
    assert names == ["a", "b"]
    assert result.snapshot.ingress_authorization[("broker", "other", "x")].policies == ()


def test_an_unresolved_from_ref_makes_the_policy_not_ready_yet_it_still_applies():
    source = stored(
        {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "PingSource",
            "metadata": {"name": "ping", "namespace": "default"},
            "spec": {"sink": {"uri": "http://example.com/"}},
        }
    )
    objects = [
        broker("b"),
        source,
        stored(
            event_policy(
                {
                    "from": [
                        {
                            "ref": {
                                "apiVersion": "sources.knative.dev/v1",
                                "kind": "PingSource",
                                "name": "ping",
                            }
                        },
                        {
                            "ref": {
                                "apiVersion": "sources.knative.dev/v1",
                                "kind": "PingSource",
                                "name": "gone",
                            }
                        },
                    ]
                }
            )
        ),
    ]
    result = run(objects)
    status = result.statuses[objects[2]["metadata"]["uid"]]
    assert status["from"] == [
        "system:serviceaccount:default:ping-oidc-sources.knative.dev-pingsource"
    ]
    ready = status["conditions"][0]
    assert ready["status"] == "False" and ready["reason"] == "SubjectsNotResolved"
    assert 'PingSource "default/gone" does not exist' in ready["message"]
    [applied] = result.snapshot.ingress_authorization[("broker", "default", "b")].policies
    assert applied.subjects == tuple(status["from"])


def test_compiled_policy_filters_come_from_the_trigger_filter_compiler():
    objects = [
        broker("b"),
        stored(
            event_policy({"from": [{"sub": "alice"}], "filters": [{"prefix": {"type": "com.ok"}}]})
        ),
    ]
    gate = run(objects).snapshot.ingress_authorization[("broker", "default", "b")]
    assert gate.refusal("alice", [event("com.ok.thing")]) is None
    assert gate.refusal("alice", [event("com.bad")]) is not None


def test_cemesh_get_eventpolicies_shows_targets_subjects_and_readiness():
    from datetime import UTC, datetime

    from broker.cli.tables import table_rows

    obj = {
        "metadata": {"name": "p", "namespace": "default"},
        "status": {
            "from": ["alice", "system:serviceaccount:default:ci-*"],
            "appliesTo": [{"kind": "Broker", "name": "orders"}, {"kind": "Channel", "name": "c"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    header, row = table_rows("EventPolicy", [obj], now=datetime.now(UTC), wide=True)
    assert header[:5] == ["NAME", "APPLIES_TO", "FROM", "READY", "REASON"]
    assert row[1] == "Broker/orders, Channel/c"
    assert row[2] == "alice, system:serviceaccount:default:ci-*"
    assert row[3] == "True"
