"""``wslog analyze`` on logs real Envoy wrote in the lab: each scenario classified as the
Istio configuration it mirrors predicts, in both formats, and the full JSON document pinned by
golden files (regenerate with ``WSLOG_UPDATE_GOLDEN=1 pytest tests/test_analyze_lab.py`` and
review the diff)."""

from __future__ import annotations

import os

import orjson
import polars as pl
import pytest

from analyzer.cli import AnalysisOptions, analyze_paths
from analyzer.report import to_json
from tests.conftest import ROOT, TESTDATA, golden

LAB = TESTDATA / "lab"
GOLDEN = ROOT / "tests" / "golden" / "analyze"
FORMATS = ("json", "text")

# scenario -> (connections, upgrade_path, outcome, cause, needs --all)
EXPECTED: dict[str, tuple[int, str, str, str, bool]] = {
    "h1": (1, "h1-h1", "upgraded", "", False),
    "h2": (1, "h1-h2", "upgraded", "", False),
    "h2-no-allow-connect": (1, "h1-h2", "failed", "h2-connect-not-allowed", False),
    "app-down": (1, "h1-h1", "failed", "upstream-connect-failure", True),
    "app-refuses": (1, "h1-h1", "rejected", "app-refused", True),
    "app-no-upgrade": (1, "h1-h1", "rejected", "app-did-not-upgrade", False),
    "app-no-upgrade-h2": (1, "h1-h2", "rejected", "app-did-not-upgrade", False),
    "client-drop": (1, "h1-h1", "upgraded", "", False),
    "client-drop-h2": (1, "h1-h2", "upgraded", "", False),
    "long-lived": (1, "h1-h1", "upgraded", "", False),
    "long-lived-typed": (1, "h1-h2", "upgraded", "", False),
    "concurrent-h2": (3, "h1-h2", "upgraded", "", False),
    "gateway-h1": (1, "h1-h1", "upgraded", "", False),
    "gateway-h2": (1, "h1-h2", "upgraded", "", False),
    "gateway-no-route": (1, "unknown", "failed", "no-route", True),
    "gateway-server-down": (1, "unknown", "failed", "upstream-connect-failure", True),
    "app-h2-no-allow-connect": (1, "unknown", "failed", "h2-connect-not-allowed", False),
    "h2-h1": (1, "h2-h1", "upgraded", "", False),
    "h2-h2": (1, "h2-h2", "upgraded", "", False),
}
# Scenarios whose connections are not paired: no server pod; a client sidecar's refused CONNECT
# alone in its log, which nothing places on a side.
PAIRING = {
    "gateway-no-route": "client-only",
    "gateway-server-down": "client-only",
    "app-h2-no-allow-connect": "unpaired",
}


def logs(fmt: str, scenario: str) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in sorted((LAB / fmt / scenario).glob("*.log"))]


def analyse(paths: list[str], include_all: bool = False, window: float = 60.0) -> pl.DataFrame:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return analyze_paths(
            paths, AnalysisOptions(include_all=include_all, pair_window=window)
        ).connections
    finally:
        os.chdir(cwd)


def test_every_lab_scenario_has_an_expectation() -> None:
    for fmt in FORMATS:
        captured = {p.name for p in (LAB / fmt).iterdir() if p.is_dir()}
        assert captured == set(EXPECTED), fmt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_lab_scenario_is_classified_as_its_configuration_predicts(fmt: str, scenario: str) -> None:
    count, path, outcome, cause, needs_all = EXPECTED[scenario]
    conns = analyse(logs(fmt, scenario), include_all=True)
    assert conns.height == count
    assert set(conns.get_column("pairing")) == {PAIRING.get(scenario, "paired")}
    assert set(conns.get_column("upgrade_path")) == {path}
    assert set(conns.get_column("outcome")) == {outcome}
    assert set(conns.get_column("cause")) == {cause}
    default = analyse(logs(fmt, scenario))
    assert default.height == (0 if needs_all else count)


@pytest.mark.parametrize("fmt", FORMATS)
def test_retried_attempts_merge_into_the_one_connection_the_client_saw(fmt: str) -> None:
    conns = analyse(logs(fmt, "app-down"), include_all=True)
    server_lines = (LAB / fmt / "app-down" / "server.log").read_text().splitlines()
    assert conns.item(0, "attempts") == len(server_lines) >= 2
    assert conns.item(0, "response_code") == 503


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", ["long-lived", "long-lived-typed"])
def test_periodic_entries_give_the_final_figures_once(fmt: str, scenario: str) -> None:
    conns = analyse(logs(fmt, scenario))
    client_lines = (LAB / fmt / scenario / "client.log").read_text().splitlines()
    assert len(client_lines) >= 3
    final = orjson.loads(client_lines[-1]) if fmt == "json" else None
    if final is not None:
        assert conns.item(0, "bytes_sent") == final["bytes_sent"]
        assert conns.item(0, "duration_ms") == final["duration"]
    assert conns.item(0, "duration_ms") >= 3000


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_scenarios_together_in_any_order_give_the_same_connections(fmt: str) -> None:
    paths = [p for scenario in sorted(EXPECTED) for p in logs(fmt, scenario)]
    forward = analyse(paths, include_all=True)
    backward = analyse(paths[::-1], include_all=True)
    expected = sum(count for count, *_ in EXPECTED.values())
    assert forward.height == expected
    want: dict[str, int] = {}
    for scenario, (count, *_) in EXPECTED.items():
        want[PAIRING.get(scenario, "paired")] = want.get(PAIRING.get(scenario, "paired"), 0) + count
    assert dict(forward.get_column("pairing").value_counts().rows()) == want
    columns = ["request_id", "upgrade_path", "outcome", "cause", "pairing", "duration_ms"]
    assert forward.select(columns).sort(columns).equals(backward.select(columns).sort(columns))


def _golden_document(fmt: str, scenario: str) -> bytes:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = analyze_paths(
            logs(fmt, scenario), AnalysisOptions(include_all=True, pair_window=60.0)
        )
    finally:
        os.chdir(cwd)
    return to_json(result) + b"\n"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_json_document_matches_golden(fmt: str, scenario: str) -> None:
    actual = _golden_document(fmt, scenario)
    assert orjson.loads(actual) == orjson.loads(golden(GOLDEN / fmt / f"{scenario}.json", actual))


def test_golden_files_have_no_strays() -> None:
    for fmt in FORMATS:
        names = {p.stem for p in (GOLDEN / fmt).glob("*.json")}
        assert names == set(EXPECTED), fmt
