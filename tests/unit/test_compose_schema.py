"""docker-compose.yml is valid against the Compose Specification's JSON schema (issue 16).

No container engine runs here, so ``docker compose config`` cannot check the file; the schema that
compose itself validates with does. It comes vendored in check-jsonschema (a dev dependency), so the
check needs no network. The file is checked as written and after interpolation with .env.example (its
CHANGE_ME values filled), which is what compose validates; a mutated copy shows the check can fail.
"""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def compose_spec() -> dict[str, Any]:
    path = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))


def validator() -> jsonschema.protocols.Validator:
    schema = compose_spec()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def errors(doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)]


def env_example() -> dict[str, str]:
    """.env.example as an operator fills it: each CHANGE_ME replaced, nothing else changed."""
    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if m:
            value = m.group(2).strip().strip("'\"")
            env[m.group(1)] = value.replace("CHANGE_ME", "a-long-random-secret-4711")
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``$$``, ``$VAR``, ``${VAR}``, ``:-``, ``-``, ``:?``, ``?``,
    ``:+``, ``+``) over every string of the loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        have = name in env
        usable = have and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return env[name] if usable else arg
        if op in (":?", "?"):
            if not usable:
                raise AssertionError(f"compose would refuse to start: {name} unset ({arg})")
            return env[name]
        if op in (":+", "+"):
            return arg if usable else ""
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_the_vendored_schema_is_the_compose_specification():
    schema = compose_spec()
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])


def test_docker_compose_yml_is_valid_as_written_and_as_compose_interpolates_it():
    doc = load()
    assert doc["services"], "no services"
    assert errors(doc) == []
    resolved = interpolate(doc, env_example())
    # what is left of "${" is what the file escaped as "$${" (for the container's shell)
    text = (REPO / "docker-compose.yml").read_text()
    assert json.dumps(resolved).count("${") == text.count("$${")
    assert "CHANGE_ME" not in json.dumps(resolved)
    assert errors(resolved) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # a misspelt key where the schema allows no others
        (lambda d: d["services"]["planning"].__setitem__("restart_policy", "always"), "restart_policy"),
        (lambda d: d["services"]["postgres"]["healthcheck"].__setitem__("intervall", "5s"), "intervall"),
        # a wrong type
        (lambda d: d["services"]["consent"].__setitem__("depends_on", "rabbitmq"), "depends_on"),
        (lambda d: d.__setitem__("servicez", {}), "servicez"),
    ],
    ids=["service-key", "healthcheck-key", "depends-on-type", "top-level-key"],
)
def test_a_mutated_copy_is_refused(mutate, expected):
    doc = copy.deepcopy(load())
    mutate(doc)
    found = errors(doc)
    assert found, "the schema accepted an invalid compose file"
    assert any(expected in e for e in found), found
