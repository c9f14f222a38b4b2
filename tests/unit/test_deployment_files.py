"""No container engine runs here, so the compose file, Dockerfile and env example are checked as data."""

import re
from pathlib import Path

import yaml

from services.consent.settings import ConsentSettings
from services.notify.settings import NotifySettings
from services.planning.settings import PlanningSettings

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"planning": 8080, "consent": 8081, "notify": 8082}


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
                assert user.startswith("${") and pw.startswith("${"), (name, key)
    assert "guest" not in text


def test_each_service_database_is_created():
    sql = (REPO / "deploy" / "postgres-init.sql").read_text()
    for name in SERVICES:
        assert f"CREATE DATABASE {name};" in sql


def test_dockerfile_is_slim_non_root_and_locked():
    text = (REPO / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert re.search(r"^USER sip$", text, re.M)
    assert "uv sync --frozen --no-dev" in text


def test_env_example_lists_every_setting():
    text = (REPO / ".env.example").read_text()
    keys = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    for prefix, cls in (
        ("CONSENT", ConsentSettings),
        ("PLANNING", PlanningSettings),
        ("NOTIFY", NotifySettings),
    ):
        for field in cls.model_fields:
            assert f"SIP_{field.upper()}" in keys or f"{prefix}_{field.upper()}" in keys, (prefix, field)
    for required in ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert required in keys
