"""``wslog analyze``: istio-proxy logs in (saved files, or a cluster's pods read as they are
now), one explained row per WebSocket out.

The command lives in the composition root because ``--kubernetes`` reads pods through
``exporter.kube`` (the only package that talks to Kubernetes), which the analyzer must not
import; files and pods both go through ``analyzer.cli.analyze_sources`` with one
``AnalysisOptions``, so both print the same report from the same pipeline.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from analyzer.cli import AnalysisOptions, analyze_paths, analyze_sources, command_formats
from analyzer.correlate import PAIR_WINDOW_S
from analyzer.errors import InputError, WslogError
from analyzer.inputs import InputSource
from analyzer.lines import MAX_LINE_BYTES
from analyzer.pipeline import AnalysisResult
from analyzer.report import render_table, report_console, write_binary
from analyzer.timerange import BOUND_HELP, TimeRange, parse_bound
from analyzer.vocab import Cause, LineResult, Outcome
from exporter.settings import KubeSettings

if TYPE_CHECKING:
    from exporter.kube.snapshot import PodLog

CONTAINER = "istio-proxy"
PREFETCH = 8  # pods whose log requests are sent ahead while the analysis reads one


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    NDJSON = "ndjson"
    CSV = "csv"
    PARQUET = "parquet"


MAX_LINE_HELP = (
    "Longest line read, in bytes; a longer one is counted malformed (too-long), nothing else "
    "is lost."
)
FAIL_ON_HELP = (
    "Exit 1 when any connection is failed, rejected, or has this cause "
    "(e.g. h2-connect-not-allowed); one line on stderr names them. Repeatable. Exit 2 when "
    "the input held no access-log entry at all (the gate checked nothing)."
)
KUBERNETES_HELP = (
    "Read the cluster instead of files: the istio-proxy container of every pod -n and -l "
    "select (sidecars, and Istio's gateways, whose container has that name too), as the log "
    "API serves it now (no follow), each restarted container's previous instance included. "
    "Needs get/list on pods and get on pods/log."
)
SINCE_HELP = (
    f"Only connections open at or after this: {BOUND_HELP}. With --kubernetes the log API "
    "is asked only for lines written since then (less --pair-window). Connections left out are "
    "counted in the report."
)
UNTIL_HELP = f"Only connections that started before this: {BOUND_HELP}."


@dataclass(frozen=True)
class Cluster:
    """Which pods ``--kubernetes`` reads, and through which kubeconfig."""

    namespaces: tuple[str, ...]
    selector: str | None
    context: str | None
    kubeconfig: str | None

    def settings(self) -> KubeSettings:
        explicit = self.kubeconfig is not None or self.context is not None
        return KubeSettings(
            namespaces=tuple(dict.fromkeys(self.namespaces)),
            label_selector=self.selector or "",
            container=CONTAINER,
            kubeconfig=self.kubeconfig,
            context=self.context,
            in_cluster=False if explicit else None,
            max_concurrent_streams=PREFETCH,
            stream_idle_timeout_s=120.0,
        )

    def describe(self) -> str:
        where = f"namespace(s) {', '.join(self.namespaces)}" if self.namespaces else "any namespace"
        chosen = f" with labels {self.selector}" if self.selector else ""
        return f"{where}{chosen}"

    def given(self) -> list[str]:
        """The cluster options given (they mean nothing without --kubernetes)."""
        named = {
            "--namespace": bool(self.namespaces),
            "--selector": self.selector is not None,
            "--context": self.context is not None,
            "--kubeconfig": self.kubeconfig is not None,
        }
        return [name for name, present in named.items() if present]


def analyze(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Log files, directories (recursive), globs, or - for stdin; .gz is read too. "
            "kubectl logs (with --timestamps or --prefix), CRI files from /var/log/pods and "
            "Docker json-file logs are recognised. None with --kubernetes.",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            "-f",
            help="Report format. table, ndjson, csv and parquet are written a block of "
            "connections at a time (memory stays flat on any input); json is one document "
            "and holds every connection in memory.",
        ),
    ] = OutputFormat.TABLE,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here, not stdout.")
    ] = None,
    connections: Annotated[
        bool, typer.Option("--connections", help="table: also list every connection.")
    ] = False,
    include_all: Annotated[
        bool,
        typer.Option(
            "--all", help="Treat every HTTP request as a candidate, not only WebSocket evidence."
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="The mesh's access-log format if not Istio's default: an Envoy format string, "
            "a JSON format object, or @file holding either."
        ),
    ] = None,
    keep_query: Annotated[
        bool, typer.Option(help="Keep query strings in paths (they may carry secrets).")
    ] = False,
    fail_on: Annotated[list[str] | None, typer.Option(help=FAIL_ON_HELP)] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first malformed entry.")] = False,
    pair_window: Annotated[
        float, typer.Option(help="Seconds an entry waits for the other sidecar's entry.")
    ] = PAIR_WINDOW_S,
    window: Annotated[
        float | None, typer.Option(hidden=True, help="Deprecated name of --pair-window.")
    ] = None,
    clock_skew: Annotated[
        float, typer.Option(help="Tolerated clock difference between pods, seconds.")
    ] = 1.0,
    max_line_bytes: Annotated[int, typer.Option(help=MAX_LINE_HELP)] = MAX_LINE_BYTES,
    since: Annotated[str | None, typer.Option(help=SINCE_HELP, show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help=UNTIL_HELP, show_default=False)] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help=KUBERNETES_HELP)] = False,
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="--kubernetes: a namespace to read (repeatable; default all)."
        ),
    ] = None,
    selector: Annotated[
        str | None,
        typer.Option(
            "--selector", "-l", help="--kubernetes: label selector, e.g. app=websockets-server."
        ),
    ] = None,
    context: Annotated[str | None, typer.Option(help="--kubernetes: kubeconfig context.")] = None,
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="--kubernetes: kubeconfig file (default: KUBECONFIG, ~/.kube/config)."),
    ] = None,
) -> None:
    """Correlate client and server sidecar entries of every WebSocket, classify its upgrade path
    and outcome, and explain each failure with its cause and fix."""
    cluster = Cluster(tuple(namespace or ()), selector, context, kubeconfig)
    if window is not None:
        typer.echo("wslog analyze: --window is deprecated: use --pair-window", err=True)
        pair_window = window
    with _errors():
        checks = _check_options(fail_on or [], output_format, output)
        options = AnalysisOptions(
            log_format=log_format,
            include_all=include_all,
            keep_query=keep_query,
            strict=strict,
            pair_window=pair_window,
            clock_skew=clock_skew,
            max_line_bytes=max_line_bytes,
            time_range=_time_range(since, until),
            keep_connections=output_format is not OutputFormat.TABLE or connections,
        )
        if problems := options.problems():
            raise WslogError("; ".join(problems))
        _check_inputs(paths or [], kubernetes, cluster)
        if kubernetes:
            result, where = _read_cluster(cluster, options)
        else:
            result, where = analyze_paths(paths or [], options), " ".join(paths or [])
    _write(result, output_format, output, connections)
    nothing_in_range = result.found == 0 and result.outside_range > 0
    if result.lines[LineResult.ENTRY] == 0 or nothing_in_range:
        _say_nothing_read(result, where, gate=bool(checks))
    if _should_fail(result, checks):
        raise typer.Exit(1)


def _time_range(since: str | None, until: str | None) -> TimeRange:
    now = datetime.now(UTC)
    return TimeRange(
        since=parse_bound("--since", since, now=now) if since else None,
        until=parse_bound("--until", until, now=now) if until else None,
    )


def _check_inputs(paths: list[str], kubernetes: bool, cluster: Cluster) -> None:
    if kubernetes and paths:
        raise WslogError(
            "--kubernetes reads the cluster: give it without files, or analyze the files alone"
        )
    if not kubernetes and not paths:
        raise WslogError("give log files (or - for stdin), or --kubernetes to read the cluster")
    if not kubernetes and (given := cluster.given()):
        raise WslogError(f"{', '.join(given)}: only with --kubernetes")


def _read_cluster(cluster: Cluster, options: AnalysisOptions) -> tuple[AnalysisResult, str]:
    """Every selected pod's log streamed into the analysis, and what was read (for messages);
    notes on stderr name the pods that had nothing to read."""
    # The Kubernetes client is imported only here: reading files starts without it.
    from exporter.kube.snapshot import Snapshot

    formats = command_formats(options.log_format)  # before any request: a bad format stops here
    with Snapshot(cluster.settings(), since=_ask_since(options)) as snapshot:
        pods = snapshot.pods()
        _note_pods("have not started", snapshot.not_started)
        if not pods:
            raise WslogError(
                f"no pod with a started {CONTAINER} container in {cluster.describe()}: check "
                "-n and -l (kubectl get pods -n NAMESPACE -l SELECTOR), and --context"
            )
        _say_reading(pods, options.time_range)
        sources = [InputSource(pod.source, opener=snapshot.opener(pod)) for pod in pods]
        result = analyze_sources(sources, options, formats=formats, unit="pods")
        _note_pods("had no log when read (gone, or not running)", snapshot.no_log)
    return result, f"the {CONTAINER} logs of {len(pods)} pod(s)"


def _ask_since(options: AnalysisOptions) -> datetime | None:
    """What to ask the log API for: ``--since`` less the pair window and the clock skew, so
    that a connection open in the range comes with its other sidecar's entry even when that
    one ended a little earlier (the range then decides on whole connections)."""
    since = options.time_range.since if options.time_range else None
    margin = timedelta(seconds=options.pair_window + options.clock_skew)
    return since - margin if since is not None else None


def _say_reading(pods: list[PodLog], time_range: TimeRange | None) -> None:
    restarted = sum(pod.restarted for pod in pods)
    again = f", {restarted} restarted (previous instance included)" if restarted else ""
    start = time_range.since if time_range else None
    since = f" since {start:%Y-%m-%dT%H:%M:%SZ}" if start else ""
    typer.echo(f"wslog analyze: reading {CONTAINER} of {len(pods)} pod(s){again}{since}", err=True)


def _note_pods(what: str, pods: list[str]) -> None:
    if pods:
        more = f" and {len(pods) - 5} more" if len(pods) > 5 else ""
        shown = ", ".join(sorted(pods)[:5]) + more
        typer.echo(f"note: {len(pods)} pod(s) with {CONTAINER} {what}: {shown}", err=True)


def _check_options(
    fail_on: list[str], output_format: OutputFormat, output: Path | None
) -> set[str]:
    valid = {Outcome.FAILED.value, Outcome.REJECTED.value} | {c.value for c in Cause if c.value}
    unknown = sorted(set(fail_on) - valid)
    if unknown:
        raise WslogError(f"--fail-on {', '.join(unknown)}: choose from {', '.join(sorted(valid))}")
    if output_format is OutputFormat.PARQUET and output is None:
        raise WslogError("--format parquet needs --output FILE (Parquet is binary)")
    return set(fail_on)


def _say_nothing_read(result: AnalysisResult, where: str, *, gate: bool) -> None:
    """No access-log entry to analyse: say so (a report of nothing is not a clean bill of
    health); a ``--fail-on`` gate that checked nothing exits 2."""
    hint = (
        "Give istio-proxy logs (kubectl logs POD -c istio-proxy), or --log-format if the mesh "
        "writes its own format."
    )
    if result.lines[LineResult.ENTRY]:
        found = (
            f"each of the {result.outside_range} WebSocket connection(s) in {where} was open "
            f"only outside {result.time_range.describe()}: nothing to report"
        )
        hint = "Widen --since/--until."
    elif result.total_lines:
        found = (
            f"none of the {result.total_lines} line(s) in {where} is an access-log entry: "
            "nothing was analysed"
        )
    else:
        found = f"no line in {where}: nothing was analysed"
    typer.echo(f"wslog analyze: warning: {found}. {hint}", err=True)
    if gate:
        typer.echo("wslog analyze: --fail-on checked nothing: exit 2", err=True)
        raise typer.Exit(2)


def _should_fail(result: AnalysisResult, checks: set[str]) -> bool:
    """Whether ``--fail-on`` trips; if so, one line on stderr says which connections did."""
    groups = result.digest.tripped(checks) if checks else []
    if not groups:
        return False
    parts_text = [
        f"{n} {outcome}{'/' + cause if cause else ''} on {service or 'unknown'} (e.g. {rid or '-'})"
        for outcome, cause, service, n, rid in groups
    ]
    typer.echo(f"wslog analyze: --fail-on tripped by {'; '.join(parts_text)}", err=True)
    return True


def _write(
    result: AnalysisResult, fmt: OutputFormat, output: Path | None, connections: bool
) -> None:
    try:
        if fmt is OutputFormat.TABLE:
            if output is None:
                render_table(result, report_console(), connections=connections)
            else:
                with output.open("w", encoding="utf-8") as handle:
                    render_table(result, report_console(handle), connections=connections)
        elif output is None:
            write_binary(result, fmt.value, sys.stdout.buffer)
        else:
            write_binary(result, fmt.value, output)
    except OSError as exc:
        typer.echo(f"wslog analyze: cannot write {output}: {exc.strerror}", err=True)
        raise typer.Exit(2) from exc


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (InputError, WslogError) as exc:
        typer.echo(f"wslog analyze: {exc}", err=True)
        raise typer.Exit(2) from exc
