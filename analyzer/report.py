"""Render an ``AnalysisResult``: the table a person reads, and the documents programs read.

The JSON document is a stable contract (README "JSON output"):
``{"lines": {...}, "malformed": {...}, "left_out": {...}, "summary": [...], "failures": [...],
"connections": [...]}``. CSV and Parquet hold the connections, one row each, with the client and
server entries flattened into ``client_*`` / ``server_*`` columns.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
import polars as pl
from polars.datatypes import DataTypeClass
from polars.io.plugins import register_io_source
from rich.console import Console
from rich.table import Table

from analyzer.digest import Digest
from analyzer.pipeline import AnalysisResult
from analyzer.schema import CONNECTION_SCHEMA
from analyzer.vocab import LineResult, Outcome, Pairing

ENTRY_COLUMNS = ("client", "server", "unsided")
LATE_HINT = (
    "{n} entries came after their connection had been reported with both sides: the input goes "
    "back in time by more than --pair-window in a stream that mixes pods (e.g. merged dumps "
    "concatenated out of order), so they count as connections of their own. Give each "
    "pod's log as its own file, concatenate whole pod logs, or sort the stream by time."
)
UPGRADE_HINT = (
    'Add "upgrade": "%REQ(UPGRADE)%" to the mesh\'s access-log format (Telemetry or '
    "meshConfig.accessLogFormat; see deploy/access-log) so every WebSocket is recognised, then "
    "pass the format with --log-format."
)


def summary(connections: pl.DataFrame) -> pl.DataFrame:
    """``Resolved.summary`` of one frame of connections (in report order)."""
    return Digest.of([connections]).summary()


def failures(connections: pl.DataFrame) -> list[dict[str, Any]]:
    """``Resolved.failures`` of one frame of connections (in report order)."""
    return Digest.of([connections]).failures()


def document(result: AnalysisResult) -> dict[str, Any]:
    """The JSON document: it holds every connection (``--format json`` says so in --help)."""
    lines = {str(k): v for k, v in result.lines.items()}
    digest = result.digest
    return {
        "lines": {
            "total": result.total_lines,
            "entries": lines[LineResult.ENTRY],
            "not_access_log": lines[LineResult.NOT_ACCESS_LOG],
            "malformed": lines[LineResult.MALFORMED],
        },
        "malformed": {
            "by_reason": result.rejects_by_reason,
            "examples": result.reject_examples.to_dicts(),
        },
        "left_out": {
            "http_connections": result.left_out_http,
            "tcp_connections": result.non_http,
            "hint": UPGRADE_HINT if result.left_out_http else "",
            "outside_time_range": {
                "connections": result.outside_range,
                **result.time_range.bounds(),
            },
        },
        "evicted": result.evicted,
        "late_entries": result.late_entries,
        "summary": digest.summary().to_dicts(),
        "failures": digest.failures(),
        "connections": result.connections.to_dicts(),
    }


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(result: AnalysisResult) -> bytes:
    return orjson.dumps(
        document(result), default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC
    )


def ndjson_lines(connections: pl.DataFrame) -> bytes:
    """One JSON object per connection and line, written by polars: the bytes orjson writes
    for each row (``tests/test_report_ndjson.py``), several times faster on millions."""
    as_text = [
        _json_time(pl.col(name), dtype).alias(name) for name, dtype in connections.schema.items()
    ]
    buffer = io.BytesIO()
    connections.select(as_text).write_ndjson(buffer)
    return buffer.getvalue()


def _json_time(value: pl.Expr, dtype: pl.DataType | DataTypeClass) -> pl.Expr:
    """Times (also inside structs) as orjson writes them: RFC 3339, microseconds only when
    there are some, ``+00:00``."""
    if isinstance(dtype, pl.Datetime):
        micros = value.dt.microsecond()
        fraction = pl.when(micros != 0).then(pl.lit(".") + micros.cast(pl.String).str.zfill(6))
        seconds = value.dt.strftime("%Y-%m-%dT%H:%M:%S")
        return pl.concat_str(seconds, fraction.otherwise(pl.lit("")), pl.lit("+00:00"))
    if isinstance(dtype, pl.Struct):
        fields = [
            _json_time(value.struct.field(f.name), f.dtype).alias(f.name) for f in dtype.fields
        ]
        return pl.when(value.is_not_null()).then(pl.struct(fields))
    return value


def flat(connections: pl.DataFrame) -> pl.DataFrame:
    """Connections with the client and server entries flattened, for CSV and Parquet."""
    prefixed = [pl.col(side).struct.unnest().name.prefix(f"{side}_") for side in ENTRY_COLUMNS]
    return connections.select(pl.exclude(*ENTRY_COLUMNS), *prefixed)


FLAT_SCHEMA = flat(pl.DataFrame(schema=CONNECTION_SCHEMA)).schema


def _csv_blocks(result: AnalysisResult) -> Iterator[bytes]:
    header = True
    for block in result.table.blocks():
        yield flat(block).write_csv(include_header=header).encode()
        header = False
    if header:  # no connection: the header alone, as for an empty table
        yield pl.DataFrame(schema=FLAT_SCHEMA).write_csv().encode()


STREAMS: dict[str, Callable[[AnalysisResult], Iterable[bytes]]] = {
    "json": lambda result: [to_json(result)],
    "ndjson": lambda result: (ndjson_lines(block) for block in result.table.blocks()),
    "csv": _csv_blocks,
}


def write_binary(result: AnalysisResult, fmt: str, out: Path | IO[bytes]) -> None:
    """Write ``json``, ``ndjson``, ``csv`` or ``parquet`` to a path or a binary stream, a
    block of connections at a time (all but ``json`` hold one block, not the table)."""
    if fmt == "parquet":
        _parquet(result).sink_parquet(out, engine="streaming")
        return
    if isinstance(out, Path):
        with out.open("wb") as handle:
            for payload in STREAMS[fmt](result):
                handle.write(payload)
    else:
        for payload in STREAMS[fmt](result):
            out.write(payload)


def _parquet(result: AnalysisResult) -> pl.LazyFrame:
    """The flattened connections as a lazy frame the streaming engine pulls block by block."""

    def blocks(
        with_columns: list[str] | None, predicate: Any, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        for block in result.table.blocks():
            flattened = flat(block)
            yield flattened if with_columns is None else flattened.select(with_columns)

    return register_io_source(blocks, schema=FLAT_SCHEMA)


PIPE_WIDTH = 4096


def report_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A console for reports: at a terminal, its width and colours; into a file or a pipe
    (``> file``, CI logs, ``| grep``), never wrapped nor cut, without colour codes, so request
    ids and service names stay whole for whoever searches for them."""
    console = Console(file=file, stderr=stderr)
    if console.is_terminal:
        return console
    return Console(file=file, stderr=stderr, width=PIPE_WIDTH, soft_wrap=True, no_color=True)


def render_table(result: AnalysisResult, console: Console, *, connections: bool = False) -> None:
    """The human report: summary, failures with remedies, unpaired counts, line accounting.
    It reads no connection (``result.digest`` has what it says), but with ``connections``,
    which lists them, a block at a time."""
    digest = result.digest
    if result.found == 0:
        console.print("[yellow]No WebSocket connections found.[/yellow]")
    else:
        console.print(summary_table(digest.summary()))
    for record in digest.failures():
        _print_failure(console, record)
    if connections and result.found:
        console.print(_connections_table(result.table.blocks()))
    _print_pairing(console, digest.pairing())
    _print_lines(console, result)


def summary_table(rows: pl.DataFrame) -> Table:
    """Render ``summary()`` rows."""
    table = Table(title="WebSocket connections", title_justify="left")
    table.add_column("destination service", overflow="fold", min_width=18)
    table.add_column("upgrade", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("cause", overflow="fold", min_width=12)
    table.add_column("conns", justify="right", no_wrap=True)
    table.add_column("paired/client/server", overflow="fold", min_width=9)
    for row in rows.iter_rows(named=True):
        style = OUTCOME_STYLE.get(row["outcome"], "")
        table.add_row(
            row["destination_service"] or "unknown",
            row["upgrade_path"],
            f"[{style}]{row['outcome']}[/{style}]" if style else row["outcome"],
            row["cause"] or "-",
            str(row["connections"]),
            _pairing_cell(row),
        )
    return table


CONNECTION_COLUMNS = (
    "start_time",
    "request_id",
    "destination_service",
    "path",
    "upgrade_path",
    "outcome",
    "cause",
    "pairing",
    "response_code",
    "duration_ms",
)
OUTCOME_STYLE: dict[str, str] = {
    Outcome.UPGRADED: "green",
    Outcome.REJECTED: "yellow",
    Outcome.FAILED: "red",
    Outcome.OPEN: "cyan",
}


def print_failures(console: Console, conns: pl.DataFrame) -> None:
    """Each failure's why, fix and example request ids."""
    for record in failures(conns):
        _print_failure(console, record)


def _print_failure(console: Console, record: dict[str, Any]) -> None:
    ids = ", ".join(record["example_request_ids"]) or "none logged"
    console.print(
        f"\n[bold red]{record['outcome']}: {record['cause']}[/bold red] "
        f"({record['connections']} on {record['destination_service'] or 'unknown'})\n"
        f"  why:    {record['explanation']}\n"
        f"  fix:    {record['remedy']}\n"
        f"  e.g.:   request ids {ids}",
        highlight=False,
    )


def _pairing_cell(row: dict[str, Any]) -> str:
    cell = f"{row['paired']} / {row['client_only']} / {row['server_only']}"
    return cell + (f" (+{row['unpaired']} side?)" if row["unpaired"] else "")


def _connections_table(blocks: Iterable[pl.DataFrame]) -> Table:
    table = Table(title="Connections", title_justify="left")
    columns = CONNECTION_COLUMNS
    for name in columns:
        whole = name in ("request_id", "destination_service")
        table.add_column(name, overflow="fold", no_wrap=whole, min_width=36 if whole else None)
    for block in blocks:
        for row in block.select(columns).iter_rows():
            table.add_row(*("-" if v is None or v == "" else str(v) for v in row))
    return table


def _print_pairing(console: Console, counts: dict[str, int]) -> None:
    client_only = counts.get(Pairing.CLIENT_ONLY, 0)
    server_only = counts.get(Pairing.SERVER_ONLY, 0)
    unknown = counts.get(Pairing.UNPAIRED, 0)
    if client_only + server_only + unknown:
        console.print(
            f"\n[yellow]{client_only + server_only + unknown} unpaired[/yellow]: {client_only} "
            f"client-only, {server_only} server-only, {unknown} of unknown side "
            "(the other sidecar's log was not given, does not log, or its clock is off by more "
            "than --clock-skew).",
            highlight=False,
        )
    if unknown:
        console.print(
            f"{unknown} of unknown side: an entry without a cluster, with no partner entry, from "
            "a log that shows both sides or none, so nothing tells which sidecar wrote it; give "
            "each pod's whole log as its own file, or use kubectl logs --prefix.",
            highlight=False,
        )


def _print_lines(console: Console, result: AnalysisResult) -> None:
    lines = result.lines
    console.print(
        f"\nlines: {result.total_lines} total, {lines[LineResult.ENTRY]} entries, "
        f"{lines[LineResult.NOT_ACCESS_LOG]} not access-log, "
        f"{lines[LineResult.MALFORMED]} malformed",
        highlight=False,
    )
    for reason, count in result.rejects_by_reason.items():
        console.print(f"  malformed ({reason}): {count}", highlight=False)
    for ex in result.reject_examples.iter_rows(named=True):
        console.print(
            f"    {ex['source']}:{ex['line_no']}: {ex['reason']}: {ex['detail']}",
            highlight=False,
            markup=False,
        )
    shown = result.reject_examples.height
    if lines[LineResult.MALFORMED] > shown:
        console.print(f"    ... and {lines[LineResult.MALFORMED] - shown} more", highlight=False)
    if result.time_range.bounded:
        console.print(
            f"time range {result.time_range.describe()}: {result.outside_range} WebSocket "
            "connections not open within it left out",
            highlight=False,
        )
    if result.late_entries:
        late = LATE_HINT.format(n=result.late_entries)
        console.print(f"[yellow]{late}[/yellow]", highlight=False)
    if result.left_out_http:
        console.print(
            f"{result.left_out_http} HTTP requests showed no WebSocket evidence and were left "
            f"out (--all keeps them). {UPGRADE_HINT}",
            highlight=False,
        )
