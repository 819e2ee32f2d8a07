"""``wslog analyze``: saved istio-proxy logs in, one explained row per WebSocket out."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from analyzer.correlate import CorrelationSettings
from analyzer.decode import Decoded
from analyzer.errors import InputError, WslogError
from analyzer.inputs import InputSet, expand_all
from analyzer.lines import MAX_LINE_BYTES
from analyzer.options import log_formats
from analyzer.pipeline import AnalysisResult, Pipeline, analyze_chunks
from analyzer.report import render_table, report_console, write_binary
from analyzer.vocab import Cause, LineResult, Outcome


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


def analyze(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Log files, directories (recursive), globs, or - for stdin; .gz is read too. "
            "kubectl logs (with --timestamps or --prefix), CRI files from /var/log/pods and "
            "Docker json-file logs are recognised.",
            show_default=False,
        ),
    ],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Report format.")
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
    window: Annotated[
        float, typer.Option(help="Seconds an entry waits for the other sidecar's entry.")
    ] = 10.0,
    clock_skew: Annotated[
        float, typer.Option(help="Tolerated clock difference between pods, seconds.")
    ] = 1.0,
    max_line_bytes: Annotated[int, typer.Option(help=MAX_LINE_HELP)] = MAX_LINE_BYTES,
) -> None:
    """Correlate client and server sidecar entries of every WebSocket, classify its upgrade path
    and outcome, and explain each failure with its cause and fix."""
    with _errors():
        checks = _check_options(fail_on or [], window, clock_skew, output_format, output)
        if max_line_bytes < 1:
            raise WslogError("--max-line-bytes must be at least 1")
        result = run(
            paths,
            log_format,
            include_all,
            keep_query,
            strict,
            window,
            clock_skew,
            max_line_bytes=max_line_bytes,
        )
    _write(result, output_format, output, connections)
    if result.lines[LineResult.ENTRY] == 0:
        _say_nothing_read(result, paths, gate=bool(checks))
    if _should_fail(result, checks):
        raise typer.Exit(1)


def run(
    paths: list[str],
    log_format: str | None,
    include_all: bool,
    keep_query: bool,
    strict: bool,
    window: float,
    clock_skew: float,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> AnalysisResult:
    formats = log_formats(log_format, warn=lambda m: typer.echo(f"warning: {m}", err=True))
    expansion = expand_all(paths)
    _note_skipped(expansion.skipped)
    inputs = InputSet(expansion.sources, formats, strict=strict, max_line_bytes=max_line_bytes)
    settings = CorrelationSettings(
        window=timedelta(seconds=window), clock_skew=timedelta(seconds=clock_skew)
    )
    pipeline = Pipeline(formats=formats, settings=settings, keep_query=keep_query)
    chunks = _with_progress(inputs)
    return analyze_chunks(chunks, inputs.low_watermark, pipeline=pipeline, include_all=include_all)


def _note_skipped(skipped: list[Path]) -> None:
    if skipped:
        typer.echo(
            f"note: skipped {len(skipped)} file(s) in directories that do not look like logs "
            f"(e.g. {skipped[0]}); name a file explicitly to read it.",
            err=True,
        )


def _with_progress(inputs: InputSet) -> Iterator[Decoded]:
    """Progress on stderr when it is a terminal: bytes read of the total and the time left
    when every input is a file, else the lines decoded so far."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield from inputs
        return
    total = inputs.total_bytes()
    lines_read = TextColumn("{task.fields[lines]:,} lines")
    columns: tuple[ProgressColumn, ...] = (SpinnerColumn(), lines_read, TimeElapsedColumn())
    if total is not None:
        columns = (BarColumn(), DownloadColumn(), lines_read, TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("reading", total=total, lines=0)
        lines = 0
        for chunk in inputs:
            lines += chunk.lines
            progress.update(task, completed=inputs.bytes_read(), lines=lines)
            yield chunk


def _check_options(
    fail_on: list[str],
    window: float,
    clock_skew: float,
    output_format: OutputFormat,
    output: Path | None,
) -> set[str]:
    valid = {Outcome.FAILED.value, Outcome.REJECTED.value} | {c.value for c in Cause if c.value}
    unknown = sorted(set(fail_on) - valid)
    if unknown:
        raise WslogError(f"--fail-on {', '.join(unknown)}: choose from {', '.join(sorted(valid))}")
    if window <= 0 or clock_skew < 0:
        raise WslogError("--window must be positive and --clock-skew not negative")
    if output_format is OutputFormat.PARQUET and output is None:
        raise WslogError("--format parquet needs --output FILE (Parquet is binary)")
    return set(fail_on)


def _say_nothing_read(result: AnalysisResult, paths: list[str], *, gate: bool) -> None:
    """No access-log entry at all: say so (a report of nothing is not a clean bill of health);
    a ``--fail-on`` gate that checked nothing exits 2."""
    where = " ".join(paths)
    if result.total_lines:
        found = f"none of the {result.total_lines} line(s) in {where} is an access-log entry"
    else:
        found = f"no line in {where}"
    typer.echo(
        f"wslog analyze: warning: {found}: nothing was analysed. Give istio-proxy logs "
        "(kubectl logs POD -c istio-proxy), or --log-format if the mesh writes its own format.",
        err=True,
    )
    if gate:
        typer.echo("wslog analyze: --fail-on checked nothing: exit 2", err=True)
        raise typer.Exit(2)


def _should_fail(result: AnalysisResult, checks: set[str]) -> bool:
    """Whether ``--fail-on`` trips; if so, one line on stderr says which connections did."""
    if not checks:
        return False
    conns = result.connections
    hits = conns.filter(conns["outcome"].is_in(list(checks)) | conns["cause"].is_in(list(checks)))
    if hits.height == 0:
        return False
    groups = hits.group_by("outcome", "cause", "destination_service").agg(
        pl.len(), pl.col("request_id").drop_nulls().sort().first()
    )
    parts = [
        f"{n} {outcome}{'/' + cause if cause else ''} on {service or 'unknown'} (e.g. {rid or '-'})"
        for outcome, cause, service, n, rid in groups.sort("len", descending=True).iter_rows()
    ]
    typer.echo(f"wslog analyze: --fail-on tripped by {'; '.join(parts)}", err=True)
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
