"""Compute a compose service's environment exactly as ``docker compose`` would, without Docker.

From ``docker-compose.yml`` and the project's ``.env`` (here: a mapping, e.g. ``.env.example`` with its
placeholders filled): the YAML is read with its anchors and ``<<: *anchor`` merge keys, every string
is interpolated (compose-spec "Interpolation": ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset or
empty), ``${VAR-default}`` (unset), ``${VAR:?error}`` / ``${VAR?error}`` (required), ``${VAR:+alt}`` /
``${VAR+alt}``, ``$$`` for a literal ``$``), and a service's environment is its ``env_file`` files in
order (later files win) overridden by its ``environment`` (a mapping or a list of ``KEY=VALUE``; a bare
``KEY`` or a null value takes the variable from the project environment, and is left out when unset).
Profiles: a service without ``profiles`` is always active, one with them only when a profile of its
is enabled (``COMPOSE_PROFILES``, comma-separated, or the ``profiles`` argument).

What compose does and this does not: ``extends``, ``include``, multiple compose files, ``env_file``
values referencing other variables in that file (values are taken as written, quotes removed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ComposeError(ValueError):
    """What makes ``docker compose config`` fail (e.g. a ``${VAR:?err}`` whose variable is unset)."""


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(rf"\$(?:(?P<escaped>\$)|(?P<plain>{_NAME})|\{{(?P<braced>[^}}]*)\}})")
_BRACED = re.compile(rf"^(?P<name>{_NAME})(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """One string interpolated as compose does it (nested ``${…}`` in a default are interpolated too)."""
    out: list[str] = []
    pos = 0
    while True:
        start = value.find("$", pos)
        if start < 0:
            out.append(value[pos:])
            return "".join(out)
        out.append(value[pos:start])
        if value.startswith("$$", start):
            out.append("$")
            pos = start + 2
            continue
        if value.startswith("${", start):
            end = _matching_brace(value, start + 1)
            out.append(_braced(value[start + 2 : end], env))
            pos = end + 1
            continue
        m = re.match(_NAME, value[start + 1 :])
        if m:
            out.append(env.get(m.group(0), ""))
            pos = start + 1 + m.end()
        else:
            raise ComposeError(f"invalid interpolation format in {value!r}: a lone $ (write $$)")


def _matching_brace(value: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(value)):
        if value[i] == "{":
            depth += 1
        elif value[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ComposeError(f"invalid interpolation format in {value!r}: unclosed ${{")


def _braced(body: str, env: Mapping[str, str]) -> str:
    m = _BRACED.match(body)
    if not m:
        raise ComposeError(f"invalid interpolation format: ${{{body}}}")
    name, op, arg = m.group("name"), m.group("op"), m.group("arg")
    is_set = name in env
    current = env.get(name, "")
    if op is None:
        return current
    if op == ":-":
        return current if current else interpolate(arg, env)
    if op == "-":
        return current if is_set else interpolate(arg, env)
    if op == ":?":
        if not current:
            raise ComposeError(f"required variable {name} is missing a value: {interpolate(arg, env)}")
        return current
    if op == "?":
        if not is_set:
            raise ComposeError(f"required variable {name} is missing a value: {interpolate(arg, env)}")
        return current
    if op == ":+":
        return interpolate(arg, env) if current else ""
    return interpolate(arg, env) if is_set else ""  # "+"


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def parse_env_file(text: str) -> dict[str, str]:
    """A ``.env`` / ``env_file`` file: ``KEY=VALUE`` lines, ``#`` comments, optional ``export``, quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not re.fullmatch(_NAME, key):
            raise ComposeError(f"invalid line in env file: {raw!r}")
        if not sep:
            continue  # a bare KEY in an env file: not set
        value = value.strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            if end < 0:
                raise ComposeError(f"unterminated quote in env file: {raw!r}")
            inner = value[1:end]
            value = inner.replace("\\n", "\n") if quote == '"' else inner
        else:
            value = re.sub(r"\s+#.*$", "", value)  # an inline comment needs a blank before it
        env[key] = value
    return env


def load_env_file(path: Path) -> dict[str, str]:
    return parse_env_file(path.read_text(encoding="utf-8"))


class Project:
    """A compose file read and interpolated with a project environment (the ``.env`` values)."""

    def __init__(self, compose_file: Path, env: Mapping[str, str], *, profiles: list[str] | None = None):
        self.file = compose_file
        self.dir = compose_file.parent
        self.env = dict(env)
        raw = yaml.safe_load(compose_file.read_text(encoding="utf-8"))  # anchors and << merges
        self.model: dict[str, Any] = interpolate_tree(raw, self.env)
        # The project's .env is both the interpolation source and (env_file: [.env]) the services' file:
        # a test that has no .env on disk passes its content (with_dotenv).
        self.env_file_override: dict[str, str] | None = None
        if profiles is None:
            profiles = [p.strip() for p in self.env.get("COMPOSE_PROFILES", "").split(",") if p.strip()]
        self.profiles = set(profiles)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return dict(self.model.get("services") or {})

    def active_services(self) -> list[str]:
        """The services ``docker compose up`` starts with the enabled profiles."""
        return [
            name
            for name, svc in self.services.items()
            if not svc.get("profiles") or self.profiles & set(svc["profiles"])
        ]

    def service(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.services[name])
        except KeyError:
            raise ComposeError(f"no service {name!r} in {self.file}") from None

    def environment(self, name: str) -> dict[str, str]:
        """The container's environment as compose sets it (not the image's own ENV)."""
        svc = self.service(name)
        env: dict[str, str] = {}
        for entry in _as_list(svc.get("env_file")):
            path, required = (entry.get("path"), entry.get("required", True)) if isinstance(entry, dict) \
                else (entry, True)  # fmt: skip
            file = (self.dir / str(path)).resolve()
            if file == (self.dir / ".env").resolve() and self.env_file_override is not None:
                env.update(self.env_file_override)
                continue
            if not file.exists():
                if required:
                    raise ComposeError(f"env file {file} not found")
                continue
            env.update(load_env_file(file))
        declared = svc.get("environment") or {}
        items: list[tuple[str, Any]]
        if isinstance(declared, dict):
            items = list(declared.items())
        else:
            items = [(k, v if sep else None) for k, sep, v in (str(e).partition("=") for e in declared)]
        for key, value in items:
            if value is None:
                if key in self.env:
                    env[key] = self.env[key]
                else:
                    env.pop(key, None)
            else:
                env[key] = _scalar(value)
        return env

    def with_dotenv(self) -> Project:
        """Treat ``env_file: .env`` as the project environment given (the usual copy of .env.example)."""
        self.env_file_override = dict(self.env)
        return self


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def project_from_example(
    compose_file: Path, env_example: Path, fill: Mapping[str, str], *, profiles: list[str] | None = None
) -> Project:
    """``docker-compose.yml`` with a ``.env`` that is ``.env.example`` with every ``CHANGE_ME`` filled
    from ``fill`` (a placeholder left unfilled is an error) and nothing else changed."""
    env = load_env_file(env_example)
    for key, value in env.items():
        if "CHANGE_ME" in value:
            if key not in fill:
                raise ComposeError(f"{key} holds CHANGE_ME and no value was given for it")
            env[key] = fill[key]
    return Project(compose_file, env, profiles=profiles).with_dotenv()
