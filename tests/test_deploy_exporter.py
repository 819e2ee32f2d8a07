"""deploy/exporter: least-privilege RBAC, a hardened pod, probes and scraping wired to the right
names; deploy/generate.py: the generated PrometheusRule and dashboard ConfigMap match their
sources in dashboards/ and validate."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from exporter.jetstream.subjects import server_config
from tests.conftest import TESTDATA
from tests.deploy.manifests import (
    DEPLOY,
    K8S_VERSIONS,
    ROOT,
    find,
    load_crds,
    render,
    validate_custom,
)
from wslog.live import replica_index

Obj = dict[str, Any]
VARIANTS = ("exporter", "exporter/namespaced", "exporter/daemonset", "exporter/sharded")
SHARDED = "exporter/sharded"
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")
STATE_DIR = "/var/lib/wslog"
LEAST_PRIVILEGE = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


def _objects(variant: str) -> tuple[Obj, ...]:
    return render(Path(variant))


def _workload(variant: str) -> Obj:
    """The workload serving the connection metrics (the correlators, when sharded)."""
    kind = {"exporter/daemonset": "DaemonSet", SHARDED: "StatefulSet"}.get(variant, "Deployment")
    return find(_objects(variant), kind, "wslog-exporter")


def _pods(variant: str) -> list[Obj]:
    """Every workload's pod spec."""
    return [o["spec"]["template"]["spec"] for o in _objects(variant) if o["kind"] in WORKLOAD_KINDS]


def _pod(variant: str) -> Obj:
    pod: Obj = _workload(variant)["spec"]["template"]["spec"]
    return pod


# --- RBAC ----------------------------------------------------------------------------------------


def test_cluster_variant_grants_pods_and_logs_read_only_cluster_wide() -> None:
    objects = _objects("exporter")
    assert find(objects, "ClusterRole", "wslog-exporter")["rules"] == LEAST_PRIVILEGE
    binding = find(objects, "ClusterRoleBinding", "wslog-exporter")
    assert binding["roleRef"]["name"] == "wslog-exporter"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "wslog-exporter", "namespace": "wslog-system"}
    ]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]


def test_namespaced_variant_grants_the_same_rules_in_the_watched_namespace_only() -> None:
    objects = _objects("exporter/namespaced")
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    role = find(objects, "Role", "wslog-exporter")
    binding = find(objects, "RoleBinding", "wslog-exporter")
    assert role["rules"] == LEAST_PRIVILEGE
    watched = role["metadata"]["namespace"]
    assert binding["metadata"]["namespace"] == watched != "wslog-system"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "wslog-exporter",
    }
    assert binding["subjects"][0]["namespace"] == "wslog-system"
    args = _pod("exporter/namespaced")["containers"][0]["args"]
    assert args[args.index("--namespace") + 1] == watched


def test_cluster_role_says_it_reads_every_containers_logs_and_names_the_narrower_variants() -> None:
    """RBAC cannot narrow pods/log to istio-proxy, so the object says so
    where ``kubectl describe clusterrole`` shows it, not only in a YAML comment."""
    role = find(_objects("exporter"), "ClusterRole", "wslog-exporter")
    description = " ".join(role["metadata"]["annotations"]["kubernetes.io/description"].split())
    for claim in ("every container in every namespace", "kube-system", "istio-proxy"):
        assert claim in description
    assert "deploy/exporter/namespaced" in description
    assert "deploy/exporter/daemonset" in description


def test_daemonset_variant_has_no_api_access() -> None:
    objects = _objects("exporter/daemonset")
    rbac = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert not [o for o in objects if o["kind"] in rbac]
    assert _pod("exporter/daemonset")["automountServiceAccountToken"] is False
    assert find(objects, "ServiceAccount")["automountServiceAccountToken"] is False


# --- the pod -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_container_is_locked_down(variant: str) -> None:
    for pod in _pods(variant):
        _assert_locked_down(pod)


def _assert_locked_down(pod: Obj) -> None:
    (container,) = pod["containers"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged", False) is False
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("variant", ["exporter", "exporter/namespaced"])
def test_api_reading_exporter_runs_as_non_root(variant: str) -> None:
    pod = _pod(variant)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_metrics_port_match_the_exporter_endpoints(variant: str) -> None:
    (container,) = _pod(variant)["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    (port,) = container["ports"]
    assert port["name"] == "http-metrics"
    args = container["args"]
    assert args[0] == "exporter"
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{port['containerPort']}"
    assert container["image"] == "ghcr.io/wslog/wslog:0.1.0"


def test_sources_match_each_variant() -> None:
    deployment = _pod("exporter")["containers"][0]["args"]
    assert deployment[deployment.index("--source") + 1] == "kubernetes"
    assert _workload("exporter")["spec"]["replicas"] == 1
    daemonset = _pod("exporter/daemonset")["containers"][0]["args"]
    assert daemonset[daemonset.index("--source") + 1] == "files"
    assert daemonset[daemonset.index("--path") + 1] == "/var/log/pods/*/istio-proxy/*.log"


def test_daemonset_reads_node_logs_through_a_read_only_host_path() -> None:
    pod = _pod("exporter/daemonset")
    volumes = {v["name"]: v for v in pod["volumes"]}
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert host_paths == {"/var/log/pods", STATE_DIR}
    for mount in pod["containers"][0]["volumeMounts"]:
        if "hostPath" in volumes[mount["name"]]:
            assert mount.get("readOnly", False) is (mount["mountPath"] != STATE_DIR)
            assert mount["mountPath"] == volumes[mount["name"]]["hostPath"]["path"]


def test_daemonset_keeps_file_positions_on_the_node_across_restarts() -> None:
    """--state-dir on a hostPath: a new pod on the node resumes where the last one stopped
    (an emptyDir would go with the pod); the only writable host path is that directory."""
    pod = _pod("exporter/daemonset")
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--state-dir") + 1] == STATE_DIR
    (volume,) = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == STATE_DIR]
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly", False)]
    assert sorted(m["mountPath"] for m in writable) == ["/tmp", STATE_DIR]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_security_level_of_the_namespace_admits_the_pod(variant: str) -> None:
    namespace = find(_objects(variant), "Namespace", "wslog-system")
    level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    pods = _pods(variant)
    uses_host = any("hostPath" in v for pod in pods for v in pod.get("volumes", []))
    root = any(pod["securityContext"].get("runAsUser") == 0 for pod in pods)
    if level == "restricted":
        assert not uses_host and not root
        assert all(pod["securityContext"]["runAsNonRoot"] is True for pod in pods)
    else:
        assert level == "privileged" and (uses_host or root), "privileged only where needed"


# --- scraping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_and_servicemonitor_reach_the_metrics_port(variant: str) -> None:
    objects = _objects(variant)
    service = find(objects, "Service", "wslog-exporter")
    pod_labels = _workload(variant)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http-metrics"
    monitor = find(objects, "ServiceMonitor", "wslog-exporter")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert service["spec"]["publishNotReadyAddresses"] is True, "a draining pod is scraped"


# --- network policy ------------------------------------------------------------------------------

PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def _policies(variant: str, app: str = "wslog-exporter") -> dict[str, Obj]:
    """The NetworkPolicies selecting the pods named ``app``; every policy selects some pod."""
    workloads = [o for o in _objects(variant) if o["kind"] in WORKLOAD_KINDS]
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    (pod_labels,) = [ls for ls in labels if ls["app.kubernetes.io/name"] == app]
    policies = [o for o in _objects(variant) if o["kind"] == "NetworkPolicy"]
    for policy in policies:
        selector = policy["spec"]["podSelector"]["matchLabels"].items()
        assert any(selector <= ls.items() for ls in labels), policy["metadata"]["name"]
    return {
        p["metadata"]["name"]: p["spec"]
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_monitoring_namespaces_prometheus_reaches_the_metrics_port(variant: str) -> None:
    ingress = [p for p in _policies(variant).values() if "Ingress" in p["policyTypes"]]
    assert [p.get("ingress") for p in ingress] == [
        [{"from": [PROMETHEUS], "ports": [{"port": "http-metrics", "protocol": "TCP"}]}]
    ]


@pytest.mark.parametrize("variant", ["exporter", "exporter/namespaced"])
def test_the_api_reading_exporter_may_connect_to_the_api_server_port_only(variant: str) -> None:
    egress = [p for p in _policies(variant).values() if "Egress" in p["policyTypes"]]
    ports = [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
    assert [p["egress"] for p in egress] == [[{"ports": ports}]], "no DNS, no other port"


def test_the_daemonset_may_connect_nowhere() -> None:
    egress = [p for p in _policies("exporter/daemonset").values() if "Egress" in p["policyTypes"]]
    assert len(egress) == 1 and egress[0].get("egress", []) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_grace_period_covers_the_flush_and_the_drain(variant: str) -> None:
    """SIGTERM: the loop finishes (a batch interval, the source's 5 s join), then serves the
    final counts for --drain-seconds; SIGKILL must not cut that short."""
    pod = _pod(variant)
    args = pod["containers"][0]["args"]
    drain = float(args[args.index("--drain-seconds") + 1])
    assert drain > 0
    assert pod["terminationGracePeriodSeconds"] >= drain + 10


# --- sharded ------------------------------------------------------------------------------------

NATS_EGRESS = [
    {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "wslog-nats"}}}],
        "ports": [{"port": 4222, "protocol": "TCP"}],
    },
    {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    },
]


def _args(workload: Obj) -> list[str]:
    args: list[str] = workload["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_sharded_partitions_in_the_nats_mapping_equal_the_correlators_partitions() -> None:
    objects = _objects(SHARDED)
    conf = find(objects, "ConfigMap", "wslog-nats")["data"]["nats.conf"]
    correlators = _workload(SHARDED)
    args = _args(correlators)
    partitions = int(_flag(args, "--partitions"))
    # The mapping line is the one exporter/jetstream/subjects.py writes for that N.
    written = server_config(partitions, listen="x", store_dir="x").splitlines()[-1]
    assert written in conf.splitlines()
    assert int(_flag(args, "--replicas")) == correlators["spec"]["replicas"] <= partitions


def test_sharded_correlators_take_their_replica_index_from_the_pod_name() -> None:
    correlators = _workload(SHARDED)
    (container,) = correlators["spec"]["template"]["spec"]["containers"]
    assert _flag(container["args"], "--replica") == "$(POD_NAME)"
    (env,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert env["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    name = correlators["metadata"]["name"]
    replicas = correlators["spec"]["replicas"]
    assert [replica_index(f"{name}-{k}") for k in range(replicas)] == list(range(replicas))
    assert _flag(container["args"], "--source") == "nats"


def test_sharded_forwarders_read_node_logs_read_only_and_publish_to_the_nats_service() -> None:
    objects = _objects(SHARDED)
    forwarder = find(objects, "DaemonSet", "wslog-forwarder")
    pod = forwarder["spec"]["template"]["spec"]
    args = _args(forwarder)
    state = _flag(args, "--state-dir")
    volumes = {v["name"]: v for v in pod["volumes"]}
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert host_paths == {"/var/log/pods", state}
    for mount in pod["containers"][0]["volumeMounts"]:
        if "hostPath" in volumes[mount["name"]]:
            assert mount.get("readOnly", False) is (mount["mountPath"] != state)
    nats = find(objects, "Service", "wslog-nats")
    (port,) = nats["spec"]["ports"]
    url = f"nats://wslog-nats:{port['port']}"
    assert _flag(args, "--forward") == url == _flag(_args(_workload(SHARDED)), "--nats-url")
    assert pod["automountServiceAccountToken"] is False


def test_sharded_nats_keeps_its_stream_on_a_volume_and_reads_the_mapping() -> None:
    nats = find(_objects(SHARDED), "StatefulSet", "wslog-nats")
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    conf = find(_objects(SHARDED), "ConfigMap", "wslog-nats")["data"]["nats.conf"]
    assert f'store_dir: "{mounts[claim["metadata"]["name"]]}"' in conf
    assert _flag(container["args"], "--config") == f"{mounts['config']}/nats.conf"
    assert re.fullmatch(r"nats:\d+\.\d+\.\d+-alpine", container["image"])


def test_sharded_nats_is_reached_only_by_forwarders_and_correlators() -> None:
    (policy,) = _policies(SHARDED, "wslog-nats").values()
    assert policy["policyTypes"] == ["Ingress", "Egress"] and not policy.get("egress")
    peers = [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}
        for name in ("wslog-forwarder", "wslog-exporter")
    ]
    assert policy["ingress"] == [{"from": peers, "ports": [{"port": "nats", "protocol": "TCP"}]}]


@pytest.mark.parametrize("app", ["wslog-forwarder", "wslog-exporter"])
def test_sharded_forwarders_and_correlators_connect_only_to_nats_and_dns(app: str) -> None:
    policies = _policies(SHARDED, app).values()
    assert [p["egress"] for p in policies if "Egress" in p["policyTypes"]] == [NATS_EGRESS]
    ingress = [p.get("ingress") for p in policies if "Ingress" in p["policyTypes"]]
    assert ingress == [
        [{"from": [PROMETHEUS], "ports": [{"port": "http-metrics", "protocol": "TCP"}]}]
    ]


def test_sharded_forwarders_metrics_are_scraped() -> None:
    objects = _objects(SHARDED)
    monitor = find(objects, "PodMonitor", "wslog-forwarder")
    forwarder = find(objects, "DaemonSet", "wslog-forwarder")
    labels = forwarder["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (port,) = forwarder["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert _flag(_args(forwarder), "--listen") == f"0.0.0.0:{port['containerPort']}"


# --- generated files -----------------------------------------------------------------------------

RULES = """\
groups:
  - name: wslog
    rules:
      - alert: WslogH2ConnectNotAllowed
        expr: |
          sum by (destination_service, destination_namespace) (
            rate(wslog_connections_total{cause="h2-connect-not-allowed"}[5m])
          ) > 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: WebSocket upgrades fail with 503 on an HTTP/2 hop
      - record: wslog:connections:rate5m
        expr: sum by (outcome) (rate(wslog_connections_total[5m]))
"""
DASHBOARD = '{\n  "title": "wslog",\n  "uid": "wslog",\n  "panels": []\n}\n'


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "alerts.rules.yaml").write_text(RULES, encoding="utf-8")
    (tmp_path / "dashboards" / "wslog.json").write_text(DASHBOARD, encoding="utf-8")
    return tmp_path


def _generated(root: Path) -> dict[Path, str]:
    outputs, missing = generate.generate(root)
    assert missing == []
    return {out.path: out.text for out in outputs}


def test_generated_prometheusrule_carries_the_rules_file_groups(scratch_root: Path) -> None:
    rule = yaml.safe_load(_generated(scratch_root)[generate.PROMETHEUS_RULE])
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES)["groups"]
    rule["metadata"]["namespace"] = "wslog-system"
    validate_custom(rule, load_crds(TESTDATA / "schemas" / "crds"))


def test_generated_dashboard_configmap_is_labelled_for_the_grafana_sidecar(
    scratch_root: Path,
) -> None:
    configmap = yaml.safe_load(_generated(scratch_root)[generate.DASHBOARD_CONFIGMAP])
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"wslog.json": DASHBOARD}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(configmap, version, strict=True)


def test_generator_rejects_a_rules_file_without_groups(scratch_root: Path) -> None:
    (scratch_root / "dashboards" / "alerts.rules.yaml").write_text("rules: []\n", encoding="utf-8")
    with pytest.raises(generate.GenerateError, match="groups"):
        generate.generate(scratch_root)


def test_generator_check_mode_reports_drift_and_write_fixes_it(scratch_root: Path) -> None:
    assert generate.main(["--root", str(scratch_root), "--check"]) == 1
    assert generate.main(["--root", str(scratch_root)]) == 0
    assert generate.main(["--root", str(scratch_root), "--check"]) == 0
    (scratch_root / generate.PROMETHEUS_RULE).write_text("edited by hand\n", encoding="utf-8")
    assert generate.main(["--root", str(scratch_root), "--check"]) == 1


def test_generator_leaves_outputs_of_missing_sources_alone(tmp_path: Path) -> None:
    outputs, missing = generate.generate(tmp_path)
    assert missing == [generate.RULES_SOURCE, generate.DASHBOARD_SOURCE]
    assert {out.path for out in outputs} == {generate.FORMAT_JSON, generate.ACCESS_LOG_FILTER}


def test_committed_access_log_files_equal_a_fresh_generation() -> None:
    outputs, _ = generate.generate(ROOT)
    fresh = {out.path: out.text for out in outputs}
    for path in (generate.FORMAT_JSON, generate.ACCESS_LOG_FILTER):
        assert (ROOT / path).read_text("utf-8") == fresh[path], f"run deploy/generate.py: {path}"
    assert json.loads(fresh[generate.FORMAT_JSON]) == generate.access_log_format()


@pytest.mark.parametrize(
    ("source", "output"),
    [
        (generate.RULES_SOURCE, generate.PROMETHEUS_RULE),
        (generate.DASHBOARD_SOURCE, generate.DASHBOARD_CONFIGMAP),
    ],
    ids=["prometheusrule", "dashboard"],
)
def test_committed_monitoring_files_equal_a_fresh_generation(source: Path, output: Path) -> None:
    if not (ROOT / source).is_file():
        pytest.skip(f"{source} does not exist yet; the generator is tested on a scratch copy")
    outputs, _ = generate.generate(ROOT)
    fresh = {out.path: out.text for out in outputs}
    assert (ROOT / output).is_file(), f"run deploy/generate.py to create {output}"
    assert (ROOT / output).read_text("utf-8") == fresh[output], f"run deploy/generate.py: {output}"
    monitoring = yaml.safe_load((DEPLOY / "exporter/monitoring/kustomization.yaml").read_text())
    assert output.name in monitoring["resources"], f"list {output.name} in its kustomization"
