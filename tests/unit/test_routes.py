"""Ingress paths (broker.dataplane.routes): the cheap test that a URI may name a served route
never says no to a URI whose parsed path is one of those routes."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.dataplane.routes import match_route, may_name_route

_NAMES = st.sampled_from(["default", "b", "orders", "channels", "x"])
# URL pieces with the characters that move where a path starts and ends.
_PIECE = st.text(alphabet="ab/?#:.@[]%\t\n\r ", max_size=6) | _NAMES
_SCHEMES = st.sampled_from(["http://", "https://", " http://", "http:", "", "mailto:"])
_HOSTS = st.sampled_from(["127.0.0.1:9", "sink.example.com", "", "h#x", "h?y"])
_TAILS = st.sampled_from(["", "/", "//", "?a=/default", "#/default", "?q#f", "\n", "\t?"])
_INGRESS_URIS = st.builds(  # a Broker's or a channel's ingress URL, or nearly
    lambda scheme, host, prefix, name, tail: f"{scheme}{host}/{prefix}{name}{tail}",
    _SCHEMES.filter(lambda scheme: "/" in scheme),
    _HOSTS.filter(lambda host: "#" not in host and "?" not in host),
    st.sampled_from(["ns/", "channels/ns/", "ns//"]),
    _NAMES.filter(lambda name: name != "channels"),
    _TAILS,
)
_OTHER_URIS = st.one_of(
    st.builds(
        lambda scheme, host, segments, tail: f"{scheme}{host}/{'/'.join(segments)}{tail}",
        _SCHEMES,
        _HOSTS,
        st.lists(_PIECE, min_size=1, max_size=4),
        _TAILS,
    ),
    st.text(alphabet="abcdefhlort/:?#. \t", max_size=30),
)


@settings(max_examples=300)
@given(_INGRESS_URIS | _OTHER_URIS, st.frozensets(_NAMES, max_size=3))
def test_a_uri_whose_path_is_a_served_route_may_name_it(uri: str, others: frozenset[str]) -> None:
    try:
        route = match_route(urlsplit(uri).path)
    except ValueError:  # not a URL at all (admission refuses such URIs)
        return
    if route is not None:
        assert may_name_route(uri, others | {route[2]})  # its route served, with others or alone


def test_a_uri_whose_last_segment_names_no_served_route_is_ruled_out() -> None:
    assert not may_name_route("http://127.0.0.1:9/t1", frozenset({"default"}))
    assert not may_name_route("http://h/ns/default/x?y=/default", frozenset({"default"}))
    assert may_name_route("http://h/ns/default/?x#y", frozenset({"default"}))
    assert may_name_route("http://h/ns/t1\n", frozenset({"default"}))  # left to the parser
