"""Egress injection for stdio upstreams (`inject = "egress"`, issue 27): the upstream is started with a
placeholder wherever its declaration puts a secret field's `{cred.FIELD}`, and a proxy of its own
(`egress_proxy.EgressProxy`) puts the real value on the wire, toward the declared hosts only. The sandbox makes
that proxy the upstream's only way out: a network namespace with nothing but loopback, where a forwarder
passes 127.0.0.1:`sandbox.EGRESS_PORT` to the proxy's Unix socket (`sandbox.EGRESS_DIR`).

- `EgressKit`: what the pool needs for it, for as long as it runs: the key placeholders are drawn under (derived
  from the master key: the same placeholders after a restart), the gateway's certificate authority (made when the
  gateway starts and kept in memory only: it signs for the upstreams that gateway process runs, which restart
  with it, so no key of it is ever written anywhere), where a credential's fields are declared, and where the
  proxy's refusals go (the audit);
- `stand_ins(kit, scope, credential)`: the credential as the upstream holds it;
- `egress_way(...)`: the folder bound into the sandbox (the proxy's socket, the CA certificate, a CA bundle),
  with the proxy listening, while the upstream runs.

A field that is not secret (a username) is given as it is: its declaration says it may be shown.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..credential import Credential
from ..declarations import CredentialField, EgressSpec
from ..egress_ca import Authority
from ..egress_proxy import EgressEvent, EgressProxy
from ..egress_swap import EgressRules
from ..isolation import UpstreamScope
from ..placeholders import placeholder
from ..redact import Redactor

__all__ = ["PLACEHOLDER_KEY_PURPOSE", "EgressKit", "egress_way", "placeholder_redactor", "stand_ins"]

PLACEHOLDER_KEY_PURPOSE = "egress placeholders"  # `Store.derived_key(...)`: the key placeholders are drawn under

_SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


@dataclass(frozen=True)
class EgressKit:
    """What the pool needs to run upstreams under `inject = "egress"` (see the module). `fields_of(server)`: the
    fields of the credential the upstream `server` declares (their patterns shape the placeholders).
    `on_event(scope, event)`: a refusal of the proxy of the scope's upstream. `upstream_ca` and `resolve`: for
    tests (a local API under its own host name and CA), as `EgressProxy` takes them."""

    placeholder_key: bytes = field(repr=False)
    authority: Authority
    fields_of: Callable[[str], Sequence[CredentialField]]
    on_event: Callable[[UpstreamScope, EgressEvent], None] | None = None
    upstream_ca: Path | None = None
    resolve: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        placeholder_key: bytes,
        fields_of: Callable[[str], Sequence[CredentialField]],
        on_event: Callable[[UpstreamScope, EgressEvent], None] | None = None,
    ) -> EgressKit:
        """A kit with a new authority, named after this host and process (told apart in a trust store)."""
        authority = Authority.new(f"{socket.gethostname()[:30]} {os.getpid()}")
        return cls(placeholder_key, authority, fields_of, on_event)


def stand_ins(kit: EgressKit, scope: UpstreamScope, credential: Credential) -> Credential:
    """The credential as the upstream of `scope` holds it: each secret field's placeholder (one per server,
    credential, group and field; stable across restarts) in place of its value. Raises PlaceholderError (one
    line, naming the field) when a field's pattern admits no placeholder credgate can stand behind."""
    declared = {f.name: f for f in kit.fields_of(scope.server)}
    values = {}
    for name, value in credential.items():
        if not credential.is_secret(name) or not value:
            values[name] = value
            continue
        spec = declared.get(name) or CredentialField(name=name, kind="token", secret=True)
        values[name] = placeholder(
            kit.placeholder_key,
            server=scope.server,
            credential=credential.name,
            group=scope.group or "",
            field=spec,
            avoid=value,
        )
    secret = frozenset(name for name in credential if credential.is_secret(name))
    return Credential(credential.name, credential.type, values, secret, credential.uid)


def _swaps(credential: Credential, shown: Credential) -> dict[str, str]:
    return {shown[name]: value for name, value in credential.secrets().items()}


def placeholder_redactor(credential: Credential, shown: Credential) -> Redactor:
    """Redaction for what an egress upstream sends: its placeholders as well as the real values (an echo of a
    placeholder is `[redacted:FIELD]` to the agent too, as the real value would be)."""
    secrets = credential.secrets()
    pairs = [(name, f"{user}:{pw}") for user in credential.public_values() for name, pw in secrets.items()]
    pairs += [(name, shown[name]) for name in secrets]
    return Redactor(secrets, pairs)


def _bundle(certificate: bytes) -> bytes:
    """The system's CA bundle and the egress CA: a tunnelled host (`other = "tunnel"`) is verified as usual."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_SYSTEM_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes().rstrip(b"\n") + b"\n" + certificate
    return certificate


@asynccontextmanager
async def egress_way(
    kit: EgressKit, scope: UpstreamScope, spec: EgressSpec, credential: Credential, shown: Credential, folder: Path
) -> AsyncIterator[Path]:
    """`folder` (0700, the gateway's account only: `SandboxPolicy.egress_folder`) holding `proxy.sock` (the proxy
    of this upstream, listening until the block ends), `ca.pem` (the egress CA's certificate), `ca-bundle.pem`
    and the proxy's leaf keys while they load; removed afterwards."""
    try:
        certificate = kit.authority.certificate_pem()
        (folder / "ca.pem").write_bytes(certificate)
        (folder / "ca-bundle.pem").write_bytes(_bundle(certificate))
        rules = EgressRules(
            _swaps(credential, shown),
            hosts=spec.https_hosts,
            other=spec.other,
            body_fields=frozenset(spec.body_fields),
            plain_hosts=spec.plain_hosts,
        )
        on_event = kit.on_event

        def report(event: EgressEvent) -> None:
            if on_event is not None:
                on_event(scope, event)

        async with EgressProxy(
            rules,
            kit.authority,
            on_event=report,
            upstream_ca=kit.upstream_ca,
            resolve=kit.resolve,
            unix_socket=folder / "proxy.sock",
            private_dir=folder,
        ):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
