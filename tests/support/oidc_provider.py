"""A real OpenID Connect provider for the SSO tests: panva's `oidc-provider` (OpenID-certified), run by Node 22
from the npm registry, both pinned in tests/node/package-lock.json (`tests/node/oidc_provider.mjs` is the
script).

`node_for_tests()` (tests/support/node.py) installs them when they are missing; without npm, the tests that need
them skip saying why, but never in CI (`CI` set), where that fails instead.
`running_oidc_provider(clients, accounts)` starts one on 127.0.0.1 and stops it afterwards;
`sign_in_at_provider(url, sub)` plays the browser at its sign-in page, returning where it sends the browser
back to (credgate's callback, with the code).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx2

from tests.support.node import NODE_DIR, node_for_tests

SCRIPT = NODE_DIR / "oidc_provider.mjs"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Account:
    sub: str
    email: str | None = None
    email_verified: bool = False
    preferred_username: str | None = None
    name: str | None = None

    def claims(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class OidcProvider:
    issuer: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_oidc_provider(
    tmp_path: Path,
    accounts: Sequence[Account],
    *,
    client_id: str,
    client_secret: str,
    redirect_uris: Sequence[str],
    id_token_claims: bool = True,
) -> Iterator[OidcProvider]:
    """`id_token_claims`: the ID token carries email and names (else `sub` alone, the rest at userinfo)."""
    node = node_for_tests()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "oidc-provider.json"
    config.write_text(
        json.dumps(
            {
                "clients": [
                    {"client_id": client_id, "client_secret": client_secret, "redirect_uris": list(redirect_uris)}
                ],
                "accounts": [a.claims() for a in accounts],
                "idTokenClaims": id_token_claims,
            }
        )
    )
    log = (tmp_path / "oidc-provider.err").open("wb")
    process = subprocess.Popen(
        [str(node), str(SCRIPT), str(config)], stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        line = _first_line(process, START_TIMEOUT)
        if not line:
            process.wait(timeout=5)
            raise AssertionError(f"the OpenID provider did not start:\n{(tmp_path / 'oidc-provider.err').read_text()}")
        yield OidcProvider(json.loads(line)["issuer"], process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    found: list[bytes] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline() if process.stdout else b""))
    reader.start()
    reader.join(timeout)
    return found[0].decode() if found else ""


def sign_in_at_provider(authorization_url: str, sub: str, back_to: str) -> str:
    """Follow the provider from `authorization_url` as a browser would, choose account `sub` on its sign-in
    page, and return the URL it finally sends the browser to under `back_to` (credgate's callback)."""
    with httpx2.Client(follow_redirects=False, timeout=30) as browser:
        url = authorization_url
        for _ in range(10):
            if url.startswith(back_to):
                return url
            response = browser.get(url)
            if response.status_code in (302, 303):
                url = urljoin(url, response.headers["location"])
                continue
            form = re.search(r'<form method="post" action="([^"]+)"', response.text)
            assert response.status_code == 200 and form, (response.status_code, response.text[:500])
            answer = browser.post(urljoin(url, form.group(1)), data={"sub": sub})
            assert answer.status_code in (302, 303), (answer.status_code, answer.text[:500])
            url = urljoin(url, answer.headers["location"])
    raise AssertionError("the provider did not send the browser back")


def callback_path(url: str, base: str) -> str:
    """The part of `url` after `base` (for a test client that knows only paths)."""
    assert url.startswith(base), url
    return url[len(base) :]
