"""devtools/dev_issuer.py: its tokens verify through config/issuers.dev.yaml (OIDC discovery + JWKS over
real local HTTP), and shared/auth.py takes plain-http key URLs off the loopback only when an issuer
entry opts in with ``insecure_http: true``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devtools import dev_issuer
from shared.auth import TokenRejected, TokenVerifier, check_issuers
from tests.support.infra import REPO, free_port
from tests.support.personnummer import ADULT as TOLVAN

ISSUERS_DEV = REPO / "config" / "issuers.dev.yaml"
VC = "SE2321000016-VC001"


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[dev_issuer.Keys, int]]:
    keys = dev_issuer.Keys(tmp_path / "issuer")
    port = free_port()
    server = dev_issuer.make_server(keys, dev_issuer.DEFAULT_URL, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield keys, port
    finally:
        server.shutdown()
        server.server_close()


def local_issuers(port: int) -> dict:
    """config/issuers.dev.yaml with the compose host name `issuer:9000` mapped to this machine."""
    text = ISSUERS_DEV.read_text().replace("http://issuer:9000/org/", f"http://127.0.0.1:{port}/org/")
    text = text.replace("http://issuer:9000/eid/", f"http://127.0.0.1:{port}/eid/")
    return yaml.safe_load(text)


def test_the_key_pair_is_made_once_and_kept_private(tmp_path: Path) -> None:
    a = dev_issuer.Keys(tmp_path / "d")
    b = dev_issuer.Keys(tmp_path / "d")
    assert a.kid == b.kid
    assert (tmp_path / "d" / "key.pem").stat().st_mode & 0o077 == 0
    assert dev_issuer.Keys(tmp_path / "other").kid != a.kid


def test_dev_issuer_tokens_verify_through_discovery_and_jwks(issuer) -> None:
    keys, port = issuer
    verifier = TokenVerifier(issuers=local_issuers(port))
    base = dev_issuer.DEFAULT_URL
    org = verifier.verify(dev_issuer.mint(keys, base, org=VC))
    assert (org.hsa_id, org.operator, org.person_id) == (VC, False, None)
    op = verifier.verify(dev_issuer.mint(keys, base, org=VC, operator=True))
    assert op.operator is True and op.hsa_id == VC
    person = verifier.verify(dev_issuer.mint(keys, base, person=TOLVAN))
    assert person.hsa_id is None and person.person_id == TOLVAN


def test_tokens_of_another_key_or_audience_are_refused(issuer, tmp_path: Path) -> None:
    keys, port = issuer
    verifier = TokenVerifier(issuers=local_issuers(port))
    stranger = dev_issuer.Keys(tmp_path / "stranger")
    with pytest.raises(TokenRejected):
        verifier.verify(dev_issuer.mint(stranger, dev_issuer.DEFAULT_URL, org=VC))
    with pytest.raises(TokenRejected):
        verifier.verify(dev_issuer.mint(keys, dev_issuer.DEFAULT_URL, org=VC, audience="other"))


def test_the_cli_prints_a_token(issuer, tmp_path: Path, capsys) -> None:
    keys, port = issuer
    data_dir = str(keys.path.parent)
    assert dev_issuer.main(["--data-dir", data_dir, "token", "--operator"]) == 0
    caller = TokenVerifier(issuers=local_issuers(port)).verify(capsys.readouterr().out.strip())
    assert caller.operator and caller.hsa_id
    with pytest.raises(SystemExit):
        dev_issuer.main(["--data-dir", data_dir, "token", "--person", TOLVAN, "--org", VC])


def test_plain_http_off_the_loopback_needs_the_explicit_opt_in() -> None:
    dev = yaml.safe_load(ISSUERS_DEV.read_text())
    check_issuers(dev)  # the dev file opts in
    for entry in dev.values():
        assert entry["insecure_http"] is True
    without = {k: {kk: vv for kk, vv in v.items() if kk != "insecure_http"} for k, v in dev.items()}
    with pytest.raises(ValueError, match="insecure_http"):
        check_issuers(without)
    with pytest.raises(ValueError, match="true or false"):
        check_issuers(
            {"http://issuer:9000/org": {"discovery_url": "http://issuer:9000/", "insecure_http": "yes"}}
        )
    # the loopback stays allowed without it; https is always
    check_issuers(
        {"a": {"jwks_uri": "http://127.0.0.1:9/jwks.json"}, "b": {"jwks_uri": "https://idp.example/k"}}
    )
