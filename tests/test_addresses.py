"""The one classifier of where credgate may send a request (`addresses`): every address that is not globally
routable is refused, IPv6 forms carrying an IPv4 address judged by it, hosts read as the resolver reads them."""

from __future__ import annotations

import ipaddress

import pytest

from mcp_credgate.addresses import address_refusal, literal_address, server_of

pytestmark = pytest.mark.no_store

REFUSED_ADDRESSES = {
    "10.0.0.1": "private",
    "10.255.255.255": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.0.10": "private",
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "169.254.169.254": "link-local",  # the cloud metadata service
    "169.254.0.1": "link-local",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "unspecified",
    "224.0.0.251": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.1": "private",  # documentation and benchmarking ranges: not on the internet either
    "198.18.0.1": "private",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd12:3456:789a::1": "private",
    "fec0::1": "private",  # site-local, deprecated
    "ff02::1": "multicast",
    "2001:db8::1": "private",
    "::ffff:10.0.0.1": "private",  # IPv4-mapped
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "link-local",
    "::10.0.0.1": "IPv4-compatible",
    "::8.8.8.8": "IPv4-compatible",
    "64:ff9b::a00:1": "private address, behind NAT64",  # 10.0.0.1 through the well-known NAT64 prefix
    "64:ff9b::a9fe:a9fe": "link-local address, behind NAT64",
    "64:ff9b:1::a00:1": "local NAT64",
    "2002:a00:1::1": "private address, behind 6to4",
    "2002:7f00:1::1": "loopback address, behind 6to4",
}
PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "172.32.0.1",
    "100.128.0.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # 8.8.8.8 through NAT64: what a DNS64 resolver answers on an IPv6-only network
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "kind"), REFUSED_ADDRESSES.items())
def test_the_classifier_refuses_every_address_that_is_not_globally_routable(address: str, kind: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))

    assert reason is not None
    assert kind in reason


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_the_classifier_lets_globally_routable_addresses_through(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_allowing_loopback_lets_loopback_through_and_nothing_else() -> None:
    for address in ("127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"):
        assert address_refusal(ipaddress.ip_address(address), allow_loopback=True) is None
    still_refused = [a for a in REFUSED_ADDRESSES if REFUSED_ADDRESSES[a] != "loopback"]
    assert all(address_refusal(ipaddress.ip_address(a), allow_loopback=True) for a in still_refused)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("[::1]", "::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_a_host_written_as_an_address_is_read_as_the_resolver_reads_it(host: str, address: str) -> None:
    assert literal_address(host) == ipaddress.ip_address(address)


def test_a_name_is_not_an_address() -> None:
    assert literal_address("example.com") is None and literal_address("face.b00c") is None


def test_an_ipv4_address_behind_teredo_is_judged_by_itself() -> None:
    teredo_private = ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:f5ff:fffe")  # client 10.0.0.1
    assert address_refusal(teredo_private) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://credgate.example.com\\@evil.example/consent",  # a browser reads `\\` as `/`: the host is before it
        "https://credgate%2Eexample%2Ecom/oauth/consent",  # a browser decodes the host's percent escapes
        "https://\uff43redgate\u3002example.com/",  # and maps it as IDNA does (fullwidth letters, ideographic dot)
        "HTTPS://CREDGATE.EXAMPLE.COM./",
    ],
)
def test_a_url_a_browser_opens_at_the_gateways_host_is_the_gateways_server(url: str) -> None:
    assert server_of(url) == server_of("https://credgate.example.com")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765\\@evil.example/setup/abc",
        "http://127%2E0%2E0%2E1:8765/setup/abc",
        "http://\uff11\uff12\uff17.0.0.1:8765/setup/abc",
        "http://evil@localhost:8765/setup/abc",
    ],
)
def test_a_url_a_browser_opens_at_the_link_server_is_the_link_servers(url: str) -> None:
    assert server_of(url) == server_of("http://127.0.0.1:8765")


def test_other_servers_stay_other_servers() -> None:
    own = server_of("https://credgate.example.com")
    assert server_of("https://evil.example/@credgate.example.com") != own
    assert server_of("https://credgate.example.com.evil.example/") != own
    assert server_of("http://127.0.0.1:8766/") != server_of("http://127.0.0.1:8765")
