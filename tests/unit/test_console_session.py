"""The console's session rules (broker/server/console/session.py): cookie, CSRF, Origin, CSP."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.server.console import session


@given(st.text(min_size=1).filter(lambda t: "\x00" not in t))
def test_any_token_survives_the_cookie_and_only_its_own_csrf_token_passes(token: str) -> None:
    value = session.cookie_value(token)
    assert value.isascii() and ";" not in value and " " not in value
    assert session.token_of(value) == token
    assert session.csrf_valid(token, session.csrf_token(token))
    assert not session.csrf_valid(token, session.csrf_token(token + "x"))
    assert not session.csrf_valid(token, None)


def test_the_csrf_token_does_not_contain_the_token() -> None:
    assert "secret-token" not in session.csrf_token("secret-token")


def test_a_cookie_that_is_not_ours_is_no_session() -> None:
    for value in (None, "", "%%%", "____", "\u00e9"):
        assert session.token_of(value) is None


def test_the_cookie_is_httponly_strict_scoped_and_secure_over_https() -> None:
    plain = session.set_cookie("t", secure=False)
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Path=/console" in plain
    assert "Secure" not in plain and "Max-Age" not in plain
    assert session.set_cookie("t", secure=True).endswith("; Secure")
    assert "Max-Age=0" in session.clear_cookie(secure=False)


def test_only_cemeshs_own_origin_is_same_origin() -> None:
    assert session.same_origin("http://127.0.0.1:8080", "http", "127.0.0.1:8080")
    assert session.same_origin("https://Mesh.example", "https", "mesh.example")
    for origin in (None, "", "null", "http://127.0.0.1:9000", "https://127.0.0.1:8080"):
        assert not session.same_origin(origin, "http", "127.0.0.1:8080"), origin
    assert not session.same_origin("http://127.0.0.1:8080", "http", None)


def test_the_content_security_policy_allows_no_inline_script_and_no_other_origin() -> None:
    policy = session.CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy and "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy and "http" not in policy
