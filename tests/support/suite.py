"""The whole suite as separate processes against a real broker and SMTP server (for e2e and fault tests)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import dbmode
from tests.support.infra import REPO, MailSink, Proc, free_port, python_module

DIRECTORY = REPO / "config" / "directory.yaml"


@dataclass
class Suite:
    amqp_url: str
    tmp: Path
    ports: dict[str, int]
    procs: dict[str, Proc]
    smtp: MailSink
    extra_env: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SIP_AMQP_URL=self.amqp_url,
            SIP_DATA_DIR=str(self.tmp / "data"),
            SIP_DIRECTORY_PATH=str(DIRECTORY),
            SIP_LOG_FORMAT="json",
            PLANNING_HTTP_PORT=str(self.ports["planning"]),
            PLANNING_PUBLIC_BASE_URL=self.url("planning"),
            PLANNING_MLLP_PORT=str(self.ports.get("mllp", 0)),
            CONSENT_HTTP_PORT=str(self.ports["consent"]),
            CONSENT_FHIR_BASE_URL=self.url("consent"),
            NOTIFY_HTTP_PORT=str(self.ports["notify"]),
            NOTIFY_FHIR_BASE_URL=self.url("notify"),
            NOTIFY_SMTP_PORT=str(self.smtp.smtp_port),
            NOTIFY_RETRY_BASE_SECONDS="0.5",
        )
        env.update(dbmode.service_env(self.tmp / "data"))
        env.update(self.extra_env)
        return env

    def start(self, name: str, *, instance: str | None = None, env: dict[str, str] | None = None) -> Proc:
        proc = self._proc(name, instance, env).start(timeout=60)
        self.procs[instance or name] = proc
        return proc

    def start_all(self, names: Iterable[str]) -> None:
        """Start the services side by side and return when every one is healthy (they start in any
        order: each declares what it uses)."""
        started = [self._proc(name, None, None).spawn() for name in names]
        for proc in started:
            self.procs[proc.name] = proc
        for proc in started:
            proc.wait_healthy(60)

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.stop()

    def _proc(self, name: str, instance: str | None, env: dict[str, str] | None) -> Proc:
        key = instance or name
        port = (env or {}).get(f"{name.upper()}_HTTP_PORT", self.ports[name])
        return Proc(
            key,
            python_module(f"services.{name}"),
            env={**self.env(), **(env or {})},
            log_path=self.tmp / f"{key}.log",
            health_url=f"http://127.0.0.1:{port}/healthz",
        )

    def logs(self) -> str:
        return "\n".join(
            p.log_path.read_text(errors="replace") for p in self.procs.values() if p.log_path.exists()
        )


SERVICES = ("consent", "planning", "notify")


@contextmanager
def running_suite(
    amqp_url: str, tmp: Path, smtp: MailSink, *, services: Iterable[str] = SERVICES,
    extra_ports: Iterable[str] = (), extra_env: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
) -> Iterator[Suite]:  # fmt: skip
    """The services started side by side as processes (each with a free HTTP port, or the one ``ports``
    names: a test that must know them before the start) and stopped after."""
    ports = {n: free_port() for n in (*SERVICES, *extra_ports)} | dict(ports or {})
    suite = Suite(amqp_url, tmp, ports, {}, smtp, extra_env=dict(extra_env or {}))
    try:
        suite.start_all(services)
        yield suite
    finally:
        suite.stop_all()
