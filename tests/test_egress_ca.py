"""The egress CA: its certificate, its leaves, and real TLS handshakes on 127.0.0.1 with them."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mcp_credgate.egress_ca import CA_VALIDITY, LEAF_VALIDITY, Authority

pytestmark = pytest.mark.no_store  # never touches a store: runs once, not per backend

HOST = "api.example.test"
Serve = Callable[[tuple[bytes, bytes]], int]


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.new("test")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """A TLS server on 127.0.0.1 with the certificate chain and key given; answers b"hello" to each client
    that completes a handshake. Yields a function that starts one and returns its port."""
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def start(leaf: tuple[bytes, bytes]) -> int:
        chain, key = tmp_path / f"chain{len(sockets)}.pem", tmp_path / f"key{len(sockets)}.pem"
        chain.write_bytes(leaf[0])
        key.write_bytes(leaf[1])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.05)
        sockets.append(listener)

        def run() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with connection:
                    connection.settimeout(10)
                    try:
                        with context.wrap_socket(connection, server_side=True) as tls:
                            tls.sendall(b"hello")
                    except (ssl.SSLError, OSError):
                        pass  # the client refused our certificate

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    for listener in sockets:
        listener.close()


def fetch(port: int, server_hostname: str, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return tls.recv(5)


def trusting(authority: Authority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=authority.certificate_pem().decode())


def test_a_client_that_trusts_the_ca_completes_a_handshake_with_a_leaf_for_the_host_it_asks_for(
    authority: Authority, serve: Serve
) -> None:
    port = serve(authority.leaf_for(HOST))

    assert fetch(port, HOST, trusting(authority)) == b"hello"


def test_a_client_asking_for_another_host_refuses_the_leaf(authority: Authority, serve: Serve) -> None:
    port = serve(authority.leaf_for(HOST))

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        fetch(port, "other.example.test", trusting(authority))


def test_a_client_that_does_not_trust_the_ca_refuses_the_leaf(authority: Authority, serve: Serve) -> None:
    port = serve(authority.leaf_for(HOST))

    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate in certificate chain"):
        fetch(port, HOST, ssl.create_default_context())


def test_a_client_that_trusts_another_gateways_ca_refuses_the_leaf(authority: Authority, serve: Serve) -> None:
    port = serve(authority.leaf_for(HOST))

    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(port, HOST, trusting(Authority.new("another")))


def test_a_leaf_for_an_ip_address_names_the_address(authority: Authority, serve: Serve) -> None:
    port = serve(authority.leaf_for("127.0.0.1"))

    assert fetch(port, "127.0.0.1", trusting(authority)) == b"hello"
    leaf = x509.load_pem_x509_certificate(authority.leaf_for("127.0.0.1")[0])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == []


def test_an_authority_read_back_from_its_bytes_signs_leaves_its_clients_trust(
    authority: Authority, serve: Serve
) -> None:
    again = Authority.from_bytes(authority.to_bytes())

    port = serve(again.leaf_for(HOST))

    assert again.certificate_pem() == authority.certificate_pem()
    assert fetch(port, HOST, trusting(authority)) == b"hello"


def test_the_ca_certificate_may_sign_leaves_only_and_lasts_ten_years(authority: Authority) -> None:
    certificate = authority.certificate
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)

    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert "CN=credgate egress CA test" in certificate.subject.rfc4514_string()
    assert certificate.issuer == certificate.subject
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == CA_VALIDITY


def test_a_leaf_is_for_tls_servers_and_lasts_a_few_days(authority: Authority) -> None:
    chain, key = authority.leaf_for(HOST)
    leaf, issuer = x509.load_pem_x509_certificates(chain)

    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == LEAF_VALIDITY
    assert issuer == authority.certificate
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_leaf_is_kept_per_host_and_made_again_when_close_to_its_end(authority: Authority) -> None:
    now = datetime.datetime.now(datetime.UTC)
    first = authority.leaf_for("kept.example.test", now=now)

    assert authority.leaf_for("KEPT.example.test.", now=now + datetime.timedelta(hours=1)) == first
    assert authority.leaf_for("other.example.test", now=now) != first
    assert authority.leaf_for("kept.example.test", now=now + LEAF_VALIDITY) != first


@pytest.mark.parametrize("host", ["*.example.test", "https://api.example.test/", "bücher.example", "", "a..b"])
def test_what_is_neither_a_dns_name_nor_an_ip_address_gets_no_leaf(authority: Authority, host: str) -> None:
    with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
        authority.leaf_for(host)


def test_the_repr_of_an_authority_shows_no_key(authority: Authority) -> None:
    shown = repr(authority)

    assert shown == f"Authority(subject='CN=credgate egress CA test,O=credgate', sha256='{authority.fingerprint}')"
    assert not hasattr(authority, "__dict__")  # nor a vars() that would list the key


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"not ours" + data,
        lambda data: data[:-10],
        lambda data: data + b"more",
    ],
)
def test_bytes_that_are_not_an_authority_are_refused(authority: Authority, damage: Callable[[bytes], bytes]) -> None:
    with pytest.raises(ValueError, match="not a credgate egress CA"):
        Authority.from_bytes(damage(authority.to_bytes()))


def test_a_key_that_is_not_the_certificates_is_refused(authority: Authority) -> None:
    other = Authority.new("other").to_bytes()
    mine = authority.to_bytes()
    header = len(b"credgate egress CA v1\n")
    key_size = int.from_bytes(other[header : header + 4], "big")
    swapped = other[: header + 4 + key_size] + mine[header + 4 + key_size :]

    with pytest.raises(ValueError, match="the key is not the certificate's"):
        Authority.from_bytes(swapped)


def test_a_name_suffix_must_fit_a_common_name() -> None:
    with pytest.raises(ValueError, match="name suffix"):
        Authority.new("x" * 46)


def test_a_host_name_too_long_for_a_common_name_gets_a_leaf_named_by_its_alternative_name_alone(
    authority: Authority, serve: Serve
) -> None:
    host = "a-rather-long-label-for-a-service." * 2 + "example.test"
    port = serve(authority.leaf_for(host))

    assert fetch(port, host, trusting(authority)) == b"hello"
    leaf = x509.load_pem_x509_certificate(authority.leaf_for(host)[0])
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
