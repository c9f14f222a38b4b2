"""The real OpenID Connect provider process (devtools/oidc-provider, npm ``oidc-provider``): discovery
on both issuers, and tokens obtained through the authorization-code flow with PKCE — the real login and
consent forms, driven by httpx — that the suite's token check (shared/auth.py, issuers by discovery)
accepts as an organisation (staff issuer) and as a person (e-ID issuer), and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import jwt
import pytest

from shared.auth import TokenRejected, TokenVerifier
from tests.support.oidc import Account, Provider, code_flow, running_provider
from tests.support.personnummer import ADULTS

pytestmark = [pytest.mark.e2e]

REDIRECT = "http://127.0.0.1:9/callback"  # never called: the code is read from the redirect itself
OWNER = "SE2321000016-VC001"
PERSON = ADULTS[20]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with running_provider(
        tmp_path_factory.mktemp("oidc"), redirect_uris=[REDIRECT],
        staff=[Account("coordinator", "SIP-samordnare", OWNER)], citizens=[PERSON],
    ) as p:  # fmt: skip
        yield p


def test_discovery_names_each_issuer_and_its_keys(provider: Provider) -> None:
    for issuer in (provider.staff_issuer, provider.eid_issuer):
        doc = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
        assert doc["issuer"] == issuer
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["end_session_endpoint"].startswith(issuer)
        keys = httpx.get(doc["jwks_uri"], timeout=10).json()["keys"]
        assert keys and all(k["kty"] == "RSA" and "d" not in k for k in keys)  # public keys only


def test_a_staff_token_from_the_code_flow_is_an_organisation_caller(provider: Provider) -> None:
    tokens = code_flow(provider, provider.staff_issuer, "coordinator", REDIRECT)
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    assert claims["aud"] == "sip-suite" and claims["hsa_id"] == OWNER, claims
    assert jwt.get_unverified_header(tokens.access_token)["alg"] == "RS256"
    id_claims = jwt.decode(tokens.id_token, options={"verify_signature": False})
    assert id_claims["hsa_id"] == OWNER and id_claims["aud"] == provider.client_id

    verifier = TokenVerifier(issuers=provider.issuers())
    caller = verifier.verify(tokens.access_token)
    assert caller.hsa_id == OWNER and not caller.is_person and caller.issuer == provider.staff_issuer
    # the ID token is not for the suite (its aud is the client): refused as an API token
    with pytest.raises(TokenRejected):
        verifier.verify(tokens.id_token)


def test_a_citizen_token_from_the_code_flow_is_a_person_caller(provider: Provider) -> None:
    tokens = code_flow(provider, provider.eid_issuer, PERSON, REDIRECT)
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    assert claims["personal_identity_number"] == PERSON and claims["aud"] == "sip-suite"
    assert PERSON not in claims["sub"]  # the subject is opaque; the personnummer is in its own claim
    caller = TokenVerifier(issuers=provider.issuers()).verify(tokens.access_token)
    assert caller.person_id == PERSON and caller.hsa_id is None and caller.issuer == provider.eid_issuer
    # trusted as an organisation issuer, the e-ID's token names no organisation: refused
    as_org = {provider.eid_issuer: {"discovery_url": f"{provider.eid_issuer}/"}}
    with pytest.raises(TokenRejected):
        TokenVerifier(issuers=as_org).verify(tokens.access_token)


def test_a_wrong_password_or_a_wrong_client_secret_gets_no_token(provider: Provider) -> None:
    with pytest.raises(AssertionError):
        code_flow(provider, provider.staff_issuer, "nobody", REDIRECT)
    forged = Provider(provider.base, provider.proc, client_secret="wrong")
    with pytest.raises(AssertionError, match="invalid_client"):
        code_flow(forged, provider.staff_issuer, "coordinator", REDIRECT)
