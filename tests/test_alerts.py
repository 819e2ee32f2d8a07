"""The alert rules: promtool accepts them, their unit tests pass (and fail when a rule is
broken), every expression uses only what the exporter serves, and every alert has a summary, a
description with the remedy and a runbook section in dashboards/README.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_dashboards import DASHBOARDS, PROMTOOL, exposition, needs_promtool, problems

RULES = DASHBOARDS / "alerts.rules.yaml"
UNIT_TESTS = sorted((DASHBOARDS / "tests").glob("*.test.yaml"))
README = DASHBOARDS / "README.md"
EXPECTED_ALERTS = {
    "WslogWebSocketUpgrade503s",
    "WslogH2ConnectNotAllowed",
    "WslogUpgradePathChanged",
    "WslogUnpairedEntriesRising",
    "WslogExporterDown",
    "WslogSourceStale",
    "WslogSeriesCapped",
}


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules()}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


@needs_promtool
def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def alert_checks() -> dict[str, set[str]]:
    """Per alert, whether the unit tests expect it firing somewhere and silent somewhere."""
    seen: dict[str, set[str]] = {}
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                kind = "firing" if check.get("exp_alerts") else "silent"
                seen.setdefault(check["alertname"], set()).add(kind)
    return seen


def test_every_alert_has_unit_tests_firing_and_silent() -> None:
    assert set(by_name()) == EXPECTED_ALERTS
    seen = alert_checks()
    for alert in EXPECTED_ALERTS:
        assert seen.get(alert) == {"firing", "silent"}, alert


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("WslogWebSocketUpgrade503s", ") > 0.01", ") > 0"),  # drop the minimum rate
        ("WslogWebSocketUpgrade503s", ") > 0.05", ") > 0.001"),  # ratio too low
        ("WslogWebSocketUpgrade503s", 'cause!="downstream-disconnect"', 'cause!="none"'),
        ("WslogH2ConnectNotAllowed", "offset 10m", "offset 1m"),
        ("WslogUpgradePathChanged", "offset 1h", "offset 2h"),
        ("WslogUnpairedEntriesRising", ") > 0.2", ") > 0.9"),
        ("WslogExporterDown", "== 0", ">= 0"),
        ("WslogExporterDown", 'or\nabsent(up{job=~".*wslog.*"})', ""),  # no-target case
        ("WslogSourceStale", "> 1800", "> 3600"),
        ("WslogSeriesCapped", "> 0", ">= 0"),
    ],
)
@needs_promtool
def test_unit_tests_fail_when_a_rule_is_broken(
    tmp_path: Path, alert: str, old: str, new: str
) -> None:
    """Each unit test can fail: a mutated rule must make promtool test rules fail."""
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    mutated = 0
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert and old in rule["expr"]:
                rule["expr"] = rule["expr"].replace(old, new)
                mutated += 1
    assert mutated == 1, f"{old!r} not found in {alert}"
    (tmp_path / "alerts.rules.yaml").write_text(yaml.safe_dump(loaded, sort_keys=False))
    (tmp_path / "tests").mkdir()
    for path in UNIT_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    result = promtool("test", "rules", *(f"tests/{p.name}" for p in UNIT_TESTS), cwd=tmp_path)
    assert result.returncode != 0, f"unit tests still pass with {alert}: {old} -> {new}"


def test_every_rule_uses_only_what_the_exporter_serves() -> None:
    served = exposition()
    for rule in rules():
        assert problems(rule["expr"], served) == [], rule["alert"]


def test_every_alert_has_summary_description_runbook_and_severity() -> None:
    readme = README.read_text(encoding="utf-8")
    sections = set(re.findall(r"^### (\w+)$", readme, re.M))
    for name, rule in by_name().items():
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "Remedy" in annotations["description"] or "Fix" in annotations["description"], name
        assert annotations["runbook"] == f"dashboards/README.md#{name.lower()}", name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert name in sections, f"no '### {name}' runbook section in {README}"
    assert sections >= EXPECTED_ALERTS


def test_h2_connect_not_allowed_is_critical_and_its_annotation_carries_the_fix() -> None:
    rule = by_name()["WslogH2ConnectNotAllowed"]
    assert rule["labels"]["severity"] == "critical"
    description = " ".join(rule["annotations"]["description"].split())
    assert "allow_connect: true" in description
    assert "h2UpgradePolicy: DO_NOT_UPGRADE" in description


def test_503_alert_counts_failures_except_client_disconnects_per_service() -> None:
    rule = by_name()["WslogWebSocketUpgrade503s"]
    expr = rule["expr"]
    assert 'outcome="failed", cause!="downstream-disconnect"' in expr
    assert expr.count("sum by (destination_namespace, destination_service)") == 3
    assert 120 <= seconds(rule["for"]) <= 300


def test_for_durations_are_realistic() -> None:
    for name, rule in by_name().items():
        assert 60 <= seconds(rule["for"]) <= 900, name
