"""No container engine runs here, so the compose file, Dockerfile and env example are checked as data."""

import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from services.consent.settings import ConsentSettings
from services.notify.settings import NotifySettings
from services.planning.settings import PlanningSettings
from services.web.settings import WebSettings
from shared.contracts import ConsentDecisionRequested
from shared.messaging import declare_service_topology
from shared.topology import (
    DEFAULT_RETRY_DELAY_SECONDS,
    PUBLICATIONS,
    REPLY_QUEUES,
    REQUESTS,
    SUBSCRIPTIONS,
    decision_queue,
    reply_queues_of,
    subscriptions_of,
)

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"planning": 8080, "consent": 8081, "notify": 8082}
RABBIT = REPO / "deploy" / "rabbitmq"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_broker_database_and_three_services_with_healthchecks():
    c = compose()["services"]
    assert set(c) >= {"rabbitmq", "postgres", *SERVICES}
    assert "management" in c["rabbitmq"]["image"]
    assert "rabbitmq-diagnostics" in " ".join(c["rabbitmq"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(c["postgres"]["healthcheck"]["test"])
    for name, port in SERVICES.items():
        svc = c[name]
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert svc["depends_on"] == {
            "rabbitmq": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
        assert f"{port}:{port}" in svc["ports"]
        assert f"127.0.0.1:{port}/healthz" in " ".join(svc["healthcheck"]["test"])
        assert svc["restart"] == "unless-stopped"
        env = svc["environment"]
        assert env[f"{name.upper()}_DATABASE_URL"].endswith(f"@postgres:5432/{name}")
        assert env["SIP_HTTP_HOST"] == "0.0.0.0"


def test_compose_holds_no_secrets():
    text = (REPO / "docker-compose.yml").read_text()
    # every credential is a ${VAR} reference that .env must provide
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if any(w in key for w in ("PASS", "USER", "SECRET", "TOKEN")):
                assert str(value).startswith("${"), (name, key)
            for user, pw in re.findall(r"://([^:/@]+):([^@/]+)@", str(value)):
                # a service's broker user and database role are its own name (public: the definitions,
                # deploy/postgres/initdb/10-service-roles.sh)
                own = key in ("SIP_AMQP_URL", f"{name.upper()}_DATABASE_URL") and user == name
                assert user.startswith("${") or own, (name, key)
                assert pw.startswith("${"), (name, key)
    assert "guest" not in text


def test_each_service_connects_as_its_own_database_role_made_by_the_init_script():
    c = compose()["services"]
    pg = c["postgres"]
    assert pg["entrypoint"] == ["sh", "/etc/sip-postgres/entrypoint.sh"]
    assert pg["command"] == ["docker-entrypoint.sh", "postgres"]  # the image's own, after ours
    assert "./deploy/postgres/initdb:/docker-entrypoint-initdb.d:ro" in pg["volumes"]
    assert "./deploy/postgres/entrypoint.sh:/etc/sip-postgres/entrypoint.sh:ro" in pg["volumes"]
    assert not (REPO / "deploy" / "postgres-init.sql").exists()
    script = (REPO / "deploy" / "postgres" / "initdb" / "10-service-roles.sh").read_text()
    assert "for service in planning consent notify" in script
    assert "REVOKE ALL ON DATABASE" in script and "NOSUPERUSER" in script
    for name in SERVICES:
        var = f"POSTGRES_{name.upper()}_PASSWORD"
        assert pg["environment"][var] == f"${{{var}:?set {var} in .env}}"
        url = c[name]["environment"][f"{name.upper()}_DATABASE_URL"]
        assert url == f"postgresql://{name}:${{{var}}}@postgres:5432/{name}"


def test_images_are_overridable_for_digest_pinning_and_rabbitmq_is_4x():
    c = compose()["services"]
    for service, var in (("rabbitmq", "SIP_RABBITMQ_IMAGE"), ("postgres", "SIP_POSTGRES_IMAGE"),
                         ("prometheus", "SIP_PROMETHEUS_IMAGE"), ("alertmanager", "SIP_ALERTMANAGER_IMAGE"),
                         ("grafana", "SIP_GRAFANA_IMAGE"), ("planning", "SIP_IMAGE")):  # fmt: skip
        image = c[service]["image"]
        assert re.fullmatch(rf"\$\{{{var}:-[a-z0-9./-]+:[A-Za-z0-9._-]+\}}", image), (service, image)
        assert not image.endswith(":latest}") or service == "planning", image  # pinned by tag at least
    assert c["rabbitmq"]["image"] == "${SIP_RABBITMQ_IMAGE:-rabbitmq:4.1-management}"


def test_profiles_dev_and_monitoring():
    c = compose()["services"]
    assert {n for n, s in c.items() if not s.get("profiles")} == {"rabbitmq", "postgres", *SERVICES, "web"}
    assert c["issuer"]["profiles"] == c["mailsink"]["profiles"] == ["dev"]
    assert c["issuer"]["command"][:3] == ["python", "-m", "devtools.dev_issuer"]
    assert c["mailsink"]["command"][:3] == ["python", "-m", "devtools.mailsink"]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert c[name]["profiles"] == ["monitoring"]
    mounts = [v.split(":")[0] for n in ("prometheus", "alertmanager", "grafana") for v in c[n]["volumes"]]
    for path in ("./deploy/prometheus/prometheus.yml", "./deploy/prometheus/alerts.yml",
                 "./deploy/alertmanager/alertmanager.yml", "./deploy/grafana/provisioning",
                 "./deploy/grafana/dashboards"):  # fmt: skip
        assert path in mounts, path
    env = _env_example()
    assert env["COMPOSE_PROFILES"] == "dev"
    issuers = yaml.safe_load((REPO / "config" / "issuers.dev.yaml").read_text())
    assert env["SIP_JWT_ISSUERS_FILE"] == "/app/config/issuers.dev.yaml"
    assert "./config/issuers.dev.yaml:/app/config/issuers.dev.yaml:ro" in c["planning"]["volumes"]
    assert c["issuer"]["environment"]["SIP_DEV_ISSUER_URL"] == "http://issuer:9000"
    assert set(issuers) == {"http://issuer:9000/org", "http://issuer:9000/eid"}


def test_the_web_service_in_compose_reads_the_apis_inside_the_network():
    web = compose()["services"]["web"]
    assert web["command"] == ["python", "-m", "services.web"]
    env = web["environment"]
    assert (env["WEB_PLANNING_URL"], env["WEB_CONSENT_URL"], env["WEB_NOTIFY_URL"]) == (
        "http://planning:8080", "http://consent:8081", "http://notify:8082",
    )  # fmt: skip
    assert env["WEB_SESSION_COOKIE_SECURE"] == "true" and env["SIP_WEB_DEV_SIGNIN"] == "false"
    assert set(web["depends_on"]) == set(SERVICES) and "8083:8083" in web["ports"]
    planning = compose()["services"]["planning"]["environment"]
    assert planning["PLANNING_WEB_BASE_URL"] == env["WEB_PUBLIC_BASE_URL"]  # the mails' links open the pages


def test_dockerfile_is_slim_non_root_and_locked():
    text = (REPO / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)  # numeric (hadolint DL3066), not root
    assert "uv sync --frozen --no-dev" in text


def test_env_example_lists_every_setting():
    text = (REPO / ".env.example").read_text()
    keys = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    for prefix, cls in (
        ("CONSENT", ConsentSettings),
        ("PLANNING", PlanningSettings),
        ("NOTIFY", NotifySettings),
        ("WEB", WebSettings),
    ):
        for field in cls.model_fields:
            if field == "dev_signin":
                assert "SIP_WEB_DEV_SIGNIN" in keys
                continue
            assert f"SIP_{field.upper()}" in keys or f"{prefix}_{field.upper()}" in keys, (prefix, field)
    for required in ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert required in keys
    for service in SERVICES:
        assert re.search(rf"^RABBITMQ_{service.upper()}_PASSWORD=CHANGE_ME$", text, re.M)
        assert re.search(rf"^POSTGRES_{service.upper()}_PASSWORD=CHANGE_ME$", text, re.M)


# ---- RabbitMQ: deploy/rabbitmq -------------------------------------------------------------------


def definitions() -> dict:
    return json.loads((RABBIT / "definitions.json").read_text())


def generator():
    spec = importlib.util.spec_from_file_location("generate_definitions", RABBIT / "generate_definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_rabbitmq_loads_the_definitions_and_each_service_has_its_own_user():
    c = compose()["services"]
    rabbit = c["rabbitmq"]
    assert rabbit["entrypoint"] == ["sh", "/etc/sip-rabbitmq/entrypoint.sh"]
    assert rabbit["command"] == ["docker-entrypoint.sh", "rabbitmq-server"]  # the image's own, after ours
    assert "./deploy/rabbitmq:/etc/sip-rabbitmq:ro" in rabbit["volumes"]
    assert "./deploy/rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/20-sip.conf:ro" in rabbit["volumes"]
    assert not any(k.startswith("RABBITMQ_DEFAULT_") for k in rabbit["environment"])  # no default user
    conf = (RABBIT / "rabbitmq.conf").read_text()
    [loaded] = re.findall(r"^load_definitions\s*=\s*(\S+)$", conf, re.M)
    entrypoint = (RABBIT / "entrypoint.sh").read_text()
    assert f"OUT=${{SIP_DEFINITIONS_OUT:-{loaded}}}" in entrypoint  # what the entrypoint renders
    retry_ttls = {
        q["arguments"]["x-message-ttl"] for q in definitions()["queues"] if q["name"].endswith(".retry")
    }
    for name in SERVICES:
        env = c[name]["environment"]
        var = f"RABBITMQ_{name.upper()}_PASSWORD"
        assert env["SIP_AMQP_URL"] == f"amqp://{name}:${{{var}}}@rabbitmq:5672/sip"
        assert rabbit["environment"][var] == f"${{{var}:?set {var} in .env}}"
        # the services redeclare the retry queues: their TTL must be the definitions' one
        assert retry_ttls == {int(float(env["SIP_RETRY_DELAY_SECONDS"]) * 1000)}


def test_definitions_are_generated_from_the_topology_and_hold_no_password():
    text = (RABBIT / "definitions.json").read_text()
    assert text == generator().render(), "regenerate: python deploy/rabbitmq/generate_definitions.py"
    d = json.loads(text)
    assert d["vhosts"] == [{"name": "sip"}]
    assert {u["name"] for u in d["users"]} == {"@ADMIN_USER@", *SERVICES}
    for u in d["users"]:
        assert set(u) == {"name", "password_hash", "hashing_algorithm", "tags"}  # no plain "password"
        assert re.fullmatch(r"@[A-Z]+_PASSWORD_HASH@", u["password_hash"])
        assert u["tags"] == ("administrator" if u["name"] == "@ADMIN_USER@" else "")
    # every queue of the topology is there, quorum, with the arguments the services declare
    queues = {q["name"]: q for q in d["queues"]}
    assert len(queues) == 3 * len(SUBSCRIPTIONS)
    for q in queues.values():
        assert q["vhost"] == "sip" and q["durable"] and q["arguments"]["x-queue-type"] == "quorum"
    # RabbitMQ 4.x gives every quorum queue a default delivery limit of 20 (and drops what exceeds it
    # in a queue without a dead-letter exchange): the work queues declare theirs (the topology), the
    # retry queues and DLQs get an explicit, large one from a policy — valid on 3.10 as on 4.x
    [policy] = d["policies"]
    assert policy["vhost"] == "sip" and policy["apply-to"] == "queues"  # 3.10 knows no quorum_queues
    limit = policy["definition"]["delivery-limit"]
    assert isinstance(limit, int) and limit >= 100_000
    assert set(policy["definition"]) == {"delivery-limit"}
    for q in queues.values():
        covered = re.search(policy["pattern"], q["name"]) is not None
        declares = "x-delivery-limit" in q["arguments"]
        assert covered != declares, q["name"]  # every queue has an explicit limit, from exactly one place
        assert covered == q["name"].endswith((".retry", ".dlq")), q["name"]


class _RecordingBroker:
    """Records what declare_service_topology asks of the broker, by the permissions RabbitMQ checks
    for it on an empty vhost (where each declare creates)."""

    def __init__(self) -> None:
        self.configure: set[str] = set()  # exchange.declare / queue.declare
        self.write: set[str] = set()  # queue.bind: the queue; creating a queue: its dead-letter exchange
        self.read: set[str] = set()  # queue.bind: the source exchange; creating a queue with a DLX: it

    async def declare_exchange(self, exchange):
        self.configure.add(exchange.name)
        return exchange

    async def declare_queue(self, queue):
        self.configure.add(queue.name)
        args = queue.arguments or {}
        if "x-dead-letter-exchange" in args:
            self.read.add(queue.name)
            self.write.add(args["x-dead-letter-exchange"] or "amq.default")
        recorder = self

        class _Queue:
            async def bind(self, source, routing_key=None):
                recorder.write.add(queue.name)
                recorder.read.add(source.name)

        return _Queue()


def _needs(service: str) -> dict[str, set[str]]:
    """What ``service`` does on the broker, worked out from the code, not from the definitions."""
    rec = _RecordingBroker()
    asyncio.run(declare_service_topology(rec, service, DEFAULT_RETRY_DELAY_SECONDS))  # at start
    consumes = {s.queue_name for s in subscriptions_of(service)}
    publishes = {c.exchange for c in PUBLICATIONS[service]} | {f"{service}.dlx", "amq.default"}
    configure, write, read = set(rec.configure), set(rec.write), set(rec.read)
    for reply in reply_queues_of(service):  # its request/reply queues: declared, bound, consumed by it
        configure.add(reply.queue_name)
        write.add(reply.queue_name)
        read |= {reply.queue_name, reply.request.exchange}
        consumes.add(reply.queue_name)
    publishes |= {c.exchange for c in REQUESTS.get(service, ())}  # it asks over request/reply
    return {"configure": configure, "write": write | publishes, "read": read | consumes, "consumes": consumes}


def _permissions(service: str) -> dict[str, str]:
    [p] = [p for p in definitions()["permissions"] if p["user"] == service]
    assert p["vhost"] == "sip"
    return p


def _matches(regex: str, name: str) -> bool:
    return re.search(regex, name) is not None  # RabbitMQ searches (re:run), it does not fullmatch


@pytest.mark.parametrize("service", list(SERVICES))
def test_each_service_may_do_exactly_what_the_topology_needs(service):
    perms, needs = _permissions(service), _needs(service)
    others = [s for s in SERVICES if s != service]
    for kind in ("configure", "write", "read"):
        for name in needs[kind]:
            assert _matches(perms[kind], name), (service, kind, name)
        for name in ("evil.queue", "evil.exchange", "amq.rabbitmq.trace", f"x{service}.dlx", ""):
            assert not _matches(perms[kind], name), (service, kind, name)
        for name in list(needs[kind])[:5]:  # anchored at both ends
            assert not _matches(perms[kind], name + "x") and not _matches(perms[kind], "x" + name)
    # no name of another service's queues in any of configure/write/read: it cannot declare, delete,
    # bind, consume or purge them
    for other in others:
        for sub in subscriptions_of(other):
            for name in (sub.queue_name, sub.dlq_name, sub.retry_queue_name):
                for kind in ("configure", "write", "read"):
                    assert not _matches(perms[kind], name), (service, kind, name)
        assert not _matches(perms["configure"], f"{other}.dlx")
    # read: its own work queues (consumed) and retry queues (created with a dead-letter exchange), no DLQ
    for sub in SUBSCRIPTIONS:
        assert not _matches(perms["read"], sub.dlq_name)
    read_queues = {q["name"] for q in definitions()["queues"] if _matches(perms["read"], q["name"])}
    own_retry = {s.retry_queue_name for s in subscriptions_of(service)}
    assert read_queues == (needs["consumes"] - {r.queue_name for r in REPLY_QUEUES}) | own_retry
    # write to exchanges: only where it publishes (other services' events, commands and DLXs refused)
    exchanges = {e["name"] for e in definitions()["exchanges"]} | {"amq.default", "amq.topic"}
    written = {e for e in exchanges if _matches(perms["write"], e)}
    assert written == needs["write"] & exchanges
    for other in others:
        assert f"{other}.dlx" not in written
    # configure: the suite's names only; a request/reply queue only for its owner (consent's decide queue)
    for reply in REPLY_QUEUES:
        for kind in ("configure", "write", "read"):
            assert _matches(perms[kind], reply.queue_name) is (reply.owner == service), (kind, reply)
    assert not _matches(perms["configure"], "amq.default")
    # nothing beyond what it needs, on the names the broker knows
    known = {q["name"] for q in definitions()["queues"]} | exchanges | {r.queue_name for r in REPLY_QUEUES}
    for kind in ("configure", "write", "read"):
        assert {n for n in known if _matches(perms[kind], n)} == needs[kind] & known, (service, kind)


def test_request_reply_queues_are_a_table_of_the_topology():
    """Each request of REQUESTS has exactly one owner answering it (REPLY_QUEUES): consent answers
    planning's decisions on ``consent.consent.decide.v1``, which only consent declares — not the
    pre-created topology (definitions.json, where an earlier version's classic queue could not be
    replaced)."""
    assert [(r.owner, r.request, r.queue) for r in REPLY_QUEUES] == [
        ("consent", ConsentDecisionRequested, decision_queue)
    ]
    assert reply_queues_of("planning") == reply_queues_of("notify") == ()
    requests = [c for contracts in REQUESTS.values() for c in contracts]
    assert sorted(r.request.routing_key for r in REPLY_QUEUES) == sorted(c.routing_key for c in requests)
    for reply in REPLY_QUEUES:
        queue = reply.queue()
        assert queue.name == reply.queue_name == "consent.consent.decide.v1"
        assert queue.routing_key == reply.request.routing_key
        assert reply.owner not in REQUESTS  # nobody asks itself
        assert reply.queue_name not in {q["name"] for q in definitions()["queues"]}
    for service in SERVICES:  # each service declares at start exactly the request/reply queues it owns
        rec = _RecordingBroker()
        asyncio.run(declare_service_topology(rec, service, DEFAULT_RETRY_DELAY_SECONDS))
        owned = {r.queue_name for r in REPLY_QUEUES if r.owner == service}
        assert rec.configure & {r.queue_name for r in REPLY_QUEUES} == owned, service


def _run_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "SIP_DEFINITIONS_TEMPLATE": str(RABBIT / "definitions.json"),
        "SIP_DEFINITIONS_OUT": str(tmp_path / "out" / "definitions.json"),
        "RABBITMQ_ADMIN_USER": "ops",
        "RABBITMQ_ADMIN_PASSWORD": "a" * 20,
        "RABBITMQ_PLANNING_PASSWORD": "p" * 20,
        "RABBITMQ_CONSENT_PASSWORD": "c" * 20,
        "RABBITMQ_NOTIFY_PASSWORD": "n" * 20,
    }
    return subprocess.run(
        ["sh", str(RABBIT / "entrypoint.sh")], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_entrypoint_renders_rabbitmq_sha256_hashes_and_no_plain_password(tmp_path):
    r = _run_entrypoint(tmp_path, RABBITMQ_PLANNING_PASSWORD="planning-Secret_1.x~")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "out" / "definitions.json").read_text()
    assert "planning-Secret_1.x~" not in text and "@" not in text
    users = {u["name"]: u for u in json.loads(text)["users"]}
    assert set(users) == {"ops", *SERVICES}
    for name, pw in (("ops", "a" * 20), ("planning", "planning-Secret_1.x~"), ("notify", "n" * 20)):
        raw = base64.b64decode(users[name]["password_hash"])  # rabbit_password_hashing_sha256
        assert raw[4:] == hashlib.sha256(raw[:4] + pw.encode()).digest()
    permissions = {p["user"] for p in json.loads(text)["permissions"]}
    assert permissions == {"ops", *SERVICES}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RABBITMQ_CONSENT_PASSWORD": "CHANGE_ME"}, "placeholder"),
        ({"RABBITMQ_NOTIFY_PASSWORD": ""}, "not set"),
        ({"RABBITMQ_PLANNING_PASSWORD": "short"}, "shorter"),
        ({"RABBITMQ_PLANNING_PASSWORD": "with@and/in-a-url-1234"}, "amqp://"),
        ({"RABBITMQ_ADMIN_USER": "planning"}, "service"),
    ],
)
def test_entrypoint_refuses_placeholders_and_unsafe_values(tmp_path, env, message):
    r = _run_entrypoint(tmp_path, **env)
    assert r.returncode != 0 and message in r.stderr
    assert not (tmp_path / "out" / "definitions.json").exists()


def test_make_bootstraps_the_same_uv_as_the_image_and_never_the_system_pip():
    pinned = re.search(r"pip install --no-cache-dir uv==(\S+)", (REPO / "Dockerfile").read_text())
    bootstrap = re.search(r'UV_VERSION = .*"([0-9.]+)"', (REPO / "scripts" / "bootstrap-uv.py").read_text())
    assert pinned and bootstrap and pinned.group(1) == bootstrap.group(1)
    makefile = (REPO / "Makefile").read_text()
    assert "python3 -m pip" not in makefile and "--break-system-packages" not in makefile


# ---- containers get container-correct values; the build context and the host stay closed ----------


def _env_example() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", (REPO / ".env.example").read_text(), re.M)
    return dict(pairs)


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} (the subset the compose file uses)."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        got = env.get(name, "")
        if op == ":-" and not got:
            return arg
        if op == ":?" and not got:
            raise AssertionError(f"{name} is required: {arg}")
        return got

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", one, value)


def _container_env(service: str, env: dict[str, str]) -> dict[str, str]:
    """What a service's container sees: .env (here .env.example) under the compose file's environment."""
    svc = compose()["services"][service]
    assert svc["env_file"] == [".env"]
    return {**env, **{k: _interpolate(str(v), env) for k, v in svc["environment"].items()}}


LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


@pytest.mark.parametrize("env", [{}, "example"], ids=["unset", "env-example"])
def test_infrastructure_ports_are_bound_to_this_host_only(env):
    env = _env_example() if env == "example" else {}
    c = compose()["services"]
    published = {
        name: [_interpolate(p, env) for p in c[name].get("ports", [])] for name in ("rabbitmq", "postgres")
    }
    assert sorted(p.split(":", 1)[1] for p in published["rabbitmq"]) == ["15672:15672", "5672:5672"]
    assert [p.split(":", 1)[1] for p in published["postgres"]] == ["5432:5432"]
    for ports in published.values():
        for p in ports:
            assert p.startswith("127.0.0.1:"), p


def test_containers_are_not_pointed_at_their_own_loopback():
    env = _env_example()
    # .env.example is make run's: it names this host's 127.0.0.1 for what the services reach
    assert env["NOTIFY_SMTP_HOST"] == "127.0.0.1" and "127.0.0.1" in env["PLANNING_PUBLIC_BASE_URL"]
    for service in SERVICES:
        seen = _container_env(service, env)
        for key, value in seen.items():
            mine = key.startswith((f"{service.upper()}_", "SIP_"))  # the settings this service reads
            reaches = mine and key.endswith(("_AMQP_URL", "_DATABASE_URL", "_SMTP_HOST", "_GATEWAY_URL"))
            if reaches and value:
                host = re.sub(r"^[a-z+]+://([^@/]*@)?", "", value).split("/")[0].rsplit(":", 1)[0]
                assert host not in LOOPBACK, (service, key, value)
    # what participants are sent: the suite's public address, one setting for the containers
    assert _container_env("planning", env)["PLANNING_PUBLIC_BASE_URL"] == env["SIP_PUBLIC_BASE_URL"]
    case_url = _container_env("notify", env)["NOTIFY_CASE_URL_TEMPLATE"]
    assert case_url == env["SIP_PUBLIC_BASE_URL"] + "/cases/{case_id}"
    notify = compose()["services"]["notify"]
    assert _container_env("notify", env)["NOTIFY_SMTP_HOST"] == "mailsink"  # the dev profile's sink
    assert "host.docker.internal:host-gateway" in notify["extra_hosts"]
    assert _container_env("notify", {})["NOTIFY_SMTP_HOST"] == "host.docker.internal"  # default


def test_the_build_context_leaves_out_history_environments_data_and_caches():
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in (".git", ".venv", ".venv-bootstrap", "var", ".env", ".pytest_cache", ".ruff_cache",
                 ".mypy_cache", ".hypothesis", "**/__pycache__"):  # fmt: skip
        assert name in ignored, name
    # everything the image copies is still in the context
    copied = re.findall(r"^COPY (?!--from)(.+) \./?\S*$", (REPO / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert source not in ignored and (REPO / source).exists(), source
