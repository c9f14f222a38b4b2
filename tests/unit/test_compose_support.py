"""tests/support/compose.py computes a service's environment as docker compose does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.compose import ComposeError, Project, interpolate, parse_env_file, project_from_example
from tests.support.infra import REPO

ENV = {"SET": "value", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$SET/${SET}", "value/value"),
        ("${UNSET}", ""),
        ("${SET:-d} ${EMPTY:-d} ${UNSET:-d}", "value d d"),
        ("${SET-d} ${EMPTY-d} ${UNSET-d}", "value  d"),
        ("${SET:+alt} ${EMPTY:+alt} ${EMPTY+alt} ${UNSET+alt}", "alt  alt "),
        ("$${SET} costs $$5", "${SET} costs $5"),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-http://h:8080/x}", "http://h:8080/x"),
        ("${SET:?must be set}", "value"),
        ("${EMPTY?must exist}", ""),
    ],
)
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize("text", ["${EMPTY:?set EMPTY}", "${UNSET:?set UNSET}", "${UNSET?set UNSET}"])
def test_required_variables_fail_with_their_message(text: str) -> None:
    with pytest.raises(ComposeError, match=r"set (EMPTY|UNSET)"):
        interpolate(text, ENV)


@pytest.mark.parametrize("text", ["a $ b", "${", "${1BAD}"])
def test_malformed_interpolation_is_an_error(text: str) -> None:
    with pytest.raises(ComposeError):
        interpolate(text, ENV)


def test_env_file_parsing() -> None:
    env = parse_env_file(
        "# comment\n\nA=1\nexport B = two \nC='single $NOT #kept'\nD=\"dq\"\nE=x # comment\nF=a#b\nBARE\n"
    )
    assert env == {"A": "1", "B": "two", "C": "single $NOT #kept", "D": "dq", "E": "x", "F": "a#b"}


COMPOSE = """
name: t
x-common: &common
  env_file: [.env, {path: extra.env, required: false}, {path: missing.env, required: false}]
  environment:
    FROM_ANCHOR: anchor
    OVERRIDDEN: anchor
services:
  app:
    <<: *common
    environment:
      OVERRIDDEN: ${HOST:-localhost}:${PORT-80}
      DOLLAR: "pa$$word"
      BOOL: true
      NUM: 5
      PASSED:
  listy:
    env_file: .env
    environment: ["A=${FROM_DOTENV}", "PASSED", "NOT_SET_ANYWHERE"]
  devonly:
    profiles: [dev]
    image: x
  required:
    profiles: [never]
    environment: {X: "${NEEDED:?give NEEDED}"}
"""


def _project(tmp_path: Path, env: dict[str, str], **kw) -> Project:
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    (tmp_path / ".env").write_text("FROM_DOTENV=dotenv\nOVERRIDDEN=dotenv\nSHARED=dotenv\n")
    (tmp_path / "extra.env").write_text("SHARED=extra\n")
    return Project(tmp_path / "docker-compose.yml", env, **kw)


def test_service_environment_merges_env_files_anchor_and_environment(tmp_path: Path) -> None:
    p = _project(tmp_path, {"FROM_DOTENV": "proj", "PASSED": "from-project", "NEEDED": "n", "PORT": ""})
    # a merge key replaces the anchor's environment mapping as a whole (YAML merge is shallow)
    assert p.environment("app") == {
        "FROM_DOTENV": "dotenv",
        "OVERRIDDEN": "localhost:",
        "SHARED": "extra",
        "DOLLAR": "pa$word",
        "BOOL": "true",
        "NUM": "5",
        "PASSED": "from-project",
    }
    assert p.environment("listy") == {
        "FROM_DOTENV": "dotenv",
        "OVERRIDDEN": "dotenv",
        "SHARED": "dotenv",
        "A": "proj",
        "PASSED": "from-project",
    }


def test_required_variable_fails_the_whole_file_like_compose_config(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="give NEEDED"):
        _project(tmp_path, {})


def test_profiles(tmp_path: Path) -> None:
    env = {"NEEDED": "n"}
    assert _project(tmp_path, env).active_services() == ["app", "listy"]
    assert _project(tmp_path, {**env, "COMPOSE_PROFILES": "dev, other"}).active_services() == [
        "app", "listy", "devonly",
    ]  # fmt: skip
    assert _project(tmp_path, env, profiles=["never"]).active_services() == ["app", "listy", "required"]


def test_the_repository_compose_file_with_env_example(tmp_path: Path) -> None:
    fill = {"RABBITMQ_PASSWORD": "x" * 20}
    with pytest.raises(ComposeError, match="CHANGE_ME"):
        project_from_example(REPO / "docker-compose.yml", REPO / ".env.example", fill)
    example = (REPO / ".env.example").read_text()
    fill = {
        line.split("=", 1)[0]: f"filled-{i:02d}-0123456789abcdef"
        for i, line in enumerate(example.splitlines())
        if line.endswith("=CHANGE_ME")
    }
    p = project_from_example(REPO / "docker-compose.yml", REPO / ".env.example", fill)
    assert {"rabbitmq", "postgres", "planning", "consent", "notify"} <= set(p.active_services())
    planning = p.environment("planning")
    # .env (env_file) gives make run's values; the service's environment block wins over them
    assert (
        planning["SIP_AMQP_URL"] == f"amqp://planning:{fill['RABBITMQ_PLANNING_PASSWORD']}@rabbitmq:5672/sip"
    )
    assert planning["SIP_LOG_FORMAT"] == "json"
    assert "CHANGE_ME" not in "".join(planning.values())
    for service in ("planning", "consent", "notify"):
        env = p.environment(service)
        password = fill[f"POSTGRES_{service.upper()}_PASSWORD"]
        assert (
            env[f"{service.upper()}_DATABASE_URL"]
            == f"postgresql://{service}:{password}@postgres:5432/{service}"
        )
        assert env["SIP_JWT_ISSUERS_FILE"] == "/app/config/issuers.dev.yaml"
        assert env["SIP_AUTH_REQUIRED"] == "true"
    # the dev profile (COMPOSE_PROFILES=dev in .env.example): issuer and mail sink, notify sends there
    assert {"issuer", "mailsink"} <= set(p.active_services())
    assert not {"prometheus", "grafana", "alertmanager"} & set(p.active_services())
    notify = p.environment("notify")
    assert (notify["NOTIFY_SMTP_HOST"], notify["NOTIFY_SMTP_PORT"]) == ("mailsink", "1025")
    assert notify["NOTIFY_CASE_URL_TEMPLATE"] == "http://localhost:8080/cases/{case_id}"
    postgres = p.environment("postgres")
    assert postgres["POSTGRES_PASSWORD"] == fill["POSTGRES_PASSWORD"] and "SIP_AMQP_URL" not in postgres
