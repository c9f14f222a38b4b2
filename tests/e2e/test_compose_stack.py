"""The compose stack as docker compose would run it, without Docker: it comes up from .env.example.

Each container's environment is computed from docker-compose.yml and .env.example with only its
CHANGE_ME values filled (tests/support/compose.py: interpolation, env_file, merges, profiles — the
dev profile that .env.example enables). Then, on this machine:

- the broker: a private RabbitMQ node (tests/support/private_rabbit.py) importing the definitions deploy/rabbitmq/entrypoint.sh renders
  from the rabbitmq container's environment (vhost sip, the least-privilege service users, no guest);
- the database: a private PostgreSQL cluster (passwords required) with deploy/postgres/entrypoint.sh's
  checks passing and deploy/postgres/initdb/ run with the postgres container's environment;
- the dev profile: the token issuer (devtools/dev_issuer.py; discovery + JWKS over local HTTP) and
  the mail sink, started with their compose commands;
- planning, consent and notify as processes with exactly their container environments, the compose
  host names (rabbitmq, postgres, issuer, mailsink), container ports and /app paths mapped to this
  machine — and nothing else.

They answer /healthz and /readyz; a hospital's ADT A03 over MLLP opens a case that the primary care
unit reads with a token from the dev issuer (CLI, as `docker compose exec issuer …`); consent given
with that token sends the invitations to the mail sink; a request without a token is refused.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import httpx
import pytest

from shared.directory import load_directory
from tests.support.compose import Project, project_from_example
from tests.support.compose_pg import password_cluster, run_entrypoint, run_initdb_scripts
from tests.support.infra import REPO, MailSink, Proc, free_port
from tests.support.personnummer import ADULTS
from tests.support.private_pg import pg_bin
from tests.support.private_rabbit import private_rabbit

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.broker,
    pytest.mark.postgres,
    pytest.mark.sqlite_only,  # its databases are its own cluster's whatever SIP_TEST_DATABASE says: once
    pytest.mark.timeout(600),
    pytest.mark.skipif(pg_bin() is None, reason="no PostgreSQL server binaries (initdb, pg_ctl)"),
]

SERVICES = ("planning", "consent", "notify")
VC = "SE2321000016-VC001"
COMPOSE_HOSTS = ("rabbitmq", "postgres", "issuer", "mailsink")


def filled_project() -> Project:
    """.env.example with a fresh strong value for each CHANGE_ME, nothing else changed."""
    example = (REPO / ".env.example").read_text()
    fill = {m: secrets.token_hex(16) for m in re.findall(r"^([A-Z][A-Z0-9_]*)=CHANGE_ME$", example, re.M)}
    return project_from_example(REPO / "docker-compose.yml", REPO / ".env.example", fill)


class HostMap:
    """Container → this machine: host names and container ports to local ports, /app to the checkout,
    the data directory to the test's."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.addr: dict[str, str] = {}  # "host:port" in the containers -> "127.0.0.1:port" here
        self.ports: dict[str, int] = {}

    def add(self, container_addr: str, port: int) -> None:
        self.addr[container_addr] = f"127.0.0.1:{port}"

    def value(self, value: str) -> str:
        for container, here in self.addr.items():
            value = value.replace(f"@{container}/", f"@{here}/").replace(f"//{container}/", f"//{here}/")
        if value.startswith("/app/var"):
            value = str(self.tmp / "var") + value[len("/app/var") :]
        elif value.startswith("/app/"):
            value = str(REPO / value[len("/app/") :])
        return value


def service_env(
    project: Project, name: str, hosts: HostMap, issuers_file: Path
) -> tuple[dict[str, str], int]:
    """The container's environment, mapped. Returns it and the local HTTP port."""
    env = {k: hosts.value(v) for k, v in project.environment(name).items()}
    prefix = name.upper()
    http_port = free_port()
    env[f"{prefix}_HTTP_PORT"] = str(http_port)  # "8080:8080" → a free port here
    env["SIP_HTTP_HOST"] = "127.0.0.1"  # 0.0.0.0 in the container: only this host here
    env["SIP_DATA_DIR"] = str(hosts.tmp / name)  # each container has its own /app/var
    if name == "planning":
        env["PLANNING_MLLP_HOST"] = "127.0.0.1"
        env["PLANNING_MLLP_PORT"] = str(hosts.ports["mllp"])
    if name == "notify":
        assert env["NOTIFY_SMTP_HOST"] == "mailsink" or env["NOTIFY_SMTP_HOST"] == "127.0.0.1"
        env["NOTIFY_SMTP_HOST"] = "127.0.0.1"
        env["NOTIFY_SMTP_PORT"] = str(hosts.ports["smtp"])
    env["SIP_JWT_ISSUERS_FILE"] = str(issuers_file)
    for key, value in env.items():
        for host in COMPOSE_HOSTS:
            assert not re.search(rf"(//|@){host}[:/]", value), f"{name}: {key} still names {host}"
        assert "CHANGE_ME" not in value and not value.startswith("/app/"), (name, key)
    return {"PATH": os.environ["PATH"], **env}, http_port


def command(project: Project, name: str, replace: dict[str, str]) -> list[str]:
    argv = [replace.get(a, a) for a in project.service(name)["command"]]
    return [sys.executable if a == "python" else a for a in argv]


def test_the_compose_stack_from_env_example_comes_up_and_takes_a_discharge(tmp_path: Path) -> None:
    project = filled_project()
    assert {"issuer", "mailsink", *SERVICES} <= set(project.active_services())  # COMPOSE_PROFILES=dev
    hosts = HostMap(tmp_path)
    hosts.ports.update(mllp=free_port(), smtp=free_port(), mail_http=free_port(), issuer=free_port())
    procs: list[Proc] = []

    # ---- RabbitMQ: the definitions as the container's entrypoint renders them ----
    rabbit_env = project.environment("rabbitmq")
    rendered = tmp_path / "rabbit" / "definitions.json"
    r = subprocess.run(
        ["sh", str(REPO / "deploy" / "rabbitmq" / "entrypoint.sh")],
        env={"PATH": os.environ["PATH"], **rabbit_env, "SIP_DEFINITIONS_OUT": str(rendered),
             "SIP_DEFINITIONS_TEMPLATE": str(REPO / "deploy" / "rabbitmq" / "definitions.json")},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    planning_pw = rabbit_env["RABBITMQ_PLANNING_PASSWORD"]

    t0 = time.monotonic()
    # a private node (tests/support/private_rabbit.py) that imports the rendered file at boot, as the
    # container's rabbitmq.conf has it (load_definitions); ready = booted with the definitions loaded
    boot = {"load_definitions": str(rendered)}
    with private_rabbit(boot) as rabbit, password_cluster() as pg:
        asyncio.run(_login(rabbit.port, "planning", planning_pw, "sip"))  # a definitions' user, no guest
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            asyncio.run(_login(rabbit.port, "guest", "guest", "sip"))
        hosts.add("rabbitmq:5672", rabbit.port)
        hosts.add("postgres:5432", pg.port)
        hosts.add("issuer:9000", hosts.ports["issuer"])

        # ---- PostgreSQL: the container's checks and init scripts ----
        pg_env = project.environment("postgres")
        checked = run_entrypoint(pg_env)
        assert checked.returncode == 0, checked.stderr
        init = run_initdb_scripts(pg, pg_env)
        assert init.returncode == 0, init.stderr

        # ---- the dev profile: issuer and mail sink, with their compose commands ----
        issuer_env = {k: hosts.value(v) for k, v in project.environment("issuer").items()}
        assert issuer_env["SIP_DEV_ISSUER_URL"] == "http://issuer:9000"  # the iss, as the services know it
        issuer_env = {"PATH": os.environ["PATH"], **issuer_env}
        issuer = Proc(
            "issuer",
            command(project, "issuer", {"0.0.0.0": "127.0.0.1", "9000": str(hosts.ports["issuer"])}),
            env=issuer_env,
            log_path=tmp_path / "issuer.log",
            health_url=f"http://127.0.0.1:{hosts.ports['issuer']}/healthz",
        )
        mail_dir = tmp_path / "var" / "mail"
        sink = Proc(
            "mailsink",
            command(project, "mailsink", {"0.0.0.0": "127.0.0.1", "1025": str(hosts.ports["smtp"]),
                                          "8025": str(hosts.ports["mail_http"]), "/app/var/mail": str(mail_dir)}),
            env={"PATH": os.environ["PATH"]},
            log_path=tmp_path / "mailsink.log",
            health_url=f"http://127.0.0.1:{hosts.ports['mail_http']}/healthz",
        )  # fmt: skip
        mails = MailSink(hosts.ports["smtp"], hosts.ports["mail_http"], mail_dir, sink)
        # the services' issuers file: config/issuers.dev.yaml with the issuer's host name mapped
        issuers_file = tmp_path / "issuers.dev.yaml"
        dev_issuers = project.environment("planning")["SIP_JWT_ISSUERS_FILE"]
        issuers_text = Path(hosts.value(dev_issuers)).read_text()
        issuers_file.write_text(
            issuers_text.replace("discovery_url: http://issuer:9000/", f"discovery_url: http://127.0.0.1:{hosts.ports['issuer']}/")
        )  # fmt: skip
        try:
            for p in (issuer, sink):
                p.start(timeout=30)
                procs.append(p)

            # ---- the three services with their container environments ----
            urls: dict[str, str] = {}
            started = []
            for name in SERVICES:
                env, port = service_env(project, name, hosts, issuers_file)
                assert env["SIP_AUTH_REQUIRED"] == "true" and "SIP_JWT_HS256_SECRET" not in env
                assert env[f"{name.upper()}_DATABASE_URL"].startswith(f"postgresql://{name}:")
                assert env["SIP_AMQP_URL"].startswith(f"amqp://{name}:")
                urls[name] = f"http://127.0.0.1:{port}"
                proc = Proc(name, [sys.executable, "-m", f"services.{name}"], env=env,
                            log_path=tmp_path / f"{name}.log", health_url=f"{urls[name]}/healthz")  # fmt: skip
                started.append(proc.spawn())
                procs.append(proc)
            for proc in started:
                proc.wait_healthy(90)
            print(f"services healthy after {time.monotonic() - t0:.1f}s")
            for name in SERVICES:
                ready = _wait(lambda n=name: httpx.get(f"{urls[n]}/readyz", timeout=5).status_code == 200, 60)
                assert ready, f"{name} /readyz"

            # ---- a token from the dev issuer, as `docker compose exec issuer … token` prints it ----
            def token(*args: str) -> str:
                out = subprocess.run(
                    [sys.executable, "-m", "devtools.dev_issuer", "token", *args],
                    env=issuer_env,
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
                return out.stdout.strip()

            vc = {"Authorization": f"Bearer {token('--org', VC)}"}
            assert httpx.get(f"{urls['planning']}/cases", timeout=10).status_code == 401
            assert httpx.get(f"{urls['planning']}/cases", timeout=10, headers=vc).status_code == 200

            # ---- a discharge over MLLP (the hospital's path into the stack) reaches a case ----
            pnr = ADULTS[5]
            ack = asyncio.run(_send_adt(hosts.ports["mllp"], pnr, "V-COMPOSE-1"))
            assert b"|AA|" in ack, ack
            case = _wait(
                lambda: [c for c in httpx.get(f"{urls['planning']}/cases", timeout=10, headers=vc).json()
                         if c["episode_id"] == "V-COMPOSE-1"],
                60,
            )  # fmt: skip
            assert case and case[0]["state"] == "consent_pending", case
            case_id = case[0]["id"]

            # ---- consent with the same token; the invitations arrive at the mail sink ----
            pending = _wait(
                lambda: [c for c in httpx.get(f"{urls['consent']}/consent-requests", timeout=10, headers=vc).json()
                         if c["case_id"] == case_id],
                60,
            )  # fmt: skip
            assert pending, "consent received the request over the private broker"
            given = httpx.post(
                f"{urls['consent']}/consents",
                json={"case_id": case_id, "patient_identifier": pnr, "decision": "granted", "method": "oral",
                      "recorded_by_hsa_id": VC},
                headers=vc, timeout=10,
            )  # fmt: skip
            assert given.status_code == 201, given.text
            directory = load_directory(REPO / "config" / "directory.yaml")
            expected = {
                ch.address
                for p in case[0]["participants"]
                for ch in directory.get(p["hsa_id"]).channels  # type: ignore[union-attr]
                if ch.type == "email"
            }
            assert "fast-vardkontakt@vc-sodermalm.example" in expected, expected
            invitations = mails.wait_for(len(expected), timeout=60)
            recipients = sorted(a.addr_spec for m in invitations for a in m["To"].addresses)
            assert recipients == sorted(expected), recipients
            for m in invitations:
                text = f"{m['Subject']}\n{m.get_body(preferencelist=('plain',)).get_content()}"
                assert case[0]["reference"] in text and pnr not in text and pnr[2:] not in text
            print(f"invitations at the mail sink after {time.monotonic() - t0:.1f}s")
            listed = httpx.get(f"http://127.0.0.1:{hosts.ports['mail_http']}/messages", timeout=10).json()
            assert len(listed) >= 1
            # nothing personal in any log
            logs = "".join(p.log() for p in procs)
            assert pnr not in logs and pnr[2:] not in logs
        except BaseException:
            for p in procs:
                print(f"---- {p.name} ----\n{p.log()}")
            raise
        finally:
            for p in reversed(procs):
                p.stop()


async def _login(port: int, user: str, password: str, vhost: str) -> None:
    conn = await aio_pika.connect(f"amqp://{user}:{password}@127.0.0.1:{port}/{vhost}", timeout=10)
    await conn.close()


def _wait(fn, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except httpx.HTTPError:
            last = None
        if last:
            return last
        time.sleep(0.5)
    return last


async def _send_adt(port: int, pnr: str, visit: str) -> bytes:
    from services.planning.intake.mllp import FrameDecoder, frame
    from tests.unit.intake.messages import adt_bytes

    pid3 = f"{pnr}^^^SKV&1.2.752.129.2.1.3.1&ISO^PN"
    raw = adt_bytes("A03", control_id="COMPOSE-1", pid3=pid3, visit=visit, kommun="0180",
                    discharge="20261120093000+0100")  # fmt: skip
    raw = raw.replace(b"SE2321000131-E000000000111", VC.encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame(raw))
    await writer.drain()
    decoder = FrameDecoder()
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), timeout=30)
        assert chunk, "connection closed before the ACK"
        acks = decoder.feed(chunk)
        if acks:
            writer.close()
            return acks[0]
