"""``python -m wslog doctor`` as a newcomer and a CI gate meet it: what it says and how it exits.

Every test runs the real entry point in a subprocess (stdout a pipe, not a terminal) and asserts
the exit code: 0 all checked ports pass, 1 a failure (predicted, or in the logs and not
predicted), 2 nothing was checked. Configurations are the deploy/ manifests and the broken
cases of ``tests/doctor_cases``; logs are the lab's captures in ``testdata/lab``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "doctor_cases"
LAB = ROOT / "testdata" / "lab" / "json"
SERVER_SVC = ROOT / "deploy" / "workloads" / "websockets-server.yaml"
CLIENT_SVC = ROOT / "deploy" / "workloads" / "websockets-client.yaml"
DR_UPGRADE = ROOT / "deploy" / "h2-broken" / "destinationrule.yaml"
ALLOW_CONNECT = ROOT / "deploy" / "h2" / "envoyfilter-h2-upgrade-wss.yaml"
SERVER = "websockets-server.default.svc.cluster.local"
HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TIMEOUT_S = 60


def _doctor(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real entry point; a narrow COLUMNS shows that nothing pasteable is wrapped."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "wslog", "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        cwd=ROOT,
        env={**env, "COLUMNS": "60"},
    )


def _config(tmp_path: Path, *parts: Path) -> Path:
    out = tmp_path / "config.yaml"
    out.write_text("---\n".join(p.read_text() for p in parts))
    return out


def _logs(scenario: str) -> list[str]:
    return [
        a for side in ("client", "server") for a in ("--logs", str(LAB / scenario / f"{side}.log"))
    ]


# -- --kubeconfig -----------------------------------------------------------------------------


def test_a_missing_kubeconfig_is_named_as_missing_not_asked_for(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    done = _doctor("--kubeconfig", missing)
    assert done.returncode == 2
    assert f"{missing}: no such file" in done.stderr
    assert "pass --kubeconfig" not in done.stderr
    assert done.stdout == ""


# -- nothing to check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "what", ["empty-directory", "access-log", "only-a-destinationrule", "only-tcp-ports"]
)
def test_a_config_with_nothing_to_check_exits_2_saying_so(what: str, tmp_path: Path) -> None:
    path = tmp_path / what
    if what == "empty-directory":
        path.mkdir()
    elif what == "access-log":
        path = LAB / "h2" / "client.log"
    elif what == "only-a-destinationrule":
        path.write_text(DR_UPGRADE.read_text())
    else:
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}}
        service["spec"] = {"ports": [{"port": 3306, "name": "tcp-mysql"}]}
        path.write_text(yaml.safe_dump(service))
    done = _doctor("--config", path)
    assert done.returncode == 2, done.stdout
    reason = "no Service port can carry" if what == "only-tcp-ports" else "no Service found"
    assert f"{reason}" in done.stderr and f"in {path}" in done.stderr
    assert "--config takes the Kubernetes/Istio YAML" in done.stderr
    assert "access logs go to --logs" in done.stderr
    assert "0 service port(s)" not in done.stdout


# -- --logs -----------------------------------------------------------------------------------


def test_logs_failing_where_the_config_predicts_ok_fail_the_gate(tmp_path: Path) -> None:
    config = _config(tmp_path, SERVER_SVC, DR_UPGRADE, ALLOW_CONNECT)
    done = _doctor("--config", config, *_logs("h2-no-allow-connect"))
    assert done.returncode == 1, done.stderr
    assert "disagree" in done.stdout
    [line] = [line for line in done.stderr.splitlines() if line]
    assert "the logs show h2-connect-not-allowed failures the configuration does not" in line
    assert f"({SERVER}: 1 connection(s))" in line


def test_logs_failing_for_a_service_the_config_lacks_fail_the_gate(tmp_path: Path) -> None:
    done = _doctor("--config", _config(tmp_path, CLIENT_SVC), *_logs("h2-no-allow-connect"))
    assert done.returncode == 1, done.stderr
    assert f"observed only: {SERVER}" in done.stdout
    assert "does not predict" in done.stderr


def test_a_hop_disagreement_without_a_failure_only_informs(tmp_path: Path) -> None:
    done = _doctor("--config", _config(tmp_path, SERVER_SVC), *_logs("h2"))
    assert done.returncode == 0, done.stderr
    assert "predicted h1-h1, observed h1-h2" in done.stdout
    assert done.stderr == ""


# -- the remedy -------------------------------------------------------------------------------


def _case_config(name: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """A broken case of tests/doctor_cases as one file, and the options its settings stand for."""
    case: dict[str, Any] = yaml.safe_load((CASES / f"{name}.yaml").read_text())
    texts = [(CASES / "base" / f"{n}.yaml").read_text() for n in case.get("include", [])]
    texts += [yaml.safe_dump(o, sort_keys=False) for o in case.get("objects", [])]
    config = tmp_path / f"{name}.yaml"
    config.write_text("---\n".join(texts))
    settings = case.get("settings", {})
    args = [f"--{k.replace('_', '-')}={v}" for k, v in sorted(settings.items())]
    return config, args


def _yaml_documents(out: str) -> list[str]:
    """The table output's YAML documents: each from a ``---`` line to the next or a blank line."""
    docs: list[list[str]] = []
    inside = False
    for line in out.splitlines():
        if line == "---":
            docs.append([])
            inside = True
        elif not line.strip():
            inside = False
        elif inside:
            docs[-1].append(line)
    return ["\n".join(d) + "\n" for d in docs]


@pytest.mark.parametrize(
    ("case", "kinds"),
    [
        ("dr-short-name", ["EnvoyFilter", "DestinationRule"]),
        ("port-level-over-rule", ["EnvoyFilter", "DestinationRule"]),
        ("app-protocol-http2", ["EnvoyFilter", "DestinationRule"]),
        ("istio-older-than-1-12", ["DestinationRule"]),
    ],
)
def test_each_remedy_option_pasted_alone_makes_doctor_pass(
    case: str, kinds: list[str], tmp_path: Path
) -> None:
    config, settings = _case_config(case, tmp_path)
    broken = _doctor("--config", config, *settings)
    assert broken.returncode == 1, broken.stderr
    docs = _yaml_documents(broken.stdout)
    assert [d.splitlines()[0].partition(":")[0] for d in docs] == [
        f"# Option {n}" for n in range(1, len(kinds) + 1)
    ]
    for number, doc in enumerate(docs, start=1):
        manifest = yaml.safe_load(doc)
        assert manifest["kind"] == kinds[number - 1]
        assert doc.splitlines()[1] == f"apiVersion: {manifest['apiVersion']}"
        if manifest["kind"] == "EnvoyFilter":  # COLUMNS=60 folds nothing
            assert f"'@type': {HCM_TYPE}\n" in doc
        fix = tmp_path / f"option-{number}.yaml"
        fix.write_text(doc)
        fixed = _doctor("--config", config, "--config", fix, *settings)
        assert fixed.returncode == 0, f"option {number}:\n{doc}\n{fixed.stdout}"
