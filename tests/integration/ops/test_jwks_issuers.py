"""Token issuers by JWKS URL or OpenID Connect discovery (shared/auth.py): a real HTTP server on
127.0.0.1 publishes the keys of generated key pairs, the verifier fetches them with PyJWT's PyJWKClient."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from shared.auth import TokenRejected, TokenVerifier, install_auth
from tests.support.personnummer import ADULTS

pytestmark = pytest.mark.store_free

VC = "SE2321000016-VC001"


class IdP:
    """An identity provider's key endpoints: /jwks.json and /.well-known/openid-configuration."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits: dict[str, int] = {}
        self.issuer_override: str | None = None
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.hits[self.path] = idp.hits.get(self.path, 0) + 1
                if self.path == "/jwks.json":
                    body = idp.jwks
                elif self.path == "/.well-known/openid-configuration":
                    body = {"issuer": idp.issuer_override or idp.url, "jwks_uri": f"{idp.url}/jwks.json"}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, kid: str, key: Any, alg: str) -> None:
        algo = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algo.to_jwk(key.public_key()))
        self.jwks = {"keys": [*self.jwks["keys"], {**jwk, "kid": kid, "use": "sig", "alg": alg}]}


@pytest.fixture
def idp() -> Iterator[IdP]:
    server = IdP()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, rsa.RSAPrivateKey]:
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048) for name in ("a", "b", "c")}


def token(key: Any, kid: str | None, iss: str, alg: str = "RS256", **extra: Any) -> str:
    t = int(time.time())
    claims = {"iss": iss, "sub": "user-1", "aud": "sip-suite", "iat": t, "exp": t + 600, **extra}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def test_an_issuer_by_jwks_uri_verifies_its_tokens_and_refuses_keys_it_does_not_publish(idp, rsa_keys):
    idp.publish("k1", rsa_keys["a"], "RS256")
    v = TokenVerifier(issuers={idp.url: {"jwks_uri": f"{idp.url}/jwks.json", "algorithms": ["RS256"]}})
    caller = v.verify(token(rsa_keys["a"], "k1", idp.url, hsa_id=VC))
    assert (caller.hsa_id, caller.issuer, caller.person_id) == (VC, idp.url, None)
    # signed by a key the issuer does not publish: under a published kid, or under its own
    with pytest.raises(TokenRejected, match="signature"):
        v.verify(token(rsa_keys["c"], "k1", idp.url, hsa_id=VC))
    with pytest.raises(TokenRejected, match="not among its issuer's keys"):
        v.verify(token(rsa_keys["c"], "attacker", idp.url, hsa_id=VC))
    with pytest.raises(TokenRejected):
        v.verify(token(rsa_keys["a"], None, idp.url, hsa_id=VC))  # no kid
    # the set is cached: one fetch for all of the above (the unknown kid is within the cooldown)
    assert idp.hits == {"/jwks.json": 1}
    # everything else of the verifier holds: audience, algorithms, alg none
    with pytest.raises(TokenRejected, match="aud"):
        v.verify(token(rsa_keys["a"], "k1", idp.url, hsa_id=VC, aud="another-suite"))
    unsigned = jwt.encode(
        {"iss": idp.url, "sub": "x", "aud": "sip-suite", "hsa_id": VC}, None, algorithm="none"
    )
    with pytest.raises(TokenRejected, match="algorithm"):
        v.verify(unsigned)
    with pytest.raises(TokenRejected, match="algorithm"):  # HS256 with the public JWK as the secret
        v.verify(token("x" * 32, "k1", idp.url, alg="HS256", hsa_id=VC))
    with pytest.raises(TokenRejected, match="organisation"):
        v.verify(token(rsa_keys["a"], "k1", idp.url))  # no hsa_id


def test_key_rotation_a_new_kid_refetches_the_set(idp, rsa_keys):
    idp.publish("2024-a", rsa_keys["a"], "RS256")
    entry = {"jwks_uri": f"{idp.url}/jwks.json", "jwks_refresh_cooldown_seconds": 0.2}
    v = TokenVerifier(issuers={idp.url: entry})
    assert v.verify(token(rsa_keys["a"], "2024-a", idp.url, hsa_id=VC)).hsa_id == VC
    # the issuer rotates: a new key appears in its set, new tokens are signed with it
    idp.publish("2025-b", rsa_keys["b"], "RS256")
    time.sleep(0.3)
    assert v.verify(token(rsa_keys["b"], "2025-b", idp.url, hsa_id=VC)).hsa_id == VC
    assert v.verify(token(rsa_keys["a"], "2024-a", idp.url, hsa_id=VC)).hsa_id == VC  # both, from the cache
    assert idp.hits["/jwks.json"] == 2
    # a kid that never existed: one refetch, then none within the cooldown (no hammering the issuer)
    time.sleep(0.3)
    for _ in range(5):
        with pytest.raises(TokenRejected):
            v.verify(token(rsa_keys["c"], "unknown", idp.url, hsa_id=VC))
    assert idp.hits["/jwks.json"] == 3


def test_an_issuer_by_oidc_discovery_for_citizens(idp):
    key = ec.generate_private_key(ec.SECP256R1())
    idp.publish("eid-1", key, "ES256")
    v = TokenVerifier(
        issuers={
            idp.url: {
                "discovery_url": idp.url,
                "kind": "citizen",
                "person_claim": "pnr",
                "algorithms": ["ES256"],
            }
        }
    )
    caller = v.verify(token(key, "eid-1", idp.url, alg="ES256", pnr=ADULTS[0]))
    assert caller.person_id == ADULTS[0] and caller.hsa_id is None
    assert idp.hits == {"/.well-known/openid-configuration": 1, "/jwks.json": 1}
    # a citizen issuer never makes an organisation caller
    with pytest.raises(TokenRejected, match="personnummer"):
        v.verify(token(key, "eid-1", idp.url, alg="ES256", hsa_id=VC))


def test_a_discovery_document_for_another_issuer_is_not_trusted(idp, rsa_keys):
    idp.publish("k1", rsa_keys["a"], "RS256")
    idp.issuer_override = "https://someone-else.example/"
    v = TokenVerifier(issuers={idp.url: {"discovery_url": f"{idp.url}/.well-known/openid-configuration"}})
    with pytest.raises(TokenRejected, match="no usable keys"):
        v.verify(token(rsa_keys["a"], "k1", idp.url, hsa_id=VC))
    assert "/jwks.json" not in idp.hits


def test_an_unreachable_jwks_refuses_the_token(rsa_keys):
    v = TokenVerifier(issuers={"https://gone.example": {"jwks_uri": "http://127.0.0.1:9/jwks.json"}})
    with pytest.raises(TokenRejected, match="could not be reached"):
        v.verify(token(rsa_keys["a"], "k1", "https://gone.example", hsa_id=VC))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"algorithms": ["RS256"]}, "exactly one of"),
        ({"public_key_pem": "x", "jwks_uri": "https://idp.example/keys"}, "exactly one of"),
        ({"jwks_uri": "http://idp.example/keys"}, "https://"),
        ({"discovery_url": "file:///etc/passwd"}, "https://"),
    ],
)
def test_issuer_entries_are_checked_at_start(entry, message):
    with pytest.raises(ValueError, match=message):
        TokenVerifier(issuers={"https://idp.example": entry})


def test_the_services_verify_jwks_tokens_from_an_issuers_file(idp, rsa_keys, tmp_path: Path):
    idp.publish("k1", rsa_keys["a"], "RS256")
    issuers = tmp_path / "issuers.yaml"
    issuers.write_text(f"{idp.url}:\n  jwks_uri: {idp.url}/jwks.json\n  algorithms: [RS256]\n")
    settings = SimpleNamespace(
        auth_required=True, jwt_hs256_secret=None, jwt_issuers_file=str(issuers), jwt_audience="sip-suite"
    )
    app = FastAPI()
    install_auth(app, settings)

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, Any]:
        return {"hsa_id": request.state.caller.hsa_id}

    client = TestClient(app)
    good = client.get(
        "/whoami", headers={"Authorization": f"Bearer {token(rsa_keys['a'], 'k1', idp.url, hsa_id=VC)}"}
    )
    assert good.status_code == 200 and good.json() == {"hsa_id": VC}
    forged = token(rsa_keys["c"], "k1", idp.url, hsa_id=VC)
    r = client.get("/whoami", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
