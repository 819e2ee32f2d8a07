"""What ``wslog analyze`` runs: its inputs decoded in time order through the one pipeline, with
progress on a terminal. The command itself (options, report, exit codes) is ``wslog.analyze``:
it reads files through ``run`` and a cluster's pods through ``analyze_sources``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

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

from analyzer.correlate import PAIR_WINDOW_S, CorrelationSettings
from analyzer.decode import Decoded
from analyzer.formats import FormatSet
from analyzer.inputs import BLOCK_BYTES, InputSet, InputSource, expand_all
from analyzer.lines import MAX_LINE_BYTES
from analyzer.options import log_formats
from analyzer.pipeline import AnalysisResult, Pipeline, analyze_chunks
from analyzer.timerange import TimeRange

__all__ = ["analyze_paths", "analyze_sources", "command_formats", "expand_paths"]


def analyze_paths(
    paths: list[str],
    *,
    log_format: str | None = None,
    include_all: bool = False,
    keep_query: bool = False,
    strict: bool = False,
    pair_window: float = PAIR_WINDOW_S,
    clock_skew: float = 1.0,
    max_line_bytes: int = MAX_LINE_BYTES,
    time_range: TimeRange | None = None,
) -> AnalysisResult:
    """``wslog analyze PATHS``: files, directories, globs or ``-``."""
    return analyze_sources(
        expand_paths(paths),
        formats=command_formats(log_format),
        include_all=include_all,
        keep_query=keep_query,
        strict=strict,
        pair_window=pair_window,
        clock_skew=clock_skew,
        max_line_bytes=max_line_bytes,
        time_range=time_range,
    )


def analyze_sources(
    sources: Sequence[InputSource],
    *,
    formats: FormatSet,
    include_all: bool = False,
    keep_query: bool = False,
    strict: bool = False,
    pair_window: float = PAIR_WINDOW_S,
    clock_skew: float = 1.0,
    max_line_bytes: int = MAX_LINE_BYTES,
    time_range: TimeRange | None = None,
    unit: str = "inputs",
    block_bytes: int = BLOCK_BYTES,
    stdin: BinaryIO | None = None,
) -> AnalysisResult:
    """Every source decoded in time order through one pipeline; ``unit`` names the sources in
    the progress shown on a terminal (e.g. ``pods``); ``stdin`` is what ``-`` reads."""
    inputs = InputSet(
        sources,
        formats,
        strict=strict,
        max_line_bytes=max_line_bytes,
        block_bytes=block_bytes,
        stdin=stdin,
    )
    settings = CorrelationSettings(
        window=timedelta(seconds=pair_window), clock_skew=timedelta(seconds=clock_skew)
    )
    pipeline = Pipeline(formats=formats, settings=settings, keep_query=keep_query)
    chunks = _with_progress(inputs, unit)
    return analyze_chunks(
        chunks,
        inputs.low_watermark,
        pipeline=pipeline,
        include_all=include_all,
        time_range=time_range,
    )


def command_formats(log_format: str | None) -> FormatSet:
    """The formats to decode with; what ``--log-format`` lacks is said on stderr."""
    return log_formats(log_format, warn=lambda m: typer.echo(f"warning: {m}", err=True))


def expand_paths(paths: list[str]) -> list[InputSource]:
    """The inputs ``paths`` name; files skipped inside directories are noted on stderr."""
    expansion = expand_all(paths)
    _note_skipped(expansion.skipped)
    return expansion.sources


def _note_skipped(skipped: list[Path]) -> None:
    if skipped:
        typer.echo(
            f"note: skipped {len(skipped)} file(s) in directories that do not look like logs "
            f"(e.g. {skipped[0]}); name a file explicitly to read it.",
            err=True,
        )


def _with_progress(inputs: InputSet, unit: str) -> Iterator[Decoded]:
    """Progress on stderr when it is a terminal: bytes read of the total and the time left
    when every input is a file, else the lines decoded so far (and how many of several
    sources were read: pods of a cluster)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield from inputs
        return
    total = inputs.total_bytes()
    lines_read = TextColumn("{task.fields[lines]:,} lines")
    columns: tuple[ProgressColumn, ...] = (SpinnerColumn(), lines_read, TimeElapsedColumn())
    if total is not None:
        columns = (BarColumn(), DownloadColumn(), lines_read, TimeRemainingColumn())
    elif len(inputs.readers) > 1:
        read = TextColumn(f"{{task.fields[done]}} of {len(inputs.readers)} {unit} read")
        columns = (SpinnerColumn(), read, lines_read, TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("reading", total=total, lines=0, done=0)
        lines = 0
        for chunk in inputs:
            lines += chunk.lines
            done = inputs.sources_read()
            progress.update(task, completed=inputs.bytes_read(), lines=lines, done=done)
            yield chunk
