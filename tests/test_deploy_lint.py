"""The exporter's image and manifests pass security linting: a structural lint of the Dockerfile
(there is no Docker engine here to build it) and checkov's Kubernetes and Dockerfile checks.

checkov runs from its own virtualenv (its pinned dependencies conflict with ours), as a
subprocess with ``--skip-download`` so it never calls its vendor's API. Where it is not installed
the checkov tests skip, except under CI (``CI`` set), where a missing install is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, KUBECTL, ROOT

DOCKERFILE = ROOT / "Dockerfile"
EXPORTER_VARIANTS = (
    "exporter",
    "exporter/namespaced",
    "exporter/daemonset",
    "exporter/sharded",
)
CHECKOV = Path(os.environ.get("WSLOG_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
BUILD_TOOLS = ("gcc", "g++", "cc ", "make", "build-essential", "apt-get", "apk ", "cargo", "rustc")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by build stage (one group per FROM), continuation lines joined."""
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[Instruction]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "instructions before the first FROM"
        stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _all(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def test_dockerfile_is_multi_stage_with_pinned_bases(stages: list[list[Instruction]]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0].args.split()[0]
        exact_tag = re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image)
        digest = re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", image)
        assert exact_tag or digest, f"FROM {image}: pin an exact version tag or a digest"


def test_final_stage_runs_as_a_numeric_non_root_user(stages: list[list[Instruction]]) -> None:
    users = _all(stages[-1], "USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_final_stage_has_no_build_tools(stages: list[list[Instruction]]) -> None:
    final = stages[-1]
    for run in _all(final, "RUN"):
        assert "pip install" not in run and "pip3 install" not in run, run
        for tool in BUILD_TOOLS:
            assert tool not in f"{run} ", f"build tool {tool.strip()!r} in the final stage: {run}"
    copies = _all(final, "COPY")
    assert copies and all(c.startswith("--from=") for c in copies), "copy only built artefacts"
    assert any("pip uninstall" in run for run in _all(final, "RUN")), "drop pip from the image"


def test_image_entrypoint_runs_the_exporter_on_the_probed_port(
    stages: list[list[Instruction]],
) -> None:
    final = stages[-1]
    assert json.loads(_all(final, "ENTRYPOINT")[-1]) == ["wslog"]
    command = json.loads(_all(final, "CMD")[-1])
    assert command[0] == "exporter" and command[command.index("--listen") + 1] == "0.0.0.0:9090"
    assert "/healthz" in _all(final, "HEALTHCHECK")[-1]


def test_build_stage_copies_every_package_pyproject_installs(
    stages: list[list[Instruction]],
) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    packages = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert packages is not None
    names = {p.strip(' "*') for p in packages.group(1).split(",")}
    copied = {c.split()[0].rstrip("/") for c in _all(stages[0], "COPY")}
    assert names <= copied
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {f"!{name}/" for name in names} <= set(ignore)


# --- checkov -------------------------------------------------------------------------------------


def _checkov() -> Path:
    if CHECKOV.is_file():
        return CHECKOV
    message = f"checkov not installed at {CHECKOV} (see deploy/README.md, 'Checks')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run_checkov(target: Path, framework: str) -> dict[str, Any]:
    command = [str(_checkov()), "--compact", "--skip-download", "--output", "json"]
    command += ["--framework", framework, "--file", str(target)]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_VERSION_CHECK": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env, check=False
    )
    assert result.stdout.strip(), f"checkov printed nothing:\n{result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    reports: list[dict[str, Any]] = report if isinstance(report, list) else [report]
    (found,) = [r for r in reports if r.get("check_type") == framework]
    return found


def _rendered(variant: str, tmp_path: Path) -> Path:
    text = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    target = tmp_path / (variant.replace("/", "-") + ".yaml")
    target.write_text(text, encoding="utf-8")
    return target


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", EXPORTER_VARIANTS)
def test_checkov_kubernetes_checks_pass(variant: str, tmp_path: Path) -> None:
    report = _run_checkov(_rendered(variant, tmp_path), "kubernetes")
    assert report["summary"]["passed"] > 0
    assert _failures(report) == []
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} skipped without a written reason"


@pytest.mark.timeout(300)
def test_checkov_dockerfile_checks_pass(tmp_path: Path) -> None:
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    report = _run_checkov(tmp_path / "Dockerfile", "dockerfile")
    assert report["summary"]["passed"] > 0
    assert _failures(report) == []


def test_every_checkov_skip_names_a_check_and_a_reason() -> None:
    annotated = 0
    for path in DEPLOY.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            annotations = ((doc or {}).get("metadata") or {}).get("annotations") or {}
            for key, value in annotations.items():
                if key.startswith("checkov.io/skip"):
                    annotated += 1
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{path}: {value}"
                    assert len(reason) > 20, f"{path}: {check} needs a written reason"
    assert annotated > 0
