"""Build ``dashboards/wslog.json`` from code with Grafana's ``grafana-foundation-sdk``.

The dashboard is generated, not hand-edited, so that every query is written once, its metric
names come from ``exporter/metrics.py`` (checked by ``tests/test_dashboards.py``) and each
failure panel's description is the cause's explanation and remedy from ``analyzer.vocab``.

    .venv/bin/python dashboards/build.py           # rewrite dashboards/wslog.json
    .venv/bin/python dashboards/build.py --check   # exit 1 when the committed JSON is stale
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from analyzer.vocab import EXPLANATIONS, Outcome, Pairing

OUTPUT = Path(__file__).resolve().parent / "wslog.json"
UID = "wslog-websockets"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# Connection families carry these labels; the namespace / service variables filter on them.
SEL = 'destination_namespace=~"$namespace", destination_service=~"$service"'
UNPAIRED_HELP = (
    "Connections of which only one sidecar's entry was seen. client-only: the server sidecar "
    "did not log (access logging off on the server workload, or its pods are not watched). "
    "server-only: the client sidecar did not log, or the client's namespace is not watched. "
    "unpaired: an entry without a cluster from a stream holding both sides (stdin). "
    "Remedy: enable Istio access logging on both workloads (Telemetry accessLogging) and point "
    "the exporter at both namespaces."
)

LEGEND = (
    VizLegendOptions()
    .display_mode(common.LegendDisplayMode.TABLE)
    .placement(common.LegendPlacement.BOTTOM)
    .show_legend(True)
    .calcs(["mean", "max", "lastNotNull"])
)
TOOLTIP = (
    VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
)


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    fmt: PromQueryFormat = PromQueryFormat.TIME_SERIES


@dataclass(frozen=True)
class Spec:
    """One panel: what it shows, how wide it is, and its queries."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    stacked: bool = False
    extra: dict[str, float] = field(default_factory=dict)


# Outcome matchers: the failures (not upgraded), and every outcome known (all but open).
NOT_UPGRADED = f"{Outcome.FAILED}|{Outcome.REJECTED}"
KNOWN = f"{Outcome.UPGRADED}|{Outcome.REJECTED}|{Outcome.FAILED}"


def conn_rate(selector: str, by: str) -> str:
    inner = f"wslog_connections_total{{{SEL}{selector}}}"
    return f"sum by ({by}) (rate({inner}[{RATE}]))"


def traffic_panels() -> list[Spec]:
    upgraded = conn_rate(f', outcome="{Outcome.UPGRADED}"', "destination_service")
    known = conn_rate(f', outcome=~"{KNOWN}"', "destination_service")
    # "or 0 * known": a service whose every upgrade fails shows 0, not an empty panel.
    success = f"{upgraded}\n/\n{known}\nor\n0 * {known}"
    failed = f', outcome=~"{NOT_UPGRADED}"'
    return [
        Spec(
            "Connections per second by upgrade path and outcome",
            "WebSocket connections counted once when their outcome is known. upgrade_path is "
            "<app-to-client-sidecar>-<sidecar-to-sidecar>; a change from h1-h1 to h1-h2 means "
            "the mesh hop switched to HTTP/2 (DestinationRule h2UpgradePolicy).",
            (Query(conn_rate("", "upgrade_path, outcome"), "{{upgrade_path}} {{outcome}}"),),
            unit="cps",
            stacked=True,
        ),
        Spec(
            "Upgrade success ratio per destination service",
            "Upgraded / (upgraded + rejected + failed) per destination service. Below 1: see "
            "the failure panels below for the cause and its remedy.",
            (Query(success, "{{destination_service}}"),),
            unit="percentunit",
            extra={"min": 0, "max": 1},
        ),
        Spec(
            "Failures per second by cause",
            "Rejected (the app answered without upgrading) and failed (the mesh failed the "
            "upgrade) connections by cause. Each cause has its own panel below whose "
            "description names the remedy.",
            (Query(conn_rate(failed, "cause, outcome"), "{{cause}} ({{outcome}})"),),
            unit="cps",
            stacked=True,
        ),
        Spec(
            "Open connections",
            "Connections seen starting (start or periodic entries) but not closed yet. Needs "
            "Envoy's access_log_flush_interval or start entries; zero otherwise.",
            (
                Query(
                    f"sum by (destination_service, upgrade_path) (wslog_connections_open{{{SEL}}})",
                    "{{destination_service}} {{upgrade_path}}",
                ),
            ),
        ),
    ]


def cause_panels() -> list[Spec]:
    specs = []
    for cause, text in EXPLANATIONS.items():
        selector = f', outcome=~"{NOT_UPGRADED}", cause="{cause.value}"'
        specs.append(
            Spec(
                f"Failures: {cause.value}",
                f"{text.summary}\n\nRemedy: {text.remedy}",
                (
                    Query(
                        conn_rate(selector, "destination_service, upgrade_path"),
                        "{{destination_service}} {{upgrade_path}}",
                    ),
                ),
                unit="cps",
                width=8,
                height=6,
            )
        )
    return specs


def duration_panels() -> list[Spec]:
    bucket = f"wslog_connection_duration_seconds_bucket{{{SEL}}}"
    quantile = "histogram_quantile({q}, sum by (le, destination_service) (rate({b}[{r}])))"
    return [
        Spec(
            "Connection duration (upgraded connections)",
            "How long upgraded WebSocket connections lived, as a heatmap of the histogram "
            "wslog_connection_duration_seconds.",
            (
                Query(
                    f"sum by (le) (increase({bucket}[{RATE}]))", "{{le}}", PromQueryFormat.HEATMAP
                ),
            ),
            kind="heatmap",
            unit="s",
        ),
        Spec(
            "Connection duration p50 / p95 per destination service",
            "Quantiles of the lifetime of upgraded connections. A p95 pinned at a round value "
            "(e.g. 300 s) usually is an idle or stream timeout cutting connections.",
            tuple(
                Query(quantile.format(q=q, b=bucket, r=RATE), f"p{p} {{{{destination_service}}}}")
                for q, p in ((0.5, 50), (0.95, 95))
            ),
            unit="s",
        ),
        Spec(
            "WebSocket bytes per second",
            "Frame bytes of upgraded connections after the handshake, as the client sidecar "
            "saw them: sent = to the client app, received = from the client app.",
            (
                Query(
                    "sum by (destination_service, direction) "
                    f"(rate(wslog_connection_bytes_total{{{SEL}}}[{RATE}]))",
                    "{{destination_service}} {{direction}}",
                ),
            ),
            unit="Bps",
            width=24,
        ),
    ]


def input_panels() -> list[Spec]:
    unpaired = f', pairing!="{Pairing.PAIRED}"'
    return [
        Spec(
            "Unpaired connections per second",
            UNPAIRED_HELP,
            (
                Query(
                    conn_rate(unpaired, "destination_service, pairing"),
                    "{{destination_service}} {{pairing}}",
                ),
            ),
            unit="cps",
        ),
        Spec(
            "Pending entries and evictions",
            "Entries waiting for their counterpart in the correlation window, and entries "
            "that left it unpaired (timeout) or were evicted by the size cap. Evictions that "
            "keep rising on one side mean that side's counterpart is never seen.",
            (
                Query("sum(wslog_pending_entries)", "pending"),
                Query(
                    f"sum by (side, reason) (rate(wslog_pending_evicted_total[{RATE}]))",
                    "evicted/s {{side}} {{reason}}",
                ),
            ),
        ),
        Spec(
            "Log lines per second by result",
            "Every input line is an access-log entry, not an access log (skipped: application "
            "or Envoy logs interleaved in the stream) or malformed.",
            (
                Query(
                    f"sum by (result) (rate(wslog_log_lines_total[{RATE}]))",
                    "{{result}}",
                ),
            ),
            unit="/s",
            stacked=True,
        ),
        Spec(
            "Malformed lines per second by reason",
            "Lines that looked like access-log entries but could not be decoded. "
            "format-mismatch usually means a custom access-log format: pass it to the "
            "exporter with --format.",
            (
                Query(
                    f"sum by (reason) (rate(wslog_malformed_lines_total[{RATE}]))",
                    "{{reason}}",
                ),
            ),
            unit="/s",
        ),
    ]


def health_panels() -> list[Spec]:
    return [
        Spec(
            "Exporter ready",
            "1 when every source of the exporter is healthy (same as /readyz).",
            (Query("min(wslog_ready)", "ready"),),
            kind="stat",
            width=6,
            height=6,
        ),
        Spec(
            "Label sets folded (series cap)",
            "Observations whose label set exceeded --max-series and were folded into "
            "__overflow__. Non-zero: raise --max-series or narrow the watched namespaces.",
            (Query("sum(wslog_series_overflow_total)", "folded"),),
            kind="stat",
            width=6,
            height=6,
        ),
        Spec(
            "Log streams active by kind",
            "Log streams currently open (pod log follows, files).",
            (Query("sum by (kind) (wslog_streams_active)", "{{kind}}"),),
            width=12,
            height=6,
        ),
        Spec(
            "Stream restarts",
            "Log streams reopened after an error or end of stream, per kind and reason. A "
            "steady rate is normal for Kubernetes (containerd ends follows after ~4 h); bursts "
            "mean API errors or crash-looping pods.",
            (
                Query(
                    f"sum by (kind, reason) (increase(wslog_stream_restarts_total[{RATE}]))",
                    "{{kind}} {{reason}}",
                ),
            ),
        ),
        Spec(
            "How far behind the newest entry is (10 most stale sources)",
            "Now minus the end time of the newest access-log entry read from each source. "
            "Growing steadily: the source stopped logging or the exporter is not reading it.",
            (
                Query(
                    "topk(10, time() - wslog_source_newest_entry_timestamp_seconds)",
                    "{{source}}",
                ),
            ),
            unit="s",
        ),
    ]


ROWS: tuple[tuple[str, Callable[[], list[Spec]]], ...] = (
    ("Connections", traffic_panels),
    ("Failures by cause (each panel's description names the remedy)", cause_panels),
    ("Duration and bytes", duration_panels),
    ("Pairing and input", input_panels),
    ("Exporter health", health_panels),
)


def target(query: Query, ref: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .format(query.fmt)
        .ref_id(ref)
        .datasource(DATASOURCE)
    )


def panel(spec: Spec) -> Builder[model.Panel]:
    built: timeseries.Panel | heatmap.Panel | stat.Panel
    if spec.kind == "heatmap":
        built = (
            heatmap.Panel()
            .calculate(False)
            .y_axis(heatmap.YAxisConfig().unit(spec.unit))
            .show_tooltip()
            .show_y_histogram()
        )
    elif spec.kind == "stat":
        last = ReduceDataOptions().calcs(["lastNotNull"]).values(False)
        built = (
            stat.Panel()
            .unit(spec.unit)
            .no_value("0")
            .reduce_options(last)
            .graph_mode(common.BigValueGraphMode.AREA)
            .color_mode(common.BigValueColorMode.VALUE)
        )
    else:
        built = (
            timeseries.Panel()
            .unit(spec.unit)
            .no_value("0")
            .fill_opacity(10)
            .legend(LEGEND)
            .tooltip(TOOLTIP)
        )
        if spec.stacked:
            built = built.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    built = built.title(spec.title).description(spec.description).datasource(DATASOURCE)
    built = built.height(spec.height).span(spec.width)
    if "min" in spec.extra:
        built = built.min(spec.extra["min"]).max(spec.extra["max"])
    for ref, query in zip("ABCDEFGH", spec.queries, strict=False):
        built = built.with_target(target(query, ref))
    return built


def variables() -> Iterator[Builder[model.VariableModel]]:
    yield gdash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    yield query_variable(
        "namespace", "Namespace", "label_values(wslog_connections_total, destination_namespace)"
    )
    yield query_variable(
        "service",
        "Destination service",
        'label_values(wslog_connections_total{destination_namespace=~"$namespace"}, '
        "destination_service)",
    )


def query_variable(name: str, label: str, query: str) -> gdash.QueryVariable:
    return (
        gdash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )


def build() -> dict[str, object]:
    board = (
        gdash.Dashboard("wslog: WebSocket upgrades through Istio sidecars")
        .uid(UID)
        .description(
            "WebSocket connections through Istio / Envoy sidecars, from their access logs: "
            "upgrade paths, outcomes, causes with remedies, and the exporter's own health."
        )
        .tags(["wslog", "istio", "websocket"])
        .time("now-6h", "now")
        .refresh("1m")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    for variable in variables():
        board = board.with_variable(variable)
    for title, make in ROWS:
        board = board.with_row(gdash.Row(title))
        for spec in make():
            board = board.with_panel(panel(spec))
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run .venv/bin/python dashboards/build.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
