"""``wslog doctor`` end to end: the deploy/ variants, the lab's scenarios and captured logs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from analyzer.doctor import inventory_from_manifests, predict
from analyzer.doctor.load import parse_documents
from analyzer.vocab import Hop
from lab.scenarios import SCENARIOS, Scenario
from wslog.cli import app

ROOT = Path(__file__).resolve().parent.parent
SERVER = "websockets-server.default.svc.cluster.local"
VARIANTS = {  # deploy variant -> (lab scenario, upgrade path, verdict, cause)
    "h1": ("h1", "h1-h1", "ok", ""),
    "h2": ("h2", "h1-h2", "ok", ""),
    "h2-broken": ("h2-no-allow-connect", "h1-h2", "fail", "h2-connect-not-allowed"),
}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")


def _doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout


def _server_row(output: str) -> dict[str, Any]:
    rows = [r for r in json.loads(output)["services"] if r["service"] == SERVER]
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    return row


def _render(variant: str, tmp_path: Path) -> Path:
    done = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = tmp_path / f"{variant}.yaml"
    out.write_text(done.stdout)
    return out


OPTIONAL_KEYS = {"subset", "differs_on"}  # on a subset's row; with an unknown version


@needs_kubectl
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_deploy_variant_gets_the_verdict_its_lab_scenario_shows(
    variant: str, tmp_path: Path
) -> None:
    _, path, verdict, cause = VARIANTS[variant]
    code, out = _doctor("--config", str(_render(variant, tmp_path)), "--format", "json")
    row = _server_row(out)
    assert (row["upgrade_path"], row["verdict"], row["cause"]) == (path, verdict, cause)
    assert code == (1 if verdict == "fail" else 0)
    assert set(row) - OPTIONAL_KEYS == {
        "service",
        "namespace",
        "port",
        "upgrade_path",
        "verdict",
        "cause",
        "evidence",
        "remedy",
    }
    assert row["port"] == 8080 and row["namespace"] == "default"


@needs_kubectl
def test_a_kustomization_directory_is_rendered_with_kubectl() -> None:
    code, out = _doctor("--config", str(ROOT / "deploy" / "h2-broken"), "--format", "json")
    assert code == 1
    row = _server_row(out)
    assert row["cause"] == "h2-connect-not-allowed"
    assert "DestinationRule default/websockets-server" in row["evidence"]
    fixes = list(yaml.safe_load_all(row["remedy"]))
    assert [f["kind"] for f in fixes] == ["EnvoyFilter", "DestinationRule"]
    assert fixes[0]["spec"]["workloadSelector"]["labels"] == {"app": "websockets-server"}


@needs_kubectl
def test_applying_the_envoyfilter_remedy_makes_the_broken_variant_pass(tmp_path: Path) -> None:
    _, out = _doctor("--config", str(_render("h2-broken", tmp_path)), "--format", "json")
    fix = tmp_path / "fix.yaml"
    fix.write_text(yaml.safe_dump(next(yaml.safe_load_all(_server_row(out)["remedy"]))))
    code, out = _doctor(
        "--config", str(tmp_path / "h2-broken.yaml"), "--config", str(fix), "--format", "json"
    )
    assert code == 0
    assert _server_row(out)["upgrade_path"] == "h1-h2"


@needs_kubectl
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prediction_and_the_labs_logs_agree(variant: str, tmp_path: Path) -> None:
    scenario, path, verdict, _ = VARIANTS[variant]
    logs = sorted(str(p) for p in (ROOT / "testdata/lab/json" / scenario).glob("*.log"))
    args = ["--config", str(_render(variant, tmp_path)), "--format", "json"]
    _, out = _doctor(*args, *[a for log in logs for a in ("--logs", log)])
    row = _server_row(out)
    assert row["agreement"] == "agree", row["disagreements"]
    assert row["observed"]["upgrade_paths"] == [path]
    assert row["observed"]["verdict"] == verdict
    assert json.loads(out)["observed_only"] == []


@needs_kubectl
@pytest.mark.parametrize(
    ("variant", "scenario", "said"),
    [
        ("h1", "h2", "predicted h1-h1, observed h1-h2"),
        ("h2", "h2-no-allow-connect", "predicted ok, observed 1 connection(s) failing"),
        ("h2-broken", "h2", "predicted h2-connect-not-allowed, observed 1 connection(s) without"),
    ],
)
def test_disagreement_is_flagged_both_ways(
    variant: str, scenario: str, said: str, tmp_path: Path
) -> None:
    log_dir = ROOT / "testdata/lab/json" / scenario
    _, out = _doctor(
        "--config",
        str(_render(variant, tmp_path)),
        "--format",
        "json",
        "--logs",
        str(log_dir / "client.log"),
        "--logs",
        str(log_dir / "server.log"),
    )
    row = _server_row(out)
    assert row["agreement"] == "disagree"
    assert any(said in d for d in row["disagreements"]), row["disagreements"]


def _scenario_prediction(scenario: Scenario) -> tuple[str, str]:
    server = parse_documents((ROOT / "deploy/workloads/websockets-server.yaml").read_text(), "s")
    docs = server + parse_documents(scenario.istio_yaml, scenario.name)
    rows = [p for p in predict(inventory_from_manifests(docs)) if p.service == SERVER]
    return rows[0].upgrade_path.value, rows[0].verdict.value


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_lab_scenarios_istio_yaml_predicts_its_hop(scenario: Scenario) -> None:
    path, verdict = _scenario_prediction(scenario)
    assert path == ("h1-h2" if scenario.hop is Hop.H2 else "h1-h1")
    broken = scenario.hop is Hop.H2 and not scenario.allow_connect
    assert verdict == ("fail" if broken else "ok")


def test_the_table_shows_evidence_remedy_and_summary(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        (ROOT / "deploy/workloads/websockets-server.yaml").read_text()
        + "---\n"
        + (ROOT / "deploy/h2-broken/destinationrule.yaml").read_text()
    )
    code, out = _doctor("--config", str(config))
    assert code == 1
    assert "h2-connect-not-allowed" in out
    assert "apply ONE option" in out and "allow_connect: true" in out
    assert "1 service port(s), 1 failing" in out


def test_unreadable_config_exits_2_with_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    code, _ = _doctor("--config", str(bad))
    assert code == 2
    assert _doctor("--config", str(tmp_path / "missing.yaml"))[0] == 2


def test_a_directory_of_files_and_stdin_are_read(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a/server.yaml").write_text(
        (ROOT / "deploy/workloads/websockets-server.yaml").read_text()
    )
    (tmp_path / "a/dr.yml").write_text((ROOT / "deploy/h2-broken/destinationrule.yaml").read_text())
    code, out = _doctor("--config", str(tmp_path), "--format", "json")
    assert code == 1 and _server_row(out)["verdict"] == "fail"
    text = (ROOT / "deploy/workloads/websockets-server.yaml").read_text()
    result = CliRunner().invoke(app, ["doctor", "--config", "-", "--format", "json"], input=text)
    assert result.exit_code == 0 and _server_row(result.stdout)["upgrade_path"] == "h1-h1"


def test_istio_version_option_overrides_and_old_istio_fails_even_with_the_filter(
    tmp_path: Path,
) -> None:
    config = tmp_path / "h2.yaml"
    config.write_text(
        "---\n".join(
            (ROOT / p).read_text()
            for p in (
                "deploy/workloads/websockets-server.yaml",
                "deploy/h2-broken/destinationrule.yaml",
                "deploy/h2/envoyfilter-h2-upgrade-wss.yaml",
            )
        )
    )
    code, out = _doctor("--config", str(config), "--format", "json", "--istio-version", "1.11.8")
    assert code == 1
    assert "Istio 1.11.8 (--istio-version) is older than 1.12" in _server_row(out)["evidence"]
    code, out = _doctor("--config", str(config), "--format", "json", "--istio-version", "1.24.0")
    assert code == 0
    assert "proxyVersion '^1\\.*.*' matches 1.24.0" in _server_row(out)["evidence"]


SUBSET_SPLIT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: websockets-server, namespace: default}
spec:
  hosts: [websockets-server]
  http:
  - route:
    - {destination: {host: websockets-server, subset: v1}, weight: 50}
    - {destination: {host: websockets-server, subset: v3}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: websockets-server, namespace: default}
spec:
  host: websockets-server
  subsets:
  - {name: v1}
  - name: v3
    trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
"""


def test_logs_naming_a_subset_are_compared_with_that_subsets_row_only(tmp_path: Path) -> None:
    """The lab's h2 capture, its client cluster renamed to subset v3: it agrees with v3's h1-h2
    and leaves v1's h1-h1 unobserved (before, it counted for both and v1 disagreed)."""
    config = tmp_path / "split.yaml"
    base = ROOT / "tests/doctor_cases/base"
    config.write_text(
        "\n---\n".join(
            [(base / "server.yaml").read_text(), (base / "allow-connect.yaml").read_text()]
        )
        + "\n---\n"
        + SUBSET_SPLIT
    )
    logs = []
    for name in ("client.log", "server.log"):
        text = (ROOT / "testdata/lab/json/concurrent-h2" / name).read_text()
        (tmp_path / name).write_text(text.replace("outbound|8080||", "outbound|8080|v3|"))
        logs += ["--logs", str(tmp_path / name)]
    code, out = _doctor("--config", str(config), "--format", "json", *logs)
    assert code == 0
    rows = {r["subset"]: r for r in json.loads(out)["services"]}
    assert (rows["v1"]["upgrade_path"], rows["v1"]["agreement"]) == ("h1-h1", "not-observed")
    assert (rows["v3"]["upgrade_path"], rows["v3"]["agreement"]) == ("h1-h2", "agree")
    assert rows["v3"]["observed"]["connections"] == 3
