"""The connections of a whole ``wslog analyze`` run, in report order, in bounded memory.

A run releases connections batch by batch, roughly in time order; the report lists them by
start time (then request id). Holding every connection until the end grows with the input
(about 700 bytes a connection: 2.7 GB for the 3.8M of 10M generated lines), so past
``memory_rows`` the connections held are sorted and written to a temporary directory as a
*run* of Arrow IPC blocks, and the report reads them back merged (``ordered``): a k-way merge
a few blocks of every run at a time, so memory holds ``merge_rows``, whatever the input's size
(at least a block of each run: 5,000 rows, with about one run per 100,000 connections).

The order is total: start time (nulls last), request id (nulls last), then the order of
release, encoded in one string column (``_key``) so that runs merge by comparing one value.
It is the order a stable sort of all connections by start time and request id gives.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from analyzer.errors import SpillError

__all__ = ["ConnectionRuns"]

KEY, SEQ = "_key", "_seq"
MEMORY_ROWS = 100_000  # connections held before a run is written (about 70 MiB)
BLOCK_ROWS = 5_000  # rows of a run written as one file
MERGE_ROWS = 100_000  # rows the merge reads ahead over all runs (at least a block of each)
_EPOCH_OFFSET_US = 1 << 62  # keeps every start time positive, so digits sort as numbers
_DIGITS = 20


def order_key() -> pl.Expr:
    """One sortable string per connection, in report order (see the module's doc)."""
    start = (pl.col("start_time").dt.epoch("us") + _EPOCH_OFFSET_US).cast(pl.String)
    start = start.str.zfill(_DIGITS).fill_null("~" * _DIGITS)
    rid = pl.concat_str(pl.lit("0"), pl.col("request_id")).fill_null(pl.lit("1"))
    seq = pl.col(SEQ).cast(pl.String).str.zfill(_DIGITS)
    return pl.concat_str(start, rid, pl.lit("\x00"), seq).alias(KEY)


def compacted(frame: pl.DataFrame) -> pl.DataFrame:
    """A copy of ``frame`` that owns its strings. A filtered frame's strings are views into
    the buffers of the frame it came from (a whole decoded chunk): a few rows kept for long,
    from all over a large input, would hold every chunk's buffers. Arrow IPC in memory
    copies just the rows' values."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="uncompressed")
    buffer.seek(0)
    return pl.read_ipc(buffer)


def numbered(connections: pl.DataFrame, first: int) -> pl.DataFrame:
    """``connections`` with their order of release (``_seq``), ``first`` for the first."""
    last = first + connections.height
    return connections.with_columns(
        pl.int_range(first, last, eager=True, dtype=pl.Int64).alias(SEQ)
    )


@dataclass
class ConnectionRuns:
    """Connections added in release order; read back in any order (``scan``) or merged in
    report order (``ordered``). Spilled files live as long as this object."""

    memory_rows: int = MEMORY_ROWS
    block_rows: int = BLOCK_ROWS
    merge_rows: int = MERGE_ROWS
    _held: list[pl.DataFrame] = field(default_factory=list)
    _held_rows: int = 0
    _next_seq: int = 0
    _runs: list[list[Path]] = field(default_factory=list)  # each run's blocks, in order
    _directory: Path | None = None  # removed when this object is collected, or at exit

    @property
    def spilled(self) -> int:
        """How many runs were written to disk."""
        return len(self._runs)

    def add(self, connections: pl.DataFrame) -> None:
        if connections.height == 0:
            return
        first, self._next_seq = self._next_seq, self._next_seq + connections.height
        if SEQ not in connections.columns:  # else numbered by the caller (digest.Digest)
            connections = numbered(connections, first)
        self._held.append(connections)
        self._held_rows += connections.height
        if self._held_rows >= self.memory_rows:
            self._spill()

    def scan(self, columns: list[str]) -> Iterator[pl.DataFrame]:
        """``columns`` of every connection, a block at a time, in no particular order."""
        for run in self._runs:
            for block in run:
                yield pl.read_ipc(block, columns=columns)
        for part in self._held:
            yield part.select(columns)

    def ordered(self) -> Iterator[pl.DataFrame]:
        """Every connection in report order, in blocks (without the ``_key``/``_seq``
        columns)."""
        held = self._sorted_held()
        if not self._runs:
            if held.height:
                yield held.drop(KEY, SEQ)
            return
        ahead = self.merge_rows // (len(self._runs) + 1)
        cursors = [_Cursor(iter(run), ahead) for run in self._runs]
        if held.height:
            cursors.append(_Cursor(iter([held]), ahead))
        yield from _merge(cursors)

    def _sorted_held(self) -> pl.DataFrame:
        if not self._held:
            return pl.DataFrame()
        return pl.concat(self._held).with_columns(order_key()).sort(KEY)

    def _spill(self) -> None:
        try:
            self._write_run()
        except OSError as exc:
            where = self._directory or tempfile.gettempdir()
            raise SpillError(
                f"cannot write connections to {where} ({exc.strerror or exc}): a large input's "
                f"connections are kept there past {self.memory_rows:,}; set TMPDIR to a directory "
                "with room (about 200 MB per million connections)"
            ) from exc

    def _write_run(self) -> None:
        frame = self._sorted_held()
        self._held, self._held_rows = [], 0
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="wslog-runs-"))
            weakref.finalize(self, shutil.rmtree, self._directory, ignore_errors=True)
        run_dir = self._directory / f"run-{len(self._runs):05d}"
        run_dir.mkdir()
        blocks = []
        for i, offset in enumerate(range(0, frame.height, self.block_rows)):
            path = run_dir / f"{i:06d}.arrow"
            frame.slice(offset, self.block_rows).write_ipc(path, compression="lz4")
            blocks.append(path)
        self._runs.append(blocks)


@dataclass
class _Cursor:
    """One run being merged: the rest of what it read, then its next blocks."""

    blocks: Iterator[Path | pl.DataFrame]
    ahead: int  # rows read at a time (whole blocks, at least one)
    block: pl.DataFrame = field(default_factory=pl.DataFrame)

    def refill(self) -> bool:
        """Read on once what was read is used up; False once the run is."""
        if self.block.height:
            return True
        parts: list[pl.DataFrame] = []
        rows = 0
        while (not parts or rows < self.ahead) and (nxt := next(self.blocks, None)) is not None:
            parts.append(nxt if isinstance(nxt, pl.DataFrame) else pl.read_ipc(nxt))
            rows += parts[-1].height
        if parts:
            self.block = pl.concat(parts)
        return self.block.height > 0


def _merge(cursors: list[_Cursor]) -> Iterator[pl.DataFrame]:
    """K-way merge by blocks: everything up to the smallest last key of the runs' current
    blocks is in those blocks (every run is sorted), so it can go out, sorted; the run that
    gave that key is then used up and reads its next block."""
    live = [c for c in cursors if c.refill()]
    while live:
        bound = min(str(c.block.get_column(KEY)[-1]) for c in live)
        out = []
        for cursor in live:
            upto = int(cursor.block.get_column(KEY).search_sorted(bound, side="right"))
            out.append(cursor.block.slice(0, upto))
            cursor.block = cursor.block.slice(upto)
        yield pl.concat(out).sort(KEY).drop(KEY, SEQ)
        live = [c for c in live if c.refill()]
