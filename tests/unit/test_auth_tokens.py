"""Local and static tokens, the authenticator chain, and the pure checks around the API guard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.auth.hosts import allowed_host_names, host_allowed, host_name, is_loopback
from broker.auth.local_token import (
    LOCAL_SUBJECT,
    LocalTokenAuthenticator,
    default_token_path,
    ensure_token,
)
from broker.auth.processes import process_command
from broker.auth.setup import authenticate, build_access, listen_refusal
from broker.auth.static_tokens import StaticTokenAuthenticator, hash_token, parse_tokens
from broker.controlplane.api.bodies import media_type, merge_patch, parse_object
from broker.controlplane.api.guard import bearer_token
from broker.core.config import Settings
from broker.core.errors import BindingError, InvalidConfig, InvalidResource, Unauthenticated


def test_the_local_token_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "cemesh" / "token"
    first = ensure_token(path)
    assert len(first) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert ensure_token(path) == first


def test_the_default_token_path_follows_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_token_path() == tmp_path / "cemesh" / "token"


def test_tokens_differ_between_installs(tmp_path: Path) -> None:
    assert ensure_token(tmp_path / "a") != ensure_token(tmp_path / "b")


async def test_the_local_token_proves_the_local_admin_subject(tmp_path: Path) -> None:
    token = ensure_token(tmp_path / "token")
    authenticator = LocalTokenAuthenticator(token)
    assert (await authenticator.authenticate(token)).name == LOCAL_SUBJECT  # type: ignore[union-attr]
    assert await authenticator.authenticate(token[:-1]) is None


async def test_static_tokens_match_by_hash_or_plain_and_carry_groups() -> None:
    entries = parse_tokens(
        {
            "tokens": [
                {"name": "alice", "groups": ["ops"], "sha256": hash_token("alice-secret-token")},
                {"name": "ci", "token": "ci-plain-token-123"},
            ]
        },
        "tokens.yaml",
    )
    authenticator = StaticTokenAuthenticator(entries)
    alice = await authenticator.authenticate("alice-secret-token")
    assert alice is not None and (alice.name, alice.groups, alice.via) == (
        "alice",
        ("ops",),
        "static-token",
    )
    ci = await authenticator.authenticate("ci-plain-token-123")
    assert ci is not None and ci.name == "ci"
    assert await authenticator.authenticate(hash_token("alice-secret-token")) is None


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"tokens": "x"}, "expected a list"),
        ([{"token": "0123456789abcdefg"}], r"tokens\[0\].name: is required"),
        ([{"name": "a"}], "exactly one of sha256"),
        ([{"name": "a", "sha256": "abc"}], "64 hex digits"),
        ([{"name": "a", "token": "short"}], "16 characters"),
        ([{"name": "a", "token": "0123456789abcdefg", "groups": "ops"}], "list of strings"),
        (
            [{"name": "a", "token": "0123456789abcdefg"}, {"name": "a", "token": "x" * 20}],
            "given twice",
        ),
    ],
)
def test_a_bad_tokens_file_is_refused_naming_the_entry(document: object, words: str) -> None:
    with pytest.raises(InvalidConfig, match=words):
        parse_tokens(document, "tokens.yaml")


@given(st.text(min_size=1, max_size=80))
def test_hash_token_is_the_hex_sha256(token: str) -> None:
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()


async def test_the_first_authenticator_that_knows_the_token_decides(tmp_path: Path) -> None:
    local = LocalTokenAuthenticator(ensure_token(tmp_path / "t"))
    static = StaticTokenAuthenticator(parse_tokens([{"name": "a", "token": "a" * 20}], "f"))
    assert (await authenticate([local, static], "a" * 20)).name == "a"
    with pytest.raises(Unauthenticated, match="not valid"):
        await authenticate([local, static], "b" * 20)


async def test_build_access_from_settings(tmp_path: Path) -> None:
    access = build_access(Settings(token_file=tmp_path / "token"))
    assert access.required and access.token_file == tmp_path / "token"
    with pytest.raises(Unauthenticated, match="needs a bearer token"):
        await access.authenticate(None)
    off = build_access(Settings(auth="none", token_file=tmp_path / "unused"))
    assert (await off.authenticate(None)).name == "system:anonymous"
    assert not (tmp_path / "unused").exists()


def test_an_unwritable_token_file_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InvalidConfig, match="cannot create or read the local token file"):
        build_access(Settings(token_file=blocker / "token"))


# --- bearer, hosts, media types, processes, listening -------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8080", "localhost"),
        ("[::1]:8080", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("Example.COM.", "example.com"),
        ("", None),
        (None, None),
        ("[::1", None),
    ],
)
def test_host_name(header: str | None, name: str | None) -> None:
    assert host_name(header) == name


def test_allowed_host_names_are_loopback_public_url_and_the_extra_ones() -> None:
    allowed = allowed_host_names("http://mesh.example:8080", ["other.example"])
    assert allowed is not None
    assert {"localhost", "127.0.0.1", "::1", "mesh.example", "other.example"} <= allowed
    assert not host_allowed("evil.example", allowed)
    assert not host_allowed(None, allowed)
    assert host_allowed("anything", allowed_host_names("http://x", ["*"]))


@given(st.from_regex(r"[a-z]{1,10}\.(test|example)", fullmatch=True), st.integers(1, 65535))
def test_no_other_name_is_allowed_with_any_port(name: str, port: int) -> None:
    allowed = allowed_host_names("http://127.0.0.1:8080", [])
    assert not host_allowed(f"{name}:{port}", allowed)
    assert host_allowed(f"localhost:{port}", allowed)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("127.0.0.5", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("mesh.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_listen_refusal_only_for_auth_off_on_a_non_loopback_host_without_insecure() -> None:
    assert listen_refusal("0.0.0.0", "none", insecure=False) is not None
    assert listen_refusal("0.0.0.0", "none", insecure=True) is None
    assert listen_refusal("127.0.0.1", "none", insecure=False) is None
    assert listen_refusal("0.0.0.0", "required", insecure=False) is None


def test_media_types_and_body_parsing() -> None:
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert parse_object(b'{"a": 1}', "application/json") == {"a": 1}
    assert parse_object(b'{"a": 1}', "application/merge-patch+json") == {"a": 1}
    assert parse_object(b"a: 1\n", "application/yaml") == {"a": 1}
    with pytest.raises(BindingError, match="one YAML document"):
        parse_object(b"a: 1\n---\nb: 2\n", "application/yaml")
    with pytest.raises(BindingError, match="aliases"):
        parse_object(b"a: &x [1]\nb: *x\n", "application/yaml")
    with pytest.raises(InvalidResource, match="must be an object"):
        parse_object(b"[1]", "application/json")


def _process_object(kind: str, api_version: str, command: list[str] | None) -> dict:
    container: dict = {"image": "x"}
    if command is not None:
        container["command"] = command
        container["args"] = ["--flag"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "n"},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }


def test_process_command_knows_container_sources_and_process_services() -> None:
    source = _process_object("ContainerSource", "sources.knative.dev/v1", ["run"])
    service = _process_object("Service", "serving.knative.dev/v1", ["serve"])
    assert process_command(source, "process") == ["run", "--flag"]
    assert process_command(source, "kubernetes") == ["run", "--flag"]
    assert process_command(service, "process") == ["serve", "--flag"]
    assert process_command(service, "kubernetes") is None
    image_only = _process_object("ContainerSource", "sources.knative.dev/v1", None)
    assert process_command(image_only, "process") is None
    assert (
        process_command(_process_object("Broker", "eventing.knative.dev/v1", ["x"]), "process")
        is None
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=10,
)


@given(json_values, st.dictionaries(st.text(max_size=3), json_values, max_size=4))
def test_merge_patch_follows_rfc_7386(target: object, patch: dict) -> None:
    merged = merge_patch(target, patch)
    assert isinstance(merged, dict)
    for key, value in patch.items():
        if value is None:
            assert key not in merged
        elif not isinstance(value, dict):
            assert merged[key] == value
    if isinstance(target, dict):
        for key in target.keys() - patch.keys():
            assert merged[key] == target[key]
    assert merge_patch(merged, {}) == merged


def test_merge_patch_examples_from_the_rfc() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
