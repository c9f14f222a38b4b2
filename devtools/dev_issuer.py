"""A development token issuer (OIDC-style) for trying the suite: never for production.

    python -m devtools.dev_issuer serve [--host 0.0.0.0] [--port 9000]
    python -m devtools.dev_issuer token --org SE2321000016-VC001
    python -m devtools.dev_issuer token --operator [--org HSA-ID]
    python -m devtools.dev_issuer token --person 191212121212

It makes an RSA key pair once and keeps it in its data directory (``--data-dir`` or
``SIP_DEV_ISSUER_DIR``, default ``var/dev-issuer``; ``key.pem``, mode 0600), and serves over HTTP:

- ``/org/.well-known/openid-configuration`` — the organisation issuer ``<URL>/org``;
- ``/eid/.well-known/openid-configuration`` — the citizen issuer ``<URL>/eid`` (kind: citizen);
- ``/jwks.json`` — the public key (both issuers sign with it).

``<URL>`` is ``--issuer-url`` / ``SIP_DEV_ISSUER_URL`` (default ``http://issuer:9000``, the compose
dev profile's service): the ``iss`` of its tokens and the issuers' names in config/issuers.dev.yaml.
The discovery documents name the JWKS at the address they were fetched from (the request's Host), so
the same issuer answers inside the compose network and on this host's published port.

``token`` prints a signed JWT (``aud`` = ``SIP_JWT_AUDIENCE``, default sip-suite; one hour unless
``--ttl``) as shared/auth.py expects: ``hsa_id`` for an organisation, plus ``scope: sip:operator`` for
an operator (the organisation defaults to the first one in the directory), or the personnummer in
``personal_identity_number`` for a person (from the citizen issuer). It uses the same data directory
as the server (in compose: ``docker compose exec issuer python -m devtools.dev_issuer token …``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_URL = "http://issuer:9000"
ORG, CITIZEN = "org", "eid"
PERSON_CLAIM = "personal_identity_number"
OPERATOR_SCOPE = "sip:operator"
DISCOVERY = "/.well-known/openid-configuration"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Keys:
    """The issuer's RSA key pair in ``directory/key.pem`` (made on first use)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "key.pem"
        if not self.path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            os.replace(tmp, self.path)
        loaded = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        self.private = loaded
        numbers = loaded.public_key().public_numbers()
        self.jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "n": _b64(numbers.n), "e": _b64(numbers.e)}
        # RFC 7638 thumbprint as the kid
        canonical = json.dumps({k: self.jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
        self.jwk["kid"] = self.kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})


def issuer_name(base_url: str, kind: str) -> str:
    return f"{base_url.rstrip('/')}/{kind}"


def mint(
    keys: Keys, base_url: str, *, org: str | None = None, operator: bool = False, person: str | None = None,
    ttl: int = 3600, audience: str = "sip-suite",
) -> str:  # fmt: skip
    now = int(time.time())
    claims: dict[str, Any] = {"aud": audience, "iat": now, "exp": now + ttl, "jti": uuid.uuid4().hex}
    if person is not None:
        claims.update(
            iss=issuer_name(base_url, CITIZEN), sub=f"person-{person[-4:]}", **{PERSON_CLAIM: person}
        )
    else:
        if not org:
            raise ValueError("an organisation token needs --org HSA-ID")
        claims.update(iss=issuer_name(base_url, ORG), sub=f"dev-{org}", hsa_id=org)
        if operator:
            claims["scope"] = OPERATOR_SCOPE
    return keys.sign(claims)


def first_organisation() -> str | None:
    path = Path(os.environ.get("SIP_DIRECTORY_PATH", "config/directory.yaml"))
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return str(doc["organisations"][0]["hsa_id"])
    except (OSError, KeyError, IndexError, TypeError):
        return None


def make_server(keys: Keys, base_url: str, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            body: Any
            if path == "/jwks.json":
                body = keys.jwks()
            elif path == "/healthz":
                body = {"status": "ok"}
            elif path in (
                f"/{ORG}/.well-known/openid-configuration",
                f"/{CITIZEN}/.well-known/openid-configuration",
            ):
                kind = path.split("/")[1]
                here = f"http://{self.headers.get('Host') or f'{host}:{port}'}"
                body = {
                    "issuer": issuer_name(base_url, kind),
                    "jwks_uri": f"{here}/jwks.json",
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                }
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.dev_issuer", description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("SIP_DEV_ISSUER_DIR", "var/dev-issuer"))
    ap.add_argument("--issuer-url", default=os.environ.get("SIP_DEV_ISSUER_URL", DEFAULT_URL))
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the discovery documents and the JWKS")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9000)
    token = sub.add_parser("token", help="print a signed token")
    token.add_argument("--org", help="the calling organisation's HSA-id")
    token.add_argument("--operator", action="store_true", help="an operator (scope sip:operator)")
    token.add_argument("--person", help="a person's personnummer (a citizen token)")
    token.add_argument("--ttl", type=int, default=3600)
    a = ap.parse_args(argv)
    keys = Keys(Path(a.data_dir))
    if a.command == "serve":
        server = make_server(keys, a.issuer_url, a.host, a.port)
        print(f"dev issuer {a.issuer_url}/{ORG} and /{CITIZEN} on http://{a.host}:{a.port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    if a.person and (a.org or a.operator):
        ap.error("--person is a citizen token: not with --org or --operator")
    org = a.org or (first_organisation() if a.operator else None)
    if not a.person and not org:
        ap.error("give --org HSA-ID, --operator or --person PERSONNUMMER")
    audience = os.environ.get("SIP_JWT_AUDIENCE", "sip-suite")
    print(
        mint(keys, a.issuer_url, org=org, operator=a.operator, person=a.person, ttl=a.ttl, audience=audience)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
