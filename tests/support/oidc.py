"""A real OpenID Connect provider process for tests: devtools/oidc-provider (npm ``oidc-provider``).

One node process serves two issuers on one free port — ``<base>/staff`` (an organisation's identity
provider: tokens carry ``hsa_id``) and ``<base>/eid`` (a citizen e-ID: ``personal_identity_number``) —
each with the confidential client ``sip-web`` (code + PKCE) and JWT access tokens for the suite's
audience. :func:`running_provider` starts it with the test's accounts and redirect URIs and stops it
after; :meth:`Provider.issuers_file` writes the SIP_JWT_ISSUERS_FILE that makes the services trust it;
:func:`code_flow` signs a user in through the real login and consent forms with httpx (no browser).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

import httpx
import yaml

from tests.support.infra import REPO, Proc, free_port

PROVIDER_DIR = REPO / "devtools" / "oidc-provider"
CLIENT_ID = "sip-web"
CLIENT_SECRET = "sip-web-test-secret"
PASSWORD = "test"


def ensure_node_modules() -> None:
    """``npm ci`` once (from the committed package-lock.json) when node_modules is missing."""
    if (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir() and (
        PROVIDER_DIR / "node_modules" / "axe-core"
    ).is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: `apt-get install nodejs npm`, then `make install`")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR, check=True, capture_output=True, timeout=300
    )


@dataclass(frozen=True)
class Account:
    username: str
    name: str
    hsa_id: str | None = None  # staff


@dataclass
class Provider:
    base: str
    proc: Proc
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET

    @property
    def staff_issuer(self) -> str:
        return f"{self.base}/staff"

    @property
    def eid_issuer(self) -> str:
        return f"{self.base}/eid"

    def issuers(self) -> dict[str, dict[str, Any]]:
        """The SIP_JWT_ISSUERS_FILE entries that trust both issuers (keys found by discovery)."""
        return {
            self.staff_issuer: {"discovery_url": f"{self.staff_issuer}/", "algorithms": ["RS256"]},
            self.eid_issuer: {
                "kind": "citizen", "person_claim": "personal_identity_number",
                "discovery_url": f"{self.eid_issuer}/", "algorithms": ["RS256"],
            },
        }  # fmt: skip

    def issuers_file(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.issuers()))
        return path


@contextmanager
def running_provider(
    tmp: Path, *, redirect_uris: Iterable[str], post_logout_redirect_uris: Iterable[str] = (),
    staff: Iterable[Account] = (), citizens: Iterable[str] = (), audience: str = "sip-suite",
) -> Iterator[Provider]:  # fmt: skip
    """The provider as a process on a free port, with these accounts (password ``test``): staff
    accounts bound to HSA-ids, citizens by personnummer (their username)."""
    ensure_node_modules()
    accounts = {
        "staff": [
            {"username": a.username, "password": PASSWORD, "name": a.name, "hsa_id": a.hsa_id} for a in staff
        ],
        "eid": [{"username": p, "password": PASSWORD, "name": "Test Testsson"} for p in citizens],
    }
    accounts_file = tmp / "oidc-accounts.json"
    accounts_file.write_text(json.dumps(accounts))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    redirects = list(redirect_uris)
    env = {
        **os.environ,
        "OIDC_PORT": str(port), "OIDC_HOST": "127.0.0.1", "OIDC_PUBLIC_URL": base,
        "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URIS": ",".join(redirects),
        "OIDC_POST_LOGOUT_REDIRECT_URIS": ",".join(post_logout_redirect_uris) or ",".join(
            urljoin(u, "/") for u in redirects
        ),
        "OIDC_AUDIENCE": audience, "OIDC_ACCOUNTS_FILE": str(accounts_file),
    }  # fmt: skip
    proc = Proc(
        "oidc-provider", ["node", str(PROVIDER_DIR / "server.js")], env=env,
        log_path=tmp / "oidc-provider.log", health_url=f"{base}/staff/.well-known/openid-configuration",
    ).start(timeout=60)  # fmt: skip
    try:
        yield Provider(base, proc)
    finally:
        proc.stop()


@dataclass(frozen=True)
class Tokens:
    access_token: str
    id_token: str
    raw: dict[str, Any]


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _form_action(html: str, page_url: str, button_id: str) -> str:
    """The action of the form that holds the button (the provider's pages are plain HTML forms)."""
    for form in re.findall(r"<form\b[^>]*>.*?</form>", html, flags=re.S):
        if f'id="{button_id}"' in form:
            action = re.search(r'action="([^"]+)"', form)
            assert action, form
            return urljoin(page_url, action.group(1).replace("&amp;", "&"))
    raise AssertionError(f"no form with #{button_id} on {page_url}:\n{html[:2000]}")


def code_flow(provider: Provider, issuer: str, username: str, redirect_uri: str) -> Tokens:
    """Sign ``username`` in at ``issuer`` the way a browser would (authorization request with PKCE,
    the login form, the consent form, the redirect back with a code) and redeem the code at the token
    endpoint as the confidential client. Driven by httpx; no browser."""
    disco = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "response_type": "code", "client_id": provider.client_id, "redirect_uri": redirect_uri,
        "scope": "openid", "state": state, "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    with httpx.Client(timeout=10, follow_redirects=False) as browser:
        r = browser.get(disco["authorization_endpoint"], params=params)
        code = None
        for _ in range(12):  # follow the redirects and fill in the forms, as a person would
            if r.status_code in (302, 303):
                location = urljoin(str(r.url), r.headers["location"])
                if location.startswith(redirect_uri):
                    query = parse_qs(urlparse(location).query)
                    assert query.get("state") == [state], location
                    assert "code" in query, location
                    code = query["code"][0]
                    break
                r = browser.get(location)
            elif r.status_code == 200 and 'id="signin"' in r.text:
                action = _form_action(r.text, str(r.url), "signin")
                r = browser.post(action, data={"username": username, "password": PASSWORD})
            elif r.status_code == 200 and 'id="approve"' in r.text:
                r = browser.post(_form_action(r.text, str(r.url), "approve"), data={})
            else:
                raise AssertionError(f"unexpected answer from the provider: {r.status_code} {r.text[:1000]}")
        assert code, "the provider did not redirect back with a code"
    token = httpx.post(
        disco["token_endpoint"],
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
              "code_verifier": verifier},
        auth=(provider.client_id, provider.client_secret), timeout=10,
    )  # fmt: skip
    assert token.status_code == 200, token.text
    body = token.json()
    return Tokens(body["access_token"], body["id_token"], body)
