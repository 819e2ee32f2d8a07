"""The Grafana dashboard: a fresh build equals the committed JSON, it has its variables and a
panel for every metric family and failure cause, every query is valid PromQL (promtool parses
it) and uses only the metric names, labels and label values that ``exporter.metrics.Metrics``
really serves.

The helpers here (exposition, query extraction, PromQL checks) are shared with
``tests/test_alerts.py`` and ``tests/test_dashboards_e2e.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from analyzer.vocab import EXPLANATIONS, Cause, LineResult, Outcome, Pairing, RejectReason
from exporter.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DASHBOARD_JSON = DASHBOARDS / "wslog.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (make setup-test)"
)

# What Grafana substitutes before a query reaches Prometheus (All selected for multi variables).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": ".*", "$service": ".*"}
# Labels Prometheus adds to every scraped series; the exporter cannot serve them.
TARGET_LABELS = frozenset({"job", "instance"})
# Connections use 11 label sets; past SERIES_CAP sources the source label folds.
SERIES_CAP = 20
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$", re.S)


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wslog_dashboard_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana writes it) for every panel target."""
    return [(p["title"], t["expr"]) for p in panels(board) for t in p["targets"]]


def variable_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, the series selector of its label_values query)."""
    found = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"])
            assert match, f"variable {var['name']}: not a label_values(selector, label) query"
            found.append((var["name"], match["selector"]))
    return found


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


# --- what the exporter serves -----------------------------------------------------------------


@dataclass
class Exposition:
    """Sample names, their label names, and the values seen per label."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[str, set[str]] = field(default_factory=dict)


def feed(metrics: Metrics) -> None:
    """A few of everything: each outcome, cause, pairing and path, lines, sources, streams."""
    for i, (outcome, cause) in enumerate(outcome_causes()):
        pairing = list(Pairing)[i % len(Pairing)]
        metrics.record_connection(connection_row(f"svc{i % 3}", outcome, cause, pairing, i))
    metrics.set_open([connection_row("svc0", Outcome.OPEN, Cause.NONE, Pairing.PAIRED, 0)])
    metrics.record_lines({r.value: 3 for r in LineResult}, {r.value: 1 for r in RejectReason})
    metrics.pending.set(2)
    for side in ("client", "server"):
        metrics.evicted.labels(side=side, reason="window").inc()
    metrics.streams_active.labels(kind="file").set(2)
    metrics.stream_restarts.labels(kind="file", reason="eof").inc()
    metrics.record_newest("app/ws-client/istio-proxy", 1_700_000_000.0)
    metrics.ready.set(1)
    metrics.build.info({"version": "0.1.0"})


def outcome_causes() -> Iterator[tuple[Outcome, Cause]]:
    yield Outcome.UPGRADED, Cause.NONE
    for cause in EXPLANATIONS:
        app = cause in (Cause.APP_REFUSED, Cause.APP_DID_NOT_UPGRADE)
        yield (Outcome.REJECTED if app else Outcome.FAILED), cause


def connection_row(
    service: str, outcome: Outcome, cause: Cause, pairing: Pairing, i: int
) -> dict[str, object]:
    paths = ("h1-h1", "h1-h2", "h2-h1", "h2-h2", "unknown")
    return {
        "destination_service": f"{service}.app.svc.cluster.local",
        "destination_namespace": "app",
        "source_workload": "client",
        "source_namespace": "app",
        "upgrade_path": paths[i % len(paths)],
        "outcome": outcome.value,
        "cause": cause.value,
        "pairing": pairing.value,
        "duration_ms": 1500 + i,
        "bytes_sent": 100 + i,
        "bytes_received": 50 + i,
    }


def exposition() -> Exposition:
    """The exposition of a fresh ``Metrics`` fed with ``feed``, the sources past its series cap."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, max_series=SERIES_CAP)
    feed(metrics)
    for n in range(SERIES_CAP + 1):
        metrics.record_newest(f"app/pod-{n}/istio-proxy", 1_700_000_000.0)
    return parse_exposition(generate_latest(registry).decode())


def parse_exposition(text: str) -> Exposition:
    seen = Exposition()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen.labels.setdefault(sample.name, set()).update(sample.labels)
            for label, value in sample.labels.items():
                seen.values.setdefault(label, set()).add(value)
    return seen


# --- checking PromQL against it ---------------------------------------------------------------

SELECTOR = re.compile(r"(?P<name>[a-zA-Z_:][\w:]*)?\s*\{(?P<matchers>[^{}]*)\}")
MATCHER = re.compile(r'(?P<label>\w+)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"')
GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\((?P<labels>[^)]*)\)"
)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
LITERAL_ALTERNATION = re.compile(r"^[\w.-]*(\|[\w.-]*)*$")


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bwslog_\w+", STRING.sub('""', expr)))


def problems(expr: str, served: Exposition) -> list[str]:
    """Every metric name, label or label value in ``expr`` that the exporter does not serve."""
    found = [f"metric {name} is not served" for name in metric_names(expr) - served.labels.keys()]
    used_metrics = metric_names(expr) & served.labels.keys()
    known_labels = set().union(*(served.labels[m] for m in used_metrics)) | TARGET_LABELS
    for selector in SELECTOR.finditer(expr):
        found += selector_problems(selector["name"] or "", selector["matchers"], served)
    for group in GROUPING.finditer(expr):
        for label in filter(None, (x.strip() for x in group["labels"].split(","))):
            if label not in known_labels:
                found.append(f"grouping label {label} is on none of {sorted(used_metrics)}")
    return found


def selector_problems(name: str, matchers: str, served: Exposition) -> list[str]:
    if not name.startswith("wslog_"):
        return [
            f"{name}{{{m['label']}}}"
            for m in MATCHER.finditer(matchers)
            if m["label"] not in TARGET_LABELS
        ]
    found = []
    for m in MATCHER.finditer(matchers):
        label, value = m["label"], m["value"]
        if label not in served.labels.get(name, set()):
            found.append(f"{name} has no label {label}")
        elif "$" not in value and value != ".*":
            found += value_problems(name, label, m["op"], value, served)
    return found


def value_problems(name: str, label: str, op: str, value: str, served: Exposition) -> list[str]:
    if op in ("=~", "!~"):
        assert LITERAL_ALTERNATION.match(value), f"{name}: check regex {value!r} by hand"
        wanted = value.split("|")
    else:
        wanted = [value]
    known = served.values.get(label, set())
    return [f"{name}{{{label}}} never has the value {v!r}" for v in wanted if v not in known]


def promtool_check(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Parse every expression with promtool, as recording rules of a throwaway rules file."""
    rules = [{"record": f"wslog_dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def all_dashboard_exprs() -> list[str]:
    board = dashboard()
    return [substitute(e) for _, e in panel_queries(board)] + [
        substitute(s) for _, s in variable_queries(board)
    ]


# --- tests ------------------------------------------------------------------------------------


def test_committed_json_equals_a_fresh_build() -> None:
    pytest.importorskip(
        "grafana_foundation_sdk", reason="grafana-foundation-sdk is not installed: pip install it"
    )
    assert build_module().render() == DASHBOARD_JSON.read_text(encoding="utf-8"), (
        "dashboards/wslog.json is stale: run .venv/bin/python dashboards/build.py"
    )


def test_dashboard_has_datasource_namespace_and_service_variables() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, label in (("namespace", "destination_namespace"), ("service", "destination_service")):
        assert variables[name]["type"] == "query"
        assert variables[name]["query"].endswith(f", {label})")
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    assert board["uid"] and board["title"]


def test_every_panel_queries_the_datasource_variable() -> None:
    for p in panels(dashboard()):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_connection_panels_filter_on_namespace_and_service() -> None:
    for title, expr in panel_queries(dashboard()):
        for name in metric_names(expr):
            if name.startswith(("wslog_connection", "wslog_connections")):
                assert '$namespace"' in expr and '$service"' in expr, title


def test_each_cause_has_a_panel_whose_description_names_the_remedy() -> None:
    by_title = {p["title"]: p for p in panels(dashboard())}
    for cause, text in EXPLANATIONS.items():
        panel = by_title[f"Failures: {cause.value}"]
        assert text.remedy in panel["description"]
        assert f'cause="{cause.value}"' in panel["targets"][0]["expr"]


def test_every_metric_family_has_a_panel_and_unpaired_connections_one_of_their_own() -> None:
    metrics_shown = set().union(*(metric_names(e) for _, e in panel_queries(dashboard())))
    assert metrics_shown >= {
        "wslog_connections_total",
        "wslog_connection_duration_seconds_bucket",
        "wslog_connection_bytes_total",
        "wslog_connections_open",
        "wslog_log_lines_total",
        "wslog_malformed_lines_total",
        "wslog_pending_entries",
        "wslog_pending_evicted_total",
        "wslog_streams_active",
        "wslog_stream_restarts_total",
        "wslog_source_newest_entry_timestamp_seconds",
        "wslog_series_overflow_total",
        "wslog_ready",
    }
    kinds = {p["type"] for p in panels(dashboard())}
    assert "heatmap" in kinds
    unpaired = [e for _, e in panel_queries(dashboard()) if 'pairing!="paired"' in e]
    assert unpaired


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


def test_provisioning_file_points_grafana_at_a_dashboard_folder() -> None:
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "wslog.yaml").read_text())
    assert provider["apiVersion"] == 1
    (only,) = provider["providers"]
    assert only["type"] == "file" and only["options"]["path"].startswith("/")


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = all_dashboard_exprs()
    assert len(exprs) > 20
    result = promtool_check(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rejects_a_parse_error(tmp_path: Path) -> None:
    result = promtool_check(["sum by (x) (rate(wslog_ready[1m])"], tmp_path)
    assert result.returncode != 0


def test_every_dashboard_query_uses_only_what_the_exporter_serves() -> None:
    served = exposition()
    for expr in all_dashboard_exprs():
        assert problems(expr, served) == [], expr


def test_the_exposition_check_catches_wrong_names_labels_and_values() -> None:
    served = exposition()
    assert problems('sum(rate(wslog_connection_total{outcome="failed"}[1m]))', served)
    assert problems('sum(rate(wslog_connections_total{result="failed"}[1m]))', served)
    assert problems('sum(rate(wslog_connections_total{outcome="faild"}[1m]))', served)
    assert problems('sum(rate(wslog_connections_total{cause=~"no-route|dns"}[1m]))', served)
    assert problems("sum by (pod) (wslog_connections_open)", served)
    assert not problems(
        'sum by (cause) (rate(wslog_connections_total{cause="no-route"}[1m]))', served
    )


def test_the_exposition_has_every_family_and_only_sources_overflow() -> None:
    served = exposition()
    assert served.values["metric"] == {"wslog_source_newest_entry_timestamp_seconds"}
    assert {
        "wslog_series_overflow_total",
        "wslog_build_info",
        "wslog_ready",
    } <= served.labels.keys()
    assert set(served.values["cause"]) == {c.value for c in Cause}
