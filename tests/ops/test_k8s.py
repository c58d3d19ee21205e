"""k8s/: built with `kubectl kustomize`, validated offline against the Kubernetes schemas, and
checked against the code (probe paths, settings, ports, drain window, metric names)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service import config
from service.app import create_app
from service.config import OPTIONS_BY_ENV
from tests.conftest import make_config
from tests.ops.util import REPO, find, known_series, kustomize, referenced_metrics

BUILDS = ("k8s", "k8s/overlays/dev")
# The oldest Kubernetes we support (native sidecars, stable PodDisruptionBudget/HPA v2...)
# and the newest the schemas ship.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SECRET_SETTINGS = {"GATEWAY_JWT_SECRET", "GATEWAY_AMQP_URL", "GATEWAY_API_KEYS"}
SHUTDOWN_SETTLE_S = 3  # service.app: what the process may take after the paced drain
MARGIN_S = 5

# The parts of the prometheus-operator CRDs (monitoring.coreos.com/v1) these manifests use;
# unknown fields are errors, as with --strict for the built-in kinds.
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"type": "object"},
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def gateway_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = find(docs, "Deployment", "realtime-gateway")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "gateway")


def configmap(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    data: dict[str, str] = find(docs, "ConfigMap", "realtime-gateway-config")["data"]
    return data


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_the_kubernetes_schemas(build: str, version: str) -> None:
    docs = kustomize(build)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_the_schema_check_can_fail() -> None:
    deployment = find(kustomize("k8s"), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("build", BUILDS)
def test_probe_and_scrape_paths_exist_in_the_app(build: str) -> None:
    app = create_app(make_config())
    paths = {resource.canonical for resource in app.router.resources()}
    docs = kustomize(build)
    container = gateway_container(docs)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in paths
    if build == "k8s":
        endpoint = find(docs, "ServiceMonitor")["spec"]["endpoints"][0]
        assert endpoint["path"] == "/metrics"
        assert endpoint["path"] in paths
        assert endpoint["port"] == "http"


@pytest.mark.parametrize("build", BUILDS)
def test_every_setting_is_known_and_valid(build: str) -> None:
    docs = kustomize(build)
    data = configmap(docs)
    unknown = sorted(set(data) - set(OPTIONS_BY_ENV))
    assert not unknown, f"the gateway does not know {unknown}"
    env = {e["name"]: e for e in gateway_container(docs)["env"]}
    assert set(env) <= set(OPTIONS_BY_ENV)
    secret_refs = {name for name, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_refs == SECRET_SETTINGS
    assert not SECRET_SETTINGS & set(data), "secrets belong in the Secret, not the ConfigMap"
    assert env["GATEWAY_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Every setting is decided somewhere: the ConfigMap, the Secret or the pod itself.
    assert set(data) | set(env) == set(OPTIONS_BY_ENV)
    # And the values are ones the gateway accepts.
    loaded = config.load({**data, "GATEWAY_JWT_SECRET": "x" * 32, "GATEWAY_INSTANCE_ID": "pod"})
    assert loaded.allowed_origins
    assert "*" not in loaded.allowed_origins


@pytest.mark.parametrize("build", BUILDS)
def test_grace_period_exceeds_prestop_and_drain_window(build: str) -> None:
    docs = kustomize(build)
    pod = find(docs, "Deployment", "realtime-gateway")["spec"]["template"]["spec"]
    drain_s = config.load(
        {**configmap(docs), "GATEWAY_JWT_SECRET": "x" * 32, "GATEWAY_INSTANCE_ID": "pod"}
    ).drain_s
    command = gateway_container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pod["terminationGracePeriodSeconds"] >= (
        pre_stop_s + drain_s + SHUTDOWN_SETTLE_S + MARGIN_S
    )


@pytest.mark.parametrize("build", BUILDS)
def test_ports_match(build: str) -> None:
    docs = kustomize(build)
    port = int(configmap(docs)["GATEWAY_PORT"])
    container = gateway_container(docs)
    (http,) = container["ports"]
    assert (http["name"], http["containerPort"]) == ("http", port)
    service = find(docs, "Service", "realtime-gateway")["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    assert (
        service["selector"].items()
        <= (
            find(docs, "Deployment", "realtime-gateway")["spec"]["template"]["metadata"]["labels"]
        ).items()
    )
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {port}$", dockerfile, re.M)
    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {
                    "name": "realtime-gateway",
                    "port": {"name": "http"},
                }


def test_deployment_is_hardened_and_rolls_out_gently() -> None:
    docs = kustomize("k8s")
    deployment = find(docs, "Deployment", "realtime-gateway")["spec"]
    pod = deployment["template"]["spec"]
    container = gateway_container(docs)
    assert deployment["replicas"] >= 2
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["minReadySeconds"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    # The image's user is the one the pod runs as.
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile
    # The read-only root filesystem leaves /tmp writable (multiprocess metrics).
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    hpa = find(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_ingress_keeps_websockets_open_and_socketio_sticky() -> None:
    docs = kustomize("k8s")
    ingresses = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Ingress"}
    for ingress in ingresses.values():
        notes = ingress["metadata"]["annotations"]
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    sticky = ingresses["realtime-gateway-socketio"]
    assert sticky["metadata"]["annotations"]["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert [p["path"] for p in sticky["spec"]["rules"][0]["http"]["paths"]] == ["/socket.io/"]
    plain = ingresses["realtime-gateway"]
    assert "nginx.ingress.kubernetes.io/affinity" not in plain["metadata"]["annotations"]
    assert [p["path"] for p in plain["spec"]["rules"][0]["http"]["paths"]] == ["/ws/"]


def test_network_policy_admits_only_ingress_and_prometheus() -> None:
    policy = find(kustomize("k8s"), "NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = policy["ingress"]
    peers = {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in rule["from"]}
    assert peers == {"ingress-nginx", "prometheus"}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {(p["port"], p["protocol"]) for r in policy["egress"] for p in r["ports"]}
    assert egress_ports == {(5672, "TCP"), (5671, "TCP"), (53, "UDP"), (53, "TCP")}
    assert all(r.get("to") for r in policy["egress"]), "egress without `to` allows anywhere"


REQUIRED_ALERTS = {
    "RealtimeGatewayNoReadyReplicas",
    "RealtimeGatewayBrokerDisconnected",
    "RealtimeGatewayDeadLetters",
    "RealtimeGatewaySlowConsumers",
    "RealtimeGatewayDeliveryLag",
}


def test_alerts_use_real_metrics_and_have_a_runbook() -> None:
    rules = find(kustomize("k8s"), "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules}
    assert set(alerts) >= REQUIRED_ALERTS
    runbook = (REPO / "docs/operations.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for name, rule in alerts.items():
        used = referenced_metrics(rule["expr"])
        assert used, name
        assert used <= known_series(), f"{name} uses unknown metrics {used - known_series()}"
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/operations.md#{name.lower()}"
        assert url.split("#")[1] in anchors, f"docs/operations.md has no section {name}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_secret_example_is_not_applied_and_holds_no_real_values() -> None:
    base = yaml.safe_load((REPO / "k8s/base/kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base["resources"]
    for build in BUILDS:
        assert not [d for d in kustomize(build) if d["kind"] == "Secret" and "REPLACE" in str(d)]
    example = (REPO / "k8s/base/secret.example.yaml").read_text()
    values = yaml.safe_load(example)["stringData"]
    assert set(values) == SECRET_SETTINGS
    assert all("REPLACE" in v for v in values.values())


def test_dev_overlay_brings_its_broker_and_leaves_out_operator_kinds() -> None:
    docs = kustomize("k8s/overlays/dev")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert find(docs, "Deployment", "rabbitmq")
    assert find(docs, "Service", "rabbitmq")
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "realtime-dev"
    }
    # The broker pods carry the label the NetworkPolicy lets the gateway reach.
    rabbit = find(docs, "Deployment", "rabbitmq")["spec"]["template"]["metadata"]["labels"]
    assert rabbit["app.kubernetes.io/name"] == "rabbitmq"
    secret = next(d for d in docs if d["metadata"]["name"].startswith("realtime-gateway-secrets"))
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in gateway_container(docs)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {secret["metadata"]["name"]}
