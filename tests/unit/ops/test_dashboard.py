"""The Grafana dashboard and provisioning (deploy/grafana) load as what Grafana expects, and every
metric a dashboard query or an alert rule names is one the suite exports."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml

from tests.support.metric_names import PROMETHEUS_OWN, exported_metric_names, metric_names_in

REPO = Path(__file__).resolve().parents[3]
GRAFANA = REPO / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/sip-suite.json"
UID = "sip-prometheus"


@cache
def exported() -> frozenset[str]:
    return frozenset(set().union(*exported_metric_names().values()))


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"] if p["type"] != "row"]


def test_the_provisioning_names_the_datasource_and_the_dashboards():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert (source["uid"], source["type"]) == (UID, "prometheus")
    assert source["url"].startswith("http://")
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/sip-suite.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_the_dashboard_is_grafana_dashboard_json():
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] == "sip-suite" and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert {"Flow per sender", "Latency per hop", "Dead letters", "Deadlines", "Deliveries"} <= titles
    occupied: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(g) and 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cells = {(g["y"] + dy, g["x"] + dx) for dy in range(g["h"]) for dx in range(g["w"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
    for p in panels():
        assert p["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}, p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": UID}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t.get("datasource", p["datasource"])["uid"] == UID
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == UID


def test_every_dashboard_query_names_a_metric_the_suite_exports():
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]
    exprs += [(v["name"], v["definition"]) for v in dash["templating"]["list"]]
    exprs += [(a["name"], a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    for title, expr in exprs:
        names = metric_names_in(expr)
        assert names, (title, expr)
        assert names - exported() - PROMETHEUS_OWN == set(), (title, expr)


def test_every_alert_rule_names_a_metric_the_suite_exports():
    groups = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        names = metric_names_in(rule["expr"])
        assert names, rule["alert"]
        assert names - exported() - PROMETHEUS_OWN == set(), (rule["alert"], names - exported())


def test_the_metric_name_extraction_is_not_fooled():
    expr = (
        'sum by (service, queue) (increase(sip_dead_letters_total{queue=~"a|b"}[10m])) > 0 '
        "and on (service) max_over_time(sip_x_seconds[5m] offset 1h) / process_max_fds"
    )
    assert metric_names_in(expr) == {"sip_dead_letters_total", "sip_x_seconds", "process_max_fds"}
    assert "sip_nonexistent_total" not in exported()
    assert {"sip_http_requests_total", "process_open_fds", "sip_intake_last_accepted_timestamp_seconds",
            "sip_notify_delivery_attempts_total", "sip_message_queue_wait_seconds_bucket"} <= exported()  # fmt: skip
