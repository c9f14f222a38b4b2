"""`make run` on a fresh clone brings the whole suite up and it reports healthy."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.support.infra import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.broker, pytest.mark.store_free]


def test_make_run_on_a_fresh_clone_reports_healthy(tmp_path, amqp_url):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    ports = {n: free_port() for n in ("planning", "consent", "notify", "web", "smtp", "mailweb")}
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    # as a user runs it: authentication on, no secret given — make run makes a development one
    env.pop("SIP_JWT_HS256_SECRET", None)
    env.pop("SIP_AUTH_REQUIRED", None)
    env.update(
        SIP_AMQP_URL=amqp_url,
        PLANNING_HTTP_PORT=str(ports["planning"]),
        CONSENT_HTTP_PORT=str(ports["consent"]),
        NOTIFY_HTTP_PORT=str(ports["notify"]),
        WEB_HTTP_PORT=str(ports["web"]),
        NOTIFY_SMTP_PORT=str(ports["smtp"]),
        MAILSINK_HTTP_PORT=str(ports["mailweb"]),
    )
    log = open(tmp_path / "make-run.log", "wb")
    proc = subprocess.Popen(
        ["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        text = ""
        while time.monotonic() < deadline:
            text = (tmp_path / "make-run.log").read_text(errors="replace")
            if "sip-suite is up and healthy" in text or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert "sip-suite is up and healthy" in text, _after_install(text)
        for name in ("planning", "consent", "notify", "web"):
            r = httpx.get(f"http://127.0.0.1:{ports[name]}/healthz", timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "ok", (name, r.text)
        assert httpx.get(f"http://127.0.0.1:{ports['mailweb']}/", timeout=5).status_code == 200
        # the pages, with the development sign-in make run (and only make run) turns on
        assert httpx.get(f"http://127.0.0.1:{ports['web']}/dev/signin", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ports['web']}/readyz", timeout=5).status_code == 200
        assert (clone / "var").is_dir()  # SQLite files live in the clone, zero set-up
        # the APIs are not anonymous; sipctl signs with the development secret make run created
        assert httpx.get(f"http://127.0.0.1:{ports['planning']}/cases", timeout=5).status_code == 401
        status = subprocess.run([str(clone / ".venv/bin/sipctl"), "status"], cwd=clone, env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert status.returncode == 0 and "open SIP cases: 0" in status.stdout, status.stdout + status.stderr
        assert (clone / "var" / "dev-jwt-secret").stat().st_mode & 0o077 == 0
    finally:
        _stop(proc)
        log.close()


def _after_install(text: str) -> str:
    """What `make run` said after its installation step (the package list would hide it)."""
    lines = [ln for ln in text.splitlines() if not ln.startswith((" + ", " - ", "WARNING: Location"))]
    return "\n".join(lines[-60:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:  # make run may have ended on its own (that is the failure the assertion names)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except ProcessLookupError:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
