"""What an address or a host written as one is: the one classifier of where credgate may send a request.

Used where a request goes somewhere an outsider chose: an http tool's redirect (`handlers.http`), a client's
metadata document (`client_documents`). Anything but a globally routable unicast address is refused, IPv6
forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) judged by the address they carry;
a host is read as the resolver would read it (`127.1` and `0x7f.1` are 127.0.0.1).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import unquote, urlsplit

__all__ = ["Address", "address_refusal", "literal_address", "server_of"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")  # what inet_aton reads as IPv4 besides dotted quads: 127.1, 0x7f000001
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated (RFC 4291 §2.5.5.1): never a place to go
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the low 32 bits are the IPv4 address reached
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a local network's own translator


def literal_address(host: str) -> Address | None:
    """The address a host names by itself, in any spelling the resolver reads as one (`127.1`, `0x7f.1`)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def server_of(url: str) -> str:
    """Which server a URL leads to, for telling whether two URLs lead to the same one: its host as the resolver
    reads it, in lower case; on loopback (every spelling of it one) with its port, since other local servers
    listen there, elsewhere without (a host's other ports and schemes are taken as the same server's). The host
    is the one a browser goes to: `\\` ends the authority as `/` does, percent escapes are decoded and the name
    mapped as IDNA maps it (fullwidth letters, ideographic full stops)."""
    parts = urlsplit(url.strip().replace("\\", "/"))
    host = _browsers_host(parts.hostname or "").rstrip(".").lower()
    address = literal_address(host)
    if host == "localhost" or host.endswith(".localhost") or (address is not None and address.is_loopback):
        try:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
        except ValueError:
            port = -1
        return f"loopback:{port}"
    return str(address) if address is not None else host


def _browsers_host(host: str) -> str:
    decoded = unquote(host)
    try:
        return decoded.encode("idna").decode("ascii")
    except UnicodeError:  # no name a browser would go to: compared as written
        return decoded


def address_refusal(address: Address, *, allow_loopback: bool = False) -> str | None:
    """Why a request may not go to this address (None: it may): anything but a globally routable unicast
    address, including IPv6 forms that carry a refused IPv4 address. `allow_loopback` lets loopback through,
    nothing else."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_loopback or address.is_unspecified:
            return _refusal(address, allow_loopback)
        if address.ipv4_mapped is not None:
            return address_refusal(address.ipv4_mapped, allow_loopback=allow_loopback)
        if address in _IPV4_COMPATIBLE:
            return "an IPv4-compatible IPv6 address (deprecated, not routed)"
        if address in _NAT64_LOCAL:
            return "a local NAT64 address"
        if address in _NAT64:  # a DNS64 answer on an IPv6-only network: as good as the IPv4 address in it
            inner = address_refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
            return f"{inner}, behind NAT64" if inner else None
        if address.sixtofour is not None and (inner := address_refusal(address.sixtofour)) is not None:
            return f"{inner}, behind 6to4"
        if address.teredo is not None and (inner := address_refusal(address.teredo[1])) is not None:
            return f"{inner}, behind Teredo"
    return _refusal(address, allow_loopback)


def _refusal(address: Address, allow_loopback: bool) -> str | None:
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local):
        return "a private address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None
