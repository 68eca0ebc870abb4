"""The gateway's own certificate authority for egress injection (issue 27): the proxy that puts real secrets on
the wire ends an upstream's TLS toward a declared host with a leaf certificate this authority signs, and the
upstream trusts it because it is given the authority's certificate (and nothing else of it).

- `Authority.new` makes an EC P-256 key and a self-signed CA certificate that may sign leaves only
  (path length 0, key usage certificate and CRL signing), valid ten years;
- `to_bytes` / `from_bytes`: the key (PKCS8 DER) and the certificate (DER), so that the store can seal the
  authority as it seals a credential's value;
- `certificate_pem`: the one thing a child process is given;
- `leaf_for(host)`: a certificate for a DNS name or an IP address (its subject alternative name), for TLS servers
  only, valid a few days, kept per host and made again before it runs out.

The repr shows the subject and the certificate's fingerprint, never the key.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_VALIDITY", "LEAF_RENEW_BEFORE", "LEAF_VALIDITY", "Authority"]

CA_VALIDITY = datetime.timedelta(days=3653)  # ten years: the gateway's lifetime, not a rotation period
LEAF_VALIDITY = datetime.timedelta(days=3)  # short: a leaf is made again in microseconds, from memory
LEAF_RENEW_BEFORE = datetime.timedelta(days=1)  # a leaf this close to its end is made again, not handed out
_BACKDATE = datetime.timedelta(hours=1)  # certificates start an hour early: a child's clock may be behind ours
_FORMAT = b"credgate egress CA v1\n"
_MAX_SUFFIX = 64 - len("credgate egress CA ")  # a common name is at most 64 characters (RFC 5280)
# a host name as a leaf may carry it: ASCII labels (A-labels for international names), no wildcard
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


@dataclass(frozen=True)
class _Leaf:
    not_after: datetime.datetime
    chain_pem: bytes
    key_pem: bytes


class Authority:
    """A per-gateway CA: its key, its certificate and the leaves it has made (kept per host). Safe to share
    between threads."""

    __slots__ = ("_certificate", "_key", "_leaves", "_lock")

    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self._certificate = certificate
        self._leaves: dict[str, _Leaf] = {}
        self._lock = threading.Lock()

    @classmethod
    def new(cls, name_suffix: str, *, now: datetime.datetime | None = None) -> Authority:
        """A new authority whose subject is `CN=credgate egress CA <name_suffix>` (the suffix tells one gateway's
        authority from another's in a trust store or a log)."""
        if not 0 < len(name_suffix) <= _MAX_SUFFIX or not name_suffix.isprintable():
            raise ValueError(f"the name suffix of an egress CA must be 1 to {_MAX_SUFFIX} printable characters")
        start = (now or _now()) - _BACKDATE
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "credgate"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"credgate egress CA {name_suffix}"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def to_bytes(self) -> bytes:
        """The key (PKCS8 DER, unencrypted: the store seals these bytes) and the certificate (DER)."""
        key = self._key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        certificate = self._certificate.public_bytes(serialization.Encoding.DER)
        return _FORMAT + _sized(key) + _sized(certificate)

    @classmethod
    def from_bytes(cls, data: bytes) -> Authority:
        """The authority `to_bytes` gave. ValueError (naming no key material) if the bytes are not one: they
        come from the store, sealed, so this is a fault of the code, not of the user."""
        if not data.startswith(_FORMAT):
            raise ValueError("not a credgate egress CA (unknown format)")
        key_der, rest = _unsized(data[len(_FORMAT) :])
        certificate_der, rest = _unsized(rest)
        if rest:
            raise ValueError("not a credgate egress CA (bytes after its certificate)")
        key = serialization.load_der_private_key(key_der, password=None)
        certificate = x509.load_der_x509_certificate(certificate_der)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
            raise ValueError("not a credgate egress CA (the key is not the certificate's)")
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise ValueError("not a credgate egress CA (the certificate is not a CA's)")
        return cls(key, certificate)

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    def certificate_pem(self) -> bytes:
        """The CA certificate, PEM: what a child is given to trust (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`…)."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, hex: names this authority in `doctor` and logs."""
        return self._certificate.fingerprint(hashes.SHA256()).hex()

    def leaf_for(self, host: str, *, now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
        """(certificate chain PEM: the leaf then this CA, private key PEM) for a TLS server named `host`, a DNS
        name (`api.example.com`, case and a final dot ignored) or an IP address. The same leaf is given again
        until less than LEAF_RENEW_BEFORE of it is left. ValueError for what is neither (a wildcard, a URL,
        a Unicode name: give its A-label)."""
        name = _host(host)
        moment = now or _now()
        with self._lock:
            leaf = self._leaves.get(name)
            if leaf is None or leaf.not_after - moment < LEAF_RENEW_BEFORE:
                leaf = self._leaves[name] = self._make_leaf(name, moment)
        return leaf.chain_pem, leaf.key_pem

    def _make_leaf(self, name: str, moment: datetime.datetime) -> _Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        start = moment - _BACKDATE
        try:
            alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            alternative = x509.DNSName(name)
        # a subject of its own only when the name fits a common name (64 characters); without one the
        # alternative name must be critical (RFC 5280 §4.2.1.6)
        fits = len(name) <= 64
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if fits else [])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + LEAF_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([alternative]), critical=not fits)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain_pem = certificate.public_bytes(serialization.Encoding.PEM) + self.certificate_pem()
        return _Leaf(certificate.not_valid_after_utc, chain_pem, key_pem)

    def __repr__(self) -> str:
        return f"Authority(subject={self._certificate.subject.rfc4514_string()!r}, sha256={self.fingerprint!r})"


def _host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    if not name.isascii() or _HOST_NAME.match(name) is None:
        raise ValueError(f"{host!r} is neither a DNS name nor an IP address a leaf certificate can be made for")
    return name


def _sized(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _unsized(data: bytes) -> tuple[bytes, bytes]:
    if len(data) < 4 or len(data) < 4 + (size := int.from_bytes(data[:4], "big")):
        raise ValueError("not a credgate egress CA (truncated)")
    return data[4 : 4 + size], data[4 + size :]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
