"""Who a token makes the caller (organisation, operator, person) — decided by the issuer's
configuration, never by the token alone — and one authorization rule on every route of every service."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devtools.gendocs import SERVICES
from shared.access import CALLER_KINDS, routes, rule, rule_of
from shared.auth import OPEN_PATHS, TokenRejected, TokenVerifier, mint_person_token, mint_token
from tests.support.personnummer import ADULTS

REPO = Path(__file__).resolve().parents[3]
SECRET = "unit-test-secret-of-at-least-thirty-two-bytes"
VC = "SE2321000016-VC001"


def claims(**extra: object) -> dict[str, object]:
    t = int(time.time())
    return {"sub": "user-1", "aud": "sip-suite", "iat": t, "exp": t + 600, **extra}


@pytest.fixture(scope="module")
def keys() -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return pem, key


def verifier(pem: str) -> TokenVerifier:
    return TokenVerifier(
        issuers={
            "https://idp.region.example": {"public_key_pem": pem, "algorithms": ["ES256"]},
            "https://eid.example": {"public_key_pem": pem, "algorithms": ["ES256"], "kind": "citizen"},
            "https://eid-sub.example": {
                "public_key_pem": pem, "algorithms": ["ES256"], "kind": "citizen", "person_claim": "sub",
            },
        }
    )  # fmt: skip


def test_an_organisation_token_names_the_organisation_and_the_operator_scope_makes_an_operator(keys):
    pem, key = keys
    v = verifier(pem)
    plain = v.verify(jwt.encode(claims(iss="https://idp.region.example", hsa_id=VC), key, "ES256"))
    assert (plain.hsa_id, plain.person_id, plain.operator, plain.is_person) == (VC, None, False, False)
    op = v.verify(
        jwt.encode(
            claims(iss="https://idp.region.example", hsa_id=VC, scope="openid sip:operator"), key, "ES256"
        )
    )
    assert op.operator and op.hsa_id == VC
    roles = v.verify(
        jwt.encode(claims(iss="https://idp.region.example", hsa_id=VC, roles=["operator"]), key, "ES256")
    )
    assert roles.operator


def test_a_citizen_issuer_makes_a_person_from_its_configured_claim(keys):
    pem, key = keys
    v = verifier(pem)
    person = v.verify(
        jwt.encode(claims(iss="https://eid.example", personal_identity_number=ADULTS[0]), key, "ES256")
    )
    assert person.is_person and person.person_id == ADULTS[0] and person.hsa_id is None
    assert person.organisation is None
    by_sub = v.verify(jwt.encode({**claims(iss="https://eid-sub.example"), "sub": ADULTS[1]}, key, "ES256"))
    assert by_sub.person_id == ADULTS[1]


def test_a_citizen_issuer_never_makes_an_organisation_nor_an_organisation_issuer_a_person(keys):
    pem, key = keys
    v = verifier(pem)
    # a citizen issuer's token that also claims an HSA-id is still only the person
    person = v.verify(
        jwt.encode(
            claims(iss="https://eid.example", personal_identity_number=ADULTS[0], hsa_id=VC), key, "ES256"
        )
    )
    assert person.hsa_id is None and person.person_id == ADULTS[0]
    # an organisation issuer's token with a personnummer claim but no HSA-id is refused
    with pytest.raises(TokenRejected, match="hsa_id"):
        v.verify(
            jwt.encode(
                claims(iss="https://idp.region.example", personal_identity_number=ADULTS[0]), key, "ES256"
            )
        )


@pytest.mark.parametrize("value", ["", "19121212121", "191212121213", "not-a-number"])
def test_a_citizen_token_without_a_valid_personnummer_is_refused(keys, value):
    pem, key = keys
    with pytest.raises(TokenRejected, match="personnummer"):
        verifier(pem).verify(
            jwt.encode(claims(iss="https://eid.example", personal_identity_number=value), key, "ES256")
        )


def test_development_tokens_make_either_kind_but_never_both():
    v = TokenVerifier(hs256_secret=SECRET)
    person = v.verify(mint_person_token(SECRET, ADULTS[2]))
    assert person.person_id == ADULTS[2] and person.hsa_id is None
    org = v.verify(mint_token(SECRET, VC, operator=True))
    assert org.hsa_id == VC and org.operator and org.person_id is None
    both = jwt.encode(
        claims(iss="sip-suite-dev", hsa_id=VC, personal_identity_number=ADULTS[2]), SECRET, "HS256"
    )
    with pytest.raises(TokenRejected, match="not both"):
        v.verify(both)


def test_a_rule_names_every_caller_kind_and_refuses_unknown_ones():
    r = rule("x", allowed=["owner"], filtered=["operator"])["x-sip-access"]["callers"]
    assert set(r) == set(CALLER_KINDS)
    assert r["owner"] == "allowed" and r["operator"] == "filtered" and r["stranger"] == "denied"
    with pytest.raises(ValueError):
        rule("x", allowed=["nobody"])
    with pytest.raises(ValueError):
        rule("x", allowed=["owner"], filtered=["owner"])


def test_every_route_of_every_service_has_an_authorization_rule(tmp_path):
    """Enumerated from the apps themselves: a route added later without a rule fails here."""
    import importlib

    missing = []
    count = 0
    for name in SERVICES:
        app_mod = importlib.import_module(f"services.{name}.app")
        settings_mod = importlib.import_module(f"services.{name}.settings")
        cls = next(
            v for k, v in vars(settings_mod).items() if k.endswith("Settings") and k != "ServiceSettings"
        )
        app = app_mod.create_app(
            cls(
                data_dir=str(tmp_path / name), directory_path=str(REPO / "config/directory.yaml"),
                auth_required=True, jwt_hs256_secret=SECRET,
            )
        )  # fmt: skip
        for method, path, route in routes(app):
            count += 1
            if path not in OPEN_PATHS and rule_of(route) is None:
                missing.append(f"{name}: {method} {path}")
        app.state.runtime.engine.sync_engine.dispose()
    assert count > 30
    assert missing == [], f"routes without an authorization rule: {missing}"
