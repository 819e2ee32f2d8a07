"""Each deploy/ variant is a lab scenario: what the manifests ask Istio to configure is what the
lab's Envoy sidecars are configured with (lab.envoy_config), so the lab's logs and
testdata stand for what a cluster with these manifests writes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyzer.vocab import Hop
from lab.envoy_config import (
    Ports,
    client_cluster_protocol_options,
    log_format,
    server_bootstrap,
    server_hcm_http2_options,
)
from lab.scenarios import BY_NAME, LogFormat, Scenario
from tests.deploy.manifests import DEPLOY, ROOT, find, render

Obj = dict[str, Any]
VARIANT_SCENARIO = {"h1": "h1", "h2": "h2", "h2-broken": "h2-no-allow-connect"}
POLICY_HOP = {"DO_NOT_UPGRADE": Hop.H1, "UPGRADE": Hop.H2}
# What h2UpgradePolicy makes istiod put in the outbound cluster's explicit_http_config.
POLICY_CODEC = {"DO_NOT_UPGRADE": "http_protocol_options", "UPGRADE": "http2_protocol_options"}
PORTS = Ports(app=10080, server_inbound=15006, server_admin=15000, client_outbound=15001,
              client_admin=15002)  # fmt: skip


def _objects(variant: str) -> tuple[Obj, ...]:
    return render(Path(variant))


def _scenario(variant: str) -> Scenario:
    return BY_NAME[VARIANT_SCENARIO[variant]]


def _policy(variant: str) -> str:
    rule = find(_objects(variant), "DestinationRule", "websockets-server")
    policy: str = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["h2UpgradePolicy"]
    return policy


def _server_inbound_patches(objects: tuple[Obj, ...]) -> list[Obj]:
    """HCM values of the EnvoyFilters that reach the websockets-server sidecar's inbound HCM."""
    values = []
    for obj in objects:
        if obj["kind"] != "EnvoyFilter":
            continue
        selector = obj["spec"].get("workloadSelector", {}).get("labels", {})
        if not selector.items() <= {"app": "websockets-server"}.items():
            continue
        for patch in obj["spec"]["configPatches"]:
            if patch["match"].get("context") in ("SIDECAR_INBOUND", None):
                values.append(patch["patch"]["value"]["typed_config"])
    return values


def _server_hcm(scenario: Scenario) -> Obj:
    bootstrap = server_bootstrap(scenario, PORTS, "/dev/stdout", LogFormat.JSON)
    (listener,) = bootstrap["static_resources"]["listeners"]
    (network_filter,) = listener["filter_chains"][0]["filters"]
    hcm: Obj = network_filter["typed_config"]
    return hcm


def proto_merge(target: Obj, patch: Obj) -> Obj:
    """Istio's EnvoyFilter MERGE (protobuf merge): messages merge, lists append, scalars replace."""
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = proto_merge(merged[key], value)
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = merged[key] + copy.deepcopy(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@pytest.mark.parametrize("variant", VARIANT_SCENARIO)
def test_envoyfilter_patch_is_the_lab_server_connection_manager_setting(variant: str) -> None:
    patches = _server_inbound_patches(_objects(variant))
    http2 = [p["http2_protocol_options"] for p in patches if "http2_protocol_options" in p]
    patched = http2[0] if http2 else None
    assert len(http2) <= 1
    assert patched == server_hcm_http2_options(_scenario(variant))


@pytest.mark.parametrize("variant", VARIANT_SCENARIO)
def test_destination_rule_policy_is_the_lab_cluster_protocol(variant: str) -> None:
    policy = _policy(variant)
    scenario = _scenario(variant)
    assert scenario.hop is POLICY_HOP[policy]
    (options,) = client_cluster_protocol_options(scenario).values()
    assert set(options["explicit_http_config"]) == {POLICY_CODEC[policy]}


@pytest.mark.parametrize("variant", VARIANT_SCENARIO)
def test_variant_objects_are_the_scenarios_istio_yaml(variant: str) -> None:
    objects = _objects(variant)
    lab_docs = [d for d in yaml.safe_load_all(_scenario(variant).istio_yaml) if d]
    mesh_objects = [o for o in objects if o["apiVersion"].startswith("networking.istio.io/")]
    assert len(mesh_objects) == len(lab_docs)
    for doc in lab_docs:
        ours = copy.deepcopy(find(objects, doc["kind"], doc["metadata"]["name"]))
        for patch in ours["spec"].get("configPatches", []):
            patch["match"].pop("proxy", None)  # the walkthrough's proxyVersion: '^1\.*.*'
        assert ours["spec"] == doc["spec"]


def test_merging_the_h2_envoyfilter_turns_the_broken_server_into_the_working_one() -> None:
    broken = _server_hcm(_scenario("h2-broken"))
    merged = broken
    for value in _server_inbound_patches(_objects("h2")):
        merged = proto_merge(merged, value)
    assert broken != merged == _server_hcm(_scenario("h2"))


def test_access_log_envoyfilter_is_the_lab_typed_periodic_logging() -> None:
    scenario = BY_NAME["long-lived-typed"]
    lab_hcm = _server_hcm(scenario)
    access_log = find(render(Path("access-log")), "EnvoyFilter", "wslog-access-log")
    for patch in access_log["spec"]["configPatches"]:
        value = patch["patch"]["value"]["typed_config"]
        (logger,) = value["access_log"]
        assert logger["typed_config"]["log_format"] == log_format(scenario, LogFormat.JSON)
        ours, lab = value["access_log_options"], lab_hcm["access_log_options"]
        assert set(ours) == set(lab)
        assert ours["flush_access_log_on_new_request"] == lab["flush_access_log_on_new_request"]


def test_wslog_analyze_reads_the_lab_logs_with_the_shipped_format_file() -> None:
    """The README's command, `wslog analyze --log-format @deploy/access-log/wslog-format.json`,
    on the lab's captured logs of the scenario that uses exactly this format."""
    logs = ROOT / "testdata" / "lab" / "json" / "long-lived-typed"
    fmt = "@" + str(DEPLOY / "access-log" / "wslog-format.json")
    command = [sys.executable, "-m", "wslog", "analyze", "--format", "ndjson", "--log-format", fmt]
    command += [str(logs / "client.log"), str(logs / "server.log")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    (connection,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert connection["upgrade_path"] == "h1-h2"
    assert connection["outcome"] == "upgraded"
    assert connection["pairing"] == "paired"
