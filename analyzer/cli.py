"""What ``wslog analyze`` runs: its inputs decoded in time order through the one pipeline, with
progress on a terminal. The command itself (options, report, exit codes) is ``wslog.analyze``:
both files and a cluster's pods end in ``analyze_sources``, with one ``AnalysisOptions``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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

from analyzer.correlate import PAIR_WINDOW_S, CorrelationSettings, window_problems
from analyzer.decode import Decoded
from analyzer.formats import FormatSet
from analyzer.inputs import BLOCK_BYTES, InputSet, InputSource, expand_all
from analyzer.lines import MAX_LINE_BYTES
from analyzer.options import log_formats
from analyzer.pipeline import BATCH_ENTRIES, AnalysisResult, Pipeline, analyze_chunks
from analyzer.readahead import read_ahead
from analyzer.runs import ConnectionRuns
from analyzer.timerange import TimeRange

# Chunks decoded ahead of correlation: a correlation step takes ``BATCH_ENTRIES`` (about ten
# 8 MiB chunks), so the reader can decode the next step's chunks meanwhile (~4 MiB each).
READ_AHEAD = 8

__all__ = ["AnalysisOptions", "analyze_paths", "analyze_sources", "command_formats", "expand_paths"]


@dataclass(frozen=True)
class AnalysisOptions:
    """How ``wslog analyze`` reads and joins its inputs, whatever they are (files, a cluster's
    pods, a test's streams): one value for the command, the doctor and the tests. The flag of
    each field is named beside it."""

    log_format: str | None = None  # --log-format
    include_all: bool = False  # --all
    keep_query: bool = False  # --keep-query
    strict: bool = False  # --strict
    pair_window: float = PAIR_WINDOW_S  # --pair-window
    clock_skew: float = 1.0  # --clock-skew
    max_line_bytes: int = MAX_LINE_BYTES  # --max-line-bytes
    time_range: TimeRange | None = None  # --since, --until
    # The connections themselves, for a report that lists them (--format other than table,
    # --connections); the table needs only the digest, so a run for it writes none to disk.
    keep_connections: bool = True

    def problems(self) -> list[str]:
        """Every option that is wrong, each with what a good value looks like."""
        problems = window_problems(self.pair_window, self.clock_skew)
        if self.max_line_bytes < 1:
            problems.append("--max-line-bytes must be at least 1")
        return problems


def analyze_paths(paths: list[str], options: AnalysisOptions | None = None) -> AnalysisResult:
    """``wslog analyze PATHS``: files, directories, globs or ``-``."""
    return analyze_sources(expand_paths(paths), options)


def analyze_sources(
    sources: Sequence[InputSource],
    options: AnalysisOptions | None = None,
    *,
    formats: FormatSet | None = None,
    unit: str = "inputs",
    block_bytes: int = BLOCK_BYTES,
    batch_entries: int = BATCH_ENTRIES,
    runs: ConnectionRuns | None = None,
    stdin: BinaryIO | None = None,
) -> AnalysisResult:
    """Every source decoded in time order through one pipeline. ``formats`` are those of
    ``options.log_format`` unless given (a caller that must fail on a bad format before
    reading anything builds them first); ``unit`` names the sources in the progress shown on
    a terminal (e.g. ``pods``); ``stdin`` is what ``-`` reads. ``block_bytes`` (a read) and
    ``batch_entries`` (a correlation step) are tuning, never a verdict's cause, except for an
    input going back in time by more than the window (``late_entries``); so is where the
    connections are kept (``runs``, see ``analyzer.runs``)."""
    options = options or AnalysisOptions()
    formats = formats or command_formats(options.log_format)
    inputs = InputSet(
        sources,
        formats,
        strict=options.strict,
        max_line_bytes=options.max_line_bytes,
        block_bytes=block_bytes,
        stdin=stdin,
    )
    settings = CorrelationSettings(
        window=timedelta(seconds=options.pair_window),
        clock_skew=timedelta(seconds=options.clock_skew),
    )
    pipeline = Pipeline(formats=formats, settings=settings, keep_query=options.keep_query)
    reads = read_ahead(lambda: _read(inputs), depth=READ_AHEAD)
    return analyze_chunks(
        ((read.chunk, read.watermark) for read in _with_progress(reads, inputs, unit)),
        pipeline=pipeline,
        batch_entries=batch_entries,
        runs=runs,
        keep_connections=options.keep_connections,
        include_all=options.include_all,
        time_range=options.time_range,
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


@dataclass(frozen=True)
class _Read:
    """A decoded chunk and how far the inputs had got once it was read (a snapshot: the
    reader thread reads on while the chunk is correlated)."""

    chunk: Decoded
    watermark: datetime  # InputSet.low_watermark
    bytes_read: int
    sources_read: int


def _read(inputs: InputSet) -> Iterator[_Read]:
    for chunk in inputs:
        yield _Read(chunk, inputs.low_watermark(), inputs.bytes_read(), inputs.sources_read())


def _with_progress(reads: Iterator[_Read], inputs: InputSet, unit: str) -> Iterator[_Read]:
    """Progress on stderr when it is a terminal: bytes read of the total and the time left
    when every input is a file, else the lines decoded so far (and how many of several
    sources were read: pods of a cluster)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield from reads
        return
    total = inputs.total_bytes()
    lines_read = TextColumn("{task.fields[lines]:,} lines")
    columns: tuple[ProgressColumn, ...] = (SpinnerColumn(), lines_read, TimeElapsedColumn())
    if total is not None:
        columns = (BarColumn(), DownloadColumn(), lines_read, TimeRemainingColumn())
    elif len(inputs.readers) > 1:
        sources = TextColumn(f"{{task.fields[done]}} of {len(inputs.readers)} {unit} read")
        columns = (SpinnerColumn(), sources, lines_read, TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("reading", total=total, lines=0, done=0)
        lines = 0
        for read in reads:
            lines += read.chunk.lines
            done = read.sources_read
            progress.update(task, completed=read.bytes_read, lines=lines, done=done)
            yield read
