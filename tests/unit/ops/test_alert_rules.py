"""The alert rules (deploy/prometheus/alerts.yml) and Alertmanager's grouping and inhibitions
(deploy/alertmanager/alertmanager.yml): promtool checks and unit-tests every rule, every alert has a
runbook and every runbook an alert, and a real Alertmanager shows that one broker outage pages once."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.support.infra import free_port
from tests.support.promtools import REPO, tool

ALERTS = REPO / "deploy/prometheus/alerts.yml"
PROM_TESTS = sorted((REPO / "deploy/prometheus/tests").glob("*.yml"))
ALERTMANAGER = REPO / "deploy/alertmanager/alertmanager.yml"
RUNBOOKS = REPO / "docs/runbooks"


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def need(name: str) -> str:
    path = tool(name)
    if path is None:
        pytest.fail(f"{name} is not available: run `make tools` (scripts/ensure-promtool.sh)")
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_promtool_checks_the_rules_and_the_scrape_config():
    promtool = need("promtool")
    checked = run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout
    config = run(promtool, "check", "config", str(REPO / "deploy/prometheus/prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_pass():
    result = run(need("promtool"), "test", "rules", *map(str, PROM_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(PROM_TESTS)


def test_every_alert_is_tested_firing_and_silent():
    fired: set[str] = set()
    silent: set[str] = set()
    for path in PROM_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", ()):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_every_alert_has_labels_annotations_and_a_runbook_and_every_runbook_an_alert():
    names = set()
    for r in rules():
        name = r["alert"]
        names.add(name)
        assert r["labels"]["severity"] in {"page", "ticket"}, name
        assert {"summary", "description", "runbook_url"} <= set(r["annotations"]), name
        assert r["annotations"]["runbook_url"] == f"docs/runbooks/{name}.md", name
        text = (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {name}"), name
        for section in ("## What it means", "## What to check", "## What to do"):
            assert section in text, (name, section)
    assert {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"} == names


def test_amtool_accepts_the_alertmanager_config_and_routes_pages_and_tickets():
    amtool = need("amtool")
    checked = run(amtool, "check-config", str(ALERTMANAGER))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["group_by"] == ["alertname", "service"]
    for r in rules():
        labels = [f"alertname={r['alert']}", f"severity={r['labels']['severity']}", "service=planning"]
        routed = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
        expected = "oncall-page" if r["labels"]["severity"] == "page" else "integration-ticket"
        assert routed.stdout.strip() == expected, (r["alert"], routed.stdout, routed.stderr)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = need("prometheus-alertmanager")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={ALERTMANAGER}", f"--storage.path={tmp_path}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    start = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    body = json.dumps([{"labels": labels, "startsAt": start} for labels in alerts]).encode()
    req = urllib.request.Request(
        f"{url}/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def notified_groups(url: str) -> list[tuple[str, dict[str, str], int]]:
    """(receiver, group labels, alerts) of every group with an alert that is not inhibited."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts/groups?inhibited=false&silenced=false", timeout=5) as r:
        groups = json.load(r)
    return [(g["receiver"]["name"], g["labels"], len(g["alerts"])) for g in groups if g["alerts"]]


def a(alertname: str, service: str, severity: str = "page", **labels: str) -> dict[str, str]:
    return {"alertname": alertname, "service": service, "severity": severity, "team": "integration", **labels}


def test_one_broker_outage_pages_once_and_the_deadline_still_pages(alertmanager: str):
    broker_down = [
        a("DependencyUnavailable", s, dependency="broker") for s in ("planning", "consent", "notify")
    ]
    symptoms = [
        *(a("OutboxBacklogOld", s) for s in ("planning", "consent", "notify")),
        *(a("QueuedMessageOld", "notify", queue=f"notify.q{i}") for i in range(4)),
        *(a("QueuedMessageOld", "planning", queue=f"planning.q{i}") for i in range(4)),
        a("DeliveryRetrying", "notify", "ticket", channel="email"),
        *(a("HttpServerErrors", s, "ticket", route="/x") for s in ("planning", "consent", "notify")),
        *(a("MetricsCollectorFailing", s, "ticket", collector="c") for s in ("planning", "consent")),
    ]
    deadline = a("InvitationDeadlineNear", "planning")
    post_alerts(alertmanager, broker_down + symptoms + [deadline])
    expected = [
        ("oncall-page", {"alertname": "DependencyUnavailable", "dependency": "broker"}, 3),
        ("oncall-page", {"alertname": "InvitationDeadlineNear", "service": "planning"}, 1),
    ]
    assert len(broker_down + symptoms) >= 20
    # the alerts are taken in and grouped asynchronously: wait until all are in, then for the groups
    assert settled(lambda: len(all_alerts(alertmanager)) == len(broker_down + symptoms) + 1)
    assert settled(
        lambda: sorted(notified_groups(alertmanager), key=lambda g: g[1]["alertname"]) == expected
    ), notified_groups(alertmanager)


def all_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as r:
        return list(json.load(r))


def settled(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_service_down_silences_its_own_symptoms_only(alertmanager: str):
    post_alerts(
        alertmanager,
        [
            a("ServiceDown", "planning", instance="planning:8080"),
            a("IntakeSenderSilent", "planning", sender="SE2321000016-SJH01"),
            a("IntakeSenderSilent", "planning", sender="SE2321000016-SJH02"),
            a("OutboxBacklogOld", "planning"),
            a("OutboxBacklogOld", "consent"),  # another service: still notified
        ],
    )
    expected = {("ServiceDown", "planning"), ("OutboxBacklogOld", "consent")}

    def groups() -> set[tuple[str, str | None]]:
        return {(g[1]["alertname"], g[1].get("service")) for g in notified_groups(alertmanager)}

    assert settled(lambda: len(all_alerts(alertmanager)) == 5)
    assert settled(lambda: groups() == expected), groups()
