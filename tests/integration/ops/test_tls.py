"""TLS where the services listen: HTTPS from SIP_TLS_CERTFILE/KEYFILE, and HL7 v2 over MLLP on TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.planning.intake.mllp import FrameDecoder, MLLPServer, frame
from tests.support.infra import Proc, free_port, python_module
from tests.unit.intake.messages import adt_bytes, msa

pytestmark = pytest.mark.store_free


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                       x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.mark.e2e
@pytest.mark.broker
def test_a_service_serves_https_with_its_certificate(tmp_path, amqp_url):
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {**__import__("os").environ, "SIP_AMQP_URL": amqp_url, "SIP_DATA_DIR": str(tmp_path / "data"),
           "SIP_TLS_CERTFILE": str(cert), "SIP_TLS_KEYFILE": str(key), "CONSENT_HTTP_PORT": str(port)}  # fmt: skip
    proc = Proc("consent", python_module("services.consent"), env, tmp_path / "consent.log")
    proc.start()
    try:
        for _ in range(150):
            try:
                r = httpx.get(
                    f"https://127.0.0.1:{port}/healthz", verify=ssl.create_default_context(cafile=str(cert))
                )
                break
            except httpx.HTTPError:
                if proc.popen and proc.popen.poll() is not None:
                    raise AssertionError(proc.log()) from None
                __import__("time").sleep(0.2)
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)  # no plain HTTP on the TLS port
    finally:
        proc.stop()


async def test_mllp_over_tls(tmp_path):
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(raw: bytes) -> bytes:
        from services.planning.intake import parse_adt

        return parse_adt(raw).ack

    server = MLLPServer(handler, "127.0.0.1", 0, ssl=server_ctx)
    await server.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx,
                                                       server_hostname="localhost")  # fmt: skip
        writer.write(frame(adt_bytes(control_id="TLS-1")))
        await writer.drain()
        acks: list[bytes] = []
        decoder = FrameDecoder()
        while not acks:
            acks = decoder.feed(await asyncio.wait_for(reader.read(65536), timeout=10))
        assert msa(acks[0])[1:3] == ["AA", "TLS-1"]
        writer.close()
    finally:
        await server.stop()
