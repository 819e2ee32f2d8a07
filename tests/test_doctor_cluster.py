"""``wslog doctor`` without --config: the cluster read through the real client, served by the fake
API server (``fake_k8s_mesh``), gives the same verdicts as the same objects in files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from exporter.kube.mesh import MeshReadSettings, read_cluster
from tests.fake_k8s_mesh import FakeMeshKube
from wslog.cli import app

ROOT = Path(__file__).resolve().parent.parent
SERVER = "websockets-server.default.svc.cluster.local"


def _manifests(*paths: str) -> list[dict[str, Any]]:
    docs = [d for p in paths for d in yaml.safe_load_all((ROOT / p).read_text()) if d]
    return docs


WORKLOADS = _manifests(
    "deploy/workloads/websockets-server.yaml", "deploy/workloads/websockets-client.yaml"
)
DR_UPGRADE = _manifests("deploy/h2-broken/destinationrule.yaml")
ALLOW_CONNECT = _manifests("deploy/h2/envoyfilter-h2-upgrade-wss.yaml")
ISTIOD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "istiod", "namespace": "istio-system"},
    "spec": {
        "template": {
            "metadata": {"labels": {"app": "istiod"}},
            "spec": {
                "containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.22.1"}]
            },
        }
    },
}


def _mesh_configmap(mesh: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": mesh},
    }


@pytest.fixture
def kube() -> Iterator[FakeMeshKube]:
    with FakeMeshKube(istio_versions=("v1beta1", "v1alpha3")) as fake:
        fake.add_pod(
            "default",
            "websockets-server-7d9f-abcde",
            {"app": "websockets-server", "pod-template-hash": "7d9f"},
        )
        yield fake


def _load(kube: FakeMeshKube, *objects: dict[str, Any]) -> None:
    for obj in objects:
        kube.add_object(obj)


def _doctor(kube: FakeMeshKube, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        app, ["doctor", "--kubeconfig", kube.kubeconfig_path, "--format", "json", *args]
    )
    out: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, out


def _server(out: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = next(r for r in out["services"] if r["service"] == SERVER)
    return row


def test_the_broken_variant_in_a_cluster_fails_with_the_fix(kube: FakeMeshKube) -> None:
    _load(kube, *WORKLOADS, *DR_UPGRADE)
    code, out = _doctor(kube)
    assert code == 1
    row = _server(out)
    assert (row["upgrade_path"], row["verdict"], row["cause"]) == (
        "h1-h2",
        "fail",
        "h2-connect-not-allowed",
    )
    assert "allow_connect: true" in row["remedy"]
    # v1 is not served (404) for any of the five Istio kinds read: DestinationRules,
    # EnvoyFilters, VirtualServices, Gateways and ServiceEntries
    assert kube.count_requests("mesh", "/apis/networking.istio.io/v1/") == 5
    assert kube.count_requests("mesh", "/apis/networking.istio.io/v1beta1/destinationrules") == 1


def test_the_fixed_variant_reads_filters_mesh_config_and_istio_version(kube: FakeMeshKube) -> None:
    _load(
        kube,
        *WORKLOADS,
        *DR_UPGRADE,
        *ALLOW_CONNECT,
        ISTIOD,
        _mesh_configmap("accessLogFile: /dev/stdout\n"),
    )
    code, out = _doctor(kube)
    assert code == 0
    row = _server(out)
    assert (row["upgrade_path"], row["verdict"]) == ("h1-h2", "ok")
    assert "proxyVersion '^1\\.*.*' matches 1.22.1" in row["evidence"]


def test_mesh_wide_upgrade_from_the_istio_configmap(kube: FakeMeshKube) -> None:
    _load(kube, *WORKLOADS, _mesh_configmap("h2UpgradePolicy: UPGRADE\n"))
    code, out = _doctor(kube)
    assert code == 1
    assert (
        "mesh-wide h2UpgradePolicy UPGRADE (ConfigMap istio-system/istio"
        in _server(out)["evidence"]
    )


def test_pods_stand_for_workloads_when_no_deployment_is_readable(kube: FakeMeshKube) -> None:
    service = next(
        o
        for o in WORKLOADS
        if o["kind"] == "Service" and o["metadata"]["name"] == "websockets-server"
    )
    _load(kube, service, *DR_UPGRADE)
    inventory = read_cluster(MeshReadSettings(kubeconfig=kube.kubeconfig_path))
    assert [w.kind for w in inventory.workloads] == ["Pod"]
    code, out = _doctor(kube)
    assert code == 1
    assert "Pod default/websockets-server-7d9f-abcde: no EnvoyFilter" in _server(out)["evidence"]


def test_namespaces_are_read_one_by_one_plus_the_root_namespace(kube: FakeMeshKube) -> None:
    _load(kube, *WORKLOADS, *DR_UPGRADE, *ALLOW_CONNECT, ISTIOD)
    code, out = _doctor(kube, "-n", "default")
    assert code == 0
    assert _server(out)["verdict"] == "ok"
    assert kube.count_requests("mesh", "/api/v1/services") == 0
    assert kube.count_requests("mesh", "/api/v1/namespaces/default/services") == 1
    assert kube.count_requests("mesh", "/namespaces/istio-system/envoyfilters") == 1
    assert kube.count_requests("mesh", "/apis/apps/v1/namespaces/istio-system/deployments") == 1


def test_same_verdicts_as_the_same_objects_in_files(kube: FakeMeshKube, tmp_path: Path) -> None:
    objects = [*WORKLOADS, *DR_UPGRADE, _mesh_configmap("h2UpgradePolicy: UPGRADE\n")]
    _load(kube, *objects)
    config = tmp_path / "all.yaml"
    config.write_text(yaml.safe_dump_all(objects))
    from_files = CliRunner().invoke(app, ["doctor", "--config", str(config), "--format", "json"])
    _, from_cluster = _doctor(kube)
    assert json.loads(from_files.stdout) == from_cluster


def test_forbidden_istio_resources_exit_2_naming_the_permission(kube: FakeMeshKube) -> None:
    _load(kube, *WORKLOADS)
    kube.deny("envoyfilters")
    result = CliRunner().invoke(app, ["doctor", "--kubeconfig", kube.kubeconfig_path])
    assert result.exit_code == 2
    assert "reading EnvoyFilters was refused (403" in result.stderr
    assert "envoyfilters" in result.stderr


def test_a_bad_token_exits_2(kube: FakeMeshKube, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(kube.kubeconfig_text(token="wrong"))
    result = CliRunner().invoke(app, ["doctor", "--kubeconfig", str(config)])
    assert result.exit_code == 2
    assert "401" in result.stderr


def test_no_api_server_exits_2(tmp_path: Path) -> None:
    with FakeMeshKube() as gone:
        text = gone.kubeconfig_text()
    config = tmp_path / "kubeconfig"
    config.write_text(text)
    result = CliRunner().invoke(app, ["doctor", "--kubeconfig", str(config)])
    assert result.exit_code == 2
    assert "cannot reach the API server" in result.stderr


def test_a_cluster_without_services_exits_2_naming_where_it_looked(kube: FakeMeshKube) -> None:
    _load(kube, *DR_UPGRADE)
    result = CliRunner().invoke(app, ["doctor", "--kubeconfig", kube.kubeconfig_path, "-n", "apps"])
    assert result.exit_code == 2
    assert "no Service found in namespace(s) apps of the cluster" in result.stderr
    assert result.stdout == ""


# -- the same verdicts as the YAML cases, served by the API --------------------------------

CASES = ROOT / "tests" / "doctor_cases"
SERVED_CASES = (
    "subset-policy-istio-test",
    "subset-split-bookinfo",
    "revision-canary-mesh",
    "revision-default-mesh",
    "revision-envoyfilter-other-revision",
    "serviceentry-mesh-upgrade",
    "gateway-server-knative-gateway-filter",
    "version-helm-istiod-image-1-24",
    "version-helm-injector-values-canary-1-11",
    "version-helm-injector-values-default",
)


def _case(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    case: dict[str, Any] = yaml.safe_load((CASES / f"{name}.yaml").read_text())
    paths = [f"tests/doctor_cases/base/{b}.yaml" for b in case.get("include", [])]
    paths += [f"testdata/doctor/{p}.yaml" for p in case.get("published", [])]
    return case, [*_manifests(*paths), *case.get("objects", [])]


def _case_args(case: dict[str, Any]) -> list[str]:
    settings = case.get("settings", {})
    args = []
    if "client_namespace" in settings:
        args += ["--client-namespace", settings["client_namespace"]]
    if "istio_version" in settings:
        args += ["--istio-version", settings["istio_version"]]
    return args


@pytest.mark.parametrize("name", SERVED_CASES)
def test_a_case_served_by_the_api_gives_the_verdicts_of_its_files(
    name: str, tmp_path: Path
) -> None:
    case, objects = _case(name)
    config = tmp_path / "all.yaml"
    config.write_text(yaml.safe_dump_all(objects, sort_keys=False))  # as written, as served
    args = ["--format", "json", *_case_args(case)]
    from_files = CliRunner().invoke(app, ["doctor", "--config", str(config), *args])
    with FakeMeshKube(istio_versions=("v1", "v1alpha3")) as fake:
        _load(fake, *objects)
        code, from_cluster = _doctor(fake, *_case_args(case))
    assert code == from_files.exit_code
    assert from_cluster == json.loads(from_files.stdout)
    rows = {(r["service"], r["port"], r.get("subset")): r for r in from_cluster["services"]}
    for want in case["expect"]:
        row = rows[(want["service"], want["port"], want.get("subset"))]
        for key in ("upgrade_path", "verdict", "cause"):
            assert row[key] == want.get(key, row[key]), key


def test_refused_optional_kinds_are_problems_naming_the_rbac_rule() -> None:
    """Without VirtualServices the subset is not known; without listing ConfigMaps the istio
    ConfigMap is still read by name (and its mesh-wide UPGRADE decides)."""
    _, objects = _case("subset-policy-istio-test")
    with FakeMeshKube() as fake:
        _load(fake, *objects, _mesh_configmap("h2UpgradePolicy: UPGRADE\n"))
        for resource in ("virtualservices", "gateways", "serviceentries", "namespaces"):
            fake.deny(resource)
        fake.deny_list("configmaps")
        code, out = _doctor(fake)
    assert code == 1
    [row] = out["services"]
    assert (row["service"], row.get("subset"), row["upgrade_path"]) == (
        "b.echo.svc.cluster.local",
        None,
        "h1-h2",
    )
    assert "mesh-wide h2UpgradePolicy UPGRADE (ConfigMap istio-system/istio" in row["evidence"]
    assert out["problems"] == [
        "VirtualServices not read (403 Forbidden): no subset routing is predicted; to read "
        'them, add to a ClusterRole the rule apiGroups: ["networking.istio.io"], '
        'resources: ["virtualservices"], verbs: ["list"]',
        "Gateways not read (403 Forbidden): only pods with Istio's gateway labels count as "
        'gateways; to read them, add to a ClusterRole the rule apiGroups: ["networking.istio.io"], '
        'resources: ["gateways"], verbs: ["list"]',
        "ServiceEntries not read (403 Forbidden): ServiceEntry hosts are not checked; to read "
        'them, add to a ClusterRole the rule apiGroups: ["networking.istio.io"], '
        'resources: ["serviceentries"], verbs: ["list"]',
        "Namespaces not read (403 Forbidden): a namespace's istio.io/rev revision is not known; "
        'to read them, add to a ClusterRole the rule apiGroups: [""], resources: '
        '["namespaces"], verbs: ["list"]',
        "ConfigMaps not read (403 Forbidden): only ConfigMap istio is read: other revisions' "
        "mesh configs and the injector's values (Istio's version) are not; to read them, add to "
        'a Role in namespace istio-system the rule apiGroups: [""], resources: ["configmaps"], '
        'verbs: ["list"]',
    ]


def test_scoped_reads_get_each_namespace_and_list_the_root_namespaces_config_maps() -> None:
    case, objects = _case("revision-canary-mesh")
    with FakeMeshKube() as fake:
        _load(fake, *objects)
        code, out = _doctor(fake, "-n", "default", "-n", "canary-apps", *_case_args(case))
        fake.deny("namespaces")
        _, refused = _doctor(fake, "-n", "default", "-n", "canary-apps", *_case_args(case))
    assert code == 1
    assert "ConfigMap istio-system/istio-canary (data.mesh)" in out["services"][0]["evidence"]
    gets = [path.partition("?")[0] for kind, path in fake.requests if kind == "mesh"]
    assert gets.count("/api/v1/namespaces/canary-apps") == 2  # once per run, by name
    assert gets.count("/api/v1/namespaces") == 0
    assert gets.count("/api/v1/namespaces/istio-system/configmaps") == 2
    assert fake.count_requests("mesh", "/namespaces/istio-system/virtualservices") == 2
    assert "ConfigMap istio-system/istio (data.mesh)" in refused["services"][0]["evidence"]
    assert refused["problems"] == [
        "Namespaces not read (403 Forbidden): a namespace's istio.io/rev revision is not known; "
        'to read them, add to a ClusterRole the rule apiGroups: [""], resources: '
        '["namespaces"], verbs: ["get"]'
    ]
