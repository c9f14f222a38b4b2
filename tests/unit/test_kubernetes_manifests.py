"""deploy/kubernetes (a Kustomize base) checked as data — no cluster runs here.

Core kinds (Deployment, Service, ConfigMap, PodDisruptionBudget, NetworkPolicy) are validated against
Kubernetes' own OpenAPI schemas (kubernetes-validate, strict: an unknown field is an error; offline);
KEDA's ScaledObject / TriggerAuthentication (CRDs, no schema shipped) get a structural check against
the suite's own topology. And the manifests agree with each other: probes on /readyz and /healthz,
ports, selectors, Secret references (no Secret in the repository), one trigger per work queue.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.topology import SUBSCRIPTIONS

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest minor a current regional cluster runs; schemas are offline
SERVICES = {"planning": 8080, "consent": 8081, "notify": 8082}
KEDA = {"ScaledObject", "TriggerAuthentication"}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def keda_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the KEDA objects (CRDs: no OpenAPI schema to validate them with)."""
    problems: list[str] = []
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    auths = {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}
    for d in docs:
        if d["kind"] == "TriggerAuthentication":
            refs = d.get("spec", {}).get("secretTargetRef") or []
            if not refs or any(not {"parameter", "name", "key"} <= set(r) for r in refs):
                problems.append(f"TriggerAuthentication {d['metadata']['name']}: secretTargetRef incomplete")
        if d["kind"] != "ScaledObject":
            continue
        name, spec = d["metadata"]["name"], d.get("spec") or {}
        if d.get("apiVersion") != "keda.sh/v1alpha1":
            problems.append(f"{name}: apiVersion {d.get('apiVersion')}")
        target = spec.get("scaleTargetRef") or {}
        deployment = deployments.get(target.get("name", ""))
        if target.get("kind", "Deployment") != "Deployment" or deployment is None:
            problems.append(f"{name}: scaleTargetRef {target} is no Deployment of the base")
            continue
        lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            problems.append(f"{name}: replica counts {lo}..{hi}")
        elif lo != deployment["spec"]["replicas"]:
            problems.append(f"{name}: minReplicaCount {lo} is not the Deployment's floor")
        service = target["name"].removeprefix("sip-")
        wanted = {s.queue_name for s in SUBSCRIPTIONS if s.consumer == service}
        seen = set()
        for trigger in spec.get("triggers") or []:
            meta = trigger.get("metadata") or {}
            if trigger.get("type") != "rabbitmq" or meta.get("mode") != "QueueLength":
                problems.append(f"{name}: trigger {trigger.get('type')}/{meta.get('mode')}")
            if meta.get("queueName") not in wanted:
                problems.append(f"{name}: queue {meta.get('queueName')} is not one of {service}'s")
            if not str(meta.get("value", "")).isdigit():
                problems.append(f"{name}: value {meta.get('value')!r} is not a whole number (as a string)")
            if (trigger.get("authenticationRef") or {}).get("name") not in auths:
                problems.append(f"{name}: authenticationRef names no TriggerAuthentication")
            if "host" in meta or "password" in str(meta).lower():
                problems.append(
                    f"{name}: a broker address or password inline (use the TriggerAuthentication)"
                )
            seen.add(meta.get("queueName"))
        if wanted - seen:
            problems.append(f"{name}: no trigger for {sorted(wanted - seen)}")
    return problems


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize(
    "doc",
    [d for d in documents() if d["kind"] not in KEDA],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_core_kinds_are_valid_against_the_kubernetes_schemas(doc: dict[str, Any]):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_keda_objects_are_well_formed_and_follow_the_topology():
    docs = documents()
    assert {"ScaledObject", "TriggerAuthentication"} <= {d["kind"] for d in docs}
    assert keda_problems(docs) == []
    assert set(of_kind("ScaledObject")) == {f"sip-{s}" for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_probes_ports_and_secret_references(service: str):
    deployment = of_kind("Deployment")[f"sip-{service}"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", f"services.{service}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == SERVICES[service]
    config = of_kind("ConfigMap")["sip-config"]["data"]
    assert config[f"{service.upper()}_HTTP_PORT"] == str(SERVICES[service])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    sources = container["envFrom"]
    assert {"secretRef": {"name": f"sip-{service}"}} in sources
    assert {"configMapRef": {"name": "sip-config"}} in sources
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = of_kind("Service")[f"sip-{service}"]
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    pdb = of_kind("PodDisruptionBudget")[f"sip-{service}"]
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]  # a drain can move one


def test_no_secret_in_the_manifests():
    docs = documents()
    assert "Secret" not in {d["kind"] for d in docs}
    text = "".join(
        (BASE / name).read_text()
        for name in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    )
    assert "amqp://" not in text and "postgresql://" not in text and "PASSWORD" not in text


def test_the_web_service_is_deployed_with_its_probes_secret_and_one_replica():
    deployment = of_kind("Deployment")["sip-web"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "services.web"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8083}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"secretRef": {"name": "sip-web"}} in container["envFrom"]
    assert deployment["spec"]["replicas"] == 1  # sessions in memory: one replica unless the ingress is sticky
    config = of_kind("ConfigMap")["sip-config"]["data"]
    assert config["WEB_HTTP_PORT"] == "8083" and config["WEB_PLANNING_URL"] == "http://sip-planning:8080"
    assert config["PLANNING_WEB_BASE_URL"] == config["WEB_PUBLIC_BASE_URL"]  # the mails' links open the pages
    assert "SECRET" not in " ".join(config)  # client secrets only in the Secret sip-web
    assert of_kind("Service")["sip-web"]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_notify_replicas_have_stable_ids():
    (container,) = of_kind("Deployment")["sip-notify"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["NOTIFY_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


# ---- the checks catch what is wrong ------------------------------------------------------------
def test_a_broken_deployment_is_refused_by_the_schema():
    deployment = copy.deepcopy(of_kind("Deployment")["sip-planning"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(of_kind("Deployment")["sip-planning"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: an unknown (misspelt) field
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_a_wrong_scaled_object_is_found():
    docs = copy.deepcopy(documents())
    scaled = next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "sip-notify")
    scaled["spec"]["triggers"][0]["metadata"]["queueName"] = "notify.no-such-queue.v1"
    scaled["spec"]["minReplicaCount"] = 5
    scaled["spec"]["scaleTargetRef"]["name"] = "sip-notfy"
    other = next(d for d in docs if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "sip-consent")
    other["spec"]["triggers"][0]["metadata"]["queueName"] = "notify.no-such-queue.v1"
    other["spec"]["triggers"][0]["authenticationRef"]["name"] = "nobody"
    problems = keda_problems(docs)
    assert any("sip-notfy" in p for p in problems)
    assert any("sip-consent: queue notify.no-such-queue.v1" in p for p in problems)
    assert any("sip-consent: no trigger for" in p for p in problems)
    assert any("sip-consent: authenticationRef" in p for p in problems)
