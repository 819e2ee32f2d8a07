"""``wslog tail``: the exporter's live pipeline for a person at a terminal."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import polars as pl
from rich.console import Console

from analyzer.formats import FormatSet
from analyzer.pipeline import Step
from analyzer.report import OUTCOME_STYLE
from analyzer.schema import CONNECTION_SCHEMA
from exporter.run import Loop, build_live
from exporter.settings import PipelineSettings
from exporter.sources import Source, SourceEvents


@dataclass(frozen=True)
class TailFilter:
    namespaces: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()

    def apply(self, connections: pl.DataFrame) -> pl.DataFrame:
        keep = pl.lit(True)
        if self.namespaces:
            keep &= pl.col("destination_namespace").is_in(self.namespaces)
        if self.services:
            short = pl.col("destination_service").str.split(".").list.first()
            wanted = list(self.services)
            keep &= pl.col("destination_service").is_in(wanted) | short.is_in(wanted)
        if self.outcomes:
            keep &= pl.col("outcome").is_in(self.outcomes)
        return connections.filter(keep)


@dataclass
class QuietEvents:
    """Source events for a terminal: health problems are printed, the rest ignored."""

    console: Console

    def stream_opened(self, kind: str, source: str) -> None: ...
    def stream_closed(self, kind: str, source: str) -> None: ...
    def stream_restarted(self, kind: str, source: str, reason: str) -> None: ...

    def health(self, ok: bool, reason: str) -> None:
        if not ok:
            self.console.print(f"[red]source problem:[/red] {reason}", highlight=False)


@dataclass
class Printer:
    console: Console
    only: TailFilter
    seen: list[pl.DataFrame] = field(default_factory=list)

    def __call__(self, step: Step, websockets: pl.DataFrame) -> None:
        shown = self.only.apply(websockets)
        self.seen.append(shown)
        for row in shown.iter_rows(named=True):
            self.console.print(format_line(row), highlight=False)

    def connections(self) -> pl.DataFrame:
        return pl.concat([pl.DataFrame(schema=CONNECTION_SCHEMA), *self.seen])


def format_line(row: dict[str, object]) -> str:
    style = OUTCOME_STYLE.get(str(row["outcome"]), "white")
    start = row["start_time"]
    when = start.strftime("%H:%M:%S.%f")[:-3] if hasattr(start, "strftime") else "-"
    cause = f" {row['cause']}" if row["cause"] else ""
    return (
        f"{when} {row['destination_service'] or 'unknown'} {row['path'] or '-'} "
        f"{row['upgrade_path']} [{style}]{row['outcome']}{cause}[/{style}] {row['pairing']} "
        f"{row['duration_ms'] if row['duration_ms'] is not None else '-'}ms "
        f"{row['bytes_sent'] or 0}B"
    )


def run_tail(
    source: Source,
    formats: FormatSet,
    settings: PipelineSettings,
    only: TailFilter,
    console: Console,
    stop: threading.Event,
) -> pl.DataFrame:
    """Print connections as they are classified until ``stop``; return those shown."""
    printer = Printer(console, only)
    live = build_live(settings, formats, printer)
    events: SourceEvents = QuietEvents(console)
    Loop(live, source, events, settings.batch_interval_s, exit_on_end=True).run(stop)
    return printer.connections()
