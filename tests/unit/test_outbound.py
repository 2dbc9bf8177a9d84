"""The outbound guard: link-local/metadata addresses and cemesh's own API are refused, in every
address form a client would accept; everything else passes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.controlplane.outbound import OutboundGuard, guard_for, refusal
from broker.core.errors import InvalidResource
from broker.server.features import admit

OPEN = OutboundGuard()
CEMESH = guard_for(
    listen_host="127.0.0.1",
    listen_ports=(8080,),
    public_urls=("https://mesh.example.com",),
    allow_link_local=False,
)

link_local_v4 = st.integers(0, 2**16 - 1).map(
    lambda low: ipaddress.IPv4Address((169 << 24) | (254 << 16) | low)
)
link_local_v6 = st.integers(0, 2**118 - 1).map(
    lambda low: ipaddress.IPv6Address((0xFE80 << 112) | low)
)
public_v4 = st.ip_addresses(v=4).filter(
    lambda a: a.is_global and not (a.is_link_local or a.is_loopback)
)
schemes = st.sampled_from(["http", "https", "HTTP", "Https"])
ports = st.none() | st.integers(1, 65535)
paths = st.sampled_from(["", "/", "/latest/meta-data/", "/a?b=c"])


def _url(scheme: str, host: str, port: int | None, path: str) -> str:
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"


def _v4_forms(address: ipaddress.IPv4Address) -> list[str]:
    """The ways clients accept to write one IPv4 address in a URL."""
    value = int(address)
    octets = str(address).split(".")
    return [
        str(address),
        str(value),  # one integer
        hex(value),  # one hex number
        ".".join(f"0{int(o):o}" for o in octets),  # octal parts
        f"{octets[0]}.{octets[1]}.{(int(octets[2]) << 8) | int(octets[3])}",  # a.b.c
        f"[::ffff:{address}]",  # IPv4-mapped IPv6
        f"[64:ff9b::{value >> 16:x}:{value & 0xFFFF:x}]",  # NAT64
        f"{address}.",  # trailing dot
    ]


@given(link_local_v4, schemes, ports, paths, st.data())
def test_link_local_ipv4_is_refused_in_every_form(
    address: ipaddress.IPv4Address, scheme: str, port: int | None, path: str, data: st.DataObject
) -> None:
    host = data.draw(st.sampled_from(_v4_forms(address)))
    reason = refusal(_url(scheme, host, port, path), OPEN)
    assert reason is not None and "link-local" in reason


@given(link_local_v6, schemes, ports, st.booleans())
def test_link_local_ipv6_is_refused_bracketed_with_or_without_zone(
    address: ipaddress.IPv6Address, scheme: str, port: int | None, zoned: bool
) -> None:
    host = f"[{address}{'%25eth0' if zoned else ''}]"
    assert refusal(_url(scheme, host, port, "/"), OPEN) is not None


@given(public_v4, schemes, ports, paths)
def test_public_addresses_pass(
    address: ipaddress.IPv4Address, scheme: str, port: int | None, path: str
) -> None:
    assert refusal(_url(scheme, str(address), port, path), CEMESH) is None


@pytest.mark.parametrize(
    "uri",
    [
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "HTTP://169.254.169.254/",
    ],
)
def test_cloud_metadata_services_are_refused(uri: str) -> None:
    assert refusal(uri, OPEN) is not None


def test_the_setting_allows_link_local_destinations() -> None:
    allowed = OutboundGuard(allow_link_local=True)
    assert refusal("http://169.254.169.254/", allowed) is None
    assert refusal("http://[fe80::1]:9000/", allowed) is None


@given(
    st.sampled_from(
        [
            "127.0.0.1",
            "127.1.2.3",
            "localhost",
            "LOCALHOST",
            "[::1]",
            "0.0.0.0",
            "2130706433",
            "[::ffff:127.0.0.1]",
        ]
    ),
    st.sampled_from(["http", "HTTP", "https"]),
    st.sampled_from(
        [
            "/apis/sources.knative.dev/v1/namespaces/default/containersources",
            "/api/v1/secrets",
            "/",
            "",
            "/healthz",
            "/default/x/../../apis/x",
            "/default/%2e%2e/apis",
            "/channels\\..\\apis",
        ]
    ),
)
def test_cemesh_own_api_is_refused_at_any_loopback_name(host: str, scheme: str, path: str) -> None:
    reason = refusal(f"{scheme}://{host}:8080{path}", CEMESH)
    assert reason is not None and "management API" in reason


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8080/default/default",  # a Broker
        "http://localhost:8080/channels/default/orders",  # a Channel
        "http://127.0.0.1:8080/services/default/fn",  # a Service
        "https://mesh.example.com/team-a/orders",  # a Broker through the public URL
        "http://127.0.0.1:9000/apis/anything",  # another port: not cemesh
    ],
)
def test_cemesh_data_plane_and_other_ports_pass(uri: str) -> None:
    assert refusal(uri, CEMESH) is None


def test_public_url_host_with_api_path_is_refused() -> None:
    assert refusal("https://MESH.example.com:443/apis/x", CEMESH) is not None


def test_admission_names_the_field_of_a_refused_dead_letter_sink() -> None:
    trigger = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": {
            "broker": "default",
            "subscriber": {"uri": "http://example.com/"},
            "delivery": {"deadLetterSink": {"uri": "http://169.254.169.254/"}},
        },
    }
    admit(trigger)  # no guard: objects cemesh makes itself
    with pytest.raises(InvalidResource) as caught:
        admit(trigger, guard=CEMESH)
    assert caught.value.field == "spec.delivery.deadLetterSink.uri"


def test_relative_uri_with_ref_may_not_leave_the_ref_address() -> None:
    base = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": {"broker": "default"},
    }
    ref = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"}
    for uri in ("//169.254.169.254/", "/../../apis/x"):
        obj = {**base, "spec": {**base["spec"], "subscriber": {"ref": ref, "uri": uri}}}
        with pytest.raises(InvalidResource) as caught:
            admit(obj, guard=CEMESH)
        assert caught.value.field == "spec.subscriber.uri"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"uri": "https://x.example/", "CACerts": "not a pem"}, "spec.subscriber.CACerts"),
        ({"uri": "https://x.example/", "CACerts": 7}, "spec.subscriber.CACerts"),
        ({"uri": "https://x.example/", "audience": ""}, "spec.subscriber.audience"),
    ],
)
def test_bad_cacerts_or_audience_are_refused_naming_the_field(value: dict, field: str) -> None:
    obj = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": {"broker": "default", "subscriber": value},
    }
    with pytest.raises(InvalidResource) as caught:
        admit(obj)
    assert caught.value.field == field
