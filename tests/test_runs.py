"""``analyzer.runs``: connections spilled to disk come back in report order, and a report read
from spilled runs is the report held in memory, byte for byte."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from analyzer.cli import AnalysisOptions, analyze_sources, expand_paths
from analyzer.errors import SpillError
from analyzer.pipeline import AnalysisResult
from analyzer.report import render_table, write_binary
from analyzer.runs import ConnectionRuns
from analyzer.timerange import TimeRange
from tests.conftest import ROOT, TESTDATA

BASE = datetime(2026, 1, 1, tzinfo=UTC)
rows = st.lists(
    st.tuples(
        st.none() | st.integers(0, 5),  # start, in seconds: few values, many ties
        st.none() | st.sampled_from(["a", "ab", "a-b", "b", "é", ""]),  # request id
    ),
    max_size=60,
)


def frame(batch: list[tuple[int | None, str | None]], first: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "start_time": [None if s is None else BASE + timedelta(seconds=s) for s, _ in batch],
            "request_id": [rid for _, rid in batch],
            "n": list(range(first, first + len(batch))),  # the order of release
        },
        schema={"start_time": pl.Datetime("us", "UTC"), "request_id": pl.String, "n": pl.Int64},
    )


@given(st.lists(rows, max_size=8), st.integers(1, 40), st.integers(1, 7), st.integers(1, 20))
def test_runs_come_back_as_a_stable_sort_by_start_then_request_id(
    batches: list[list[tuple[int | None, str | None]]],
    memory_rows: int,
    block_rows: int,
    merge_rows: int,
) -> None:
    runs = ConnectionRuns(memory_rows=memory_rows, block_rows=block_rows, merge_rows=merge_rows)
    frames, first = [], 0
    for batch in batches:
        frames.append(frame(batch, first))
        first += len(batch)
        runs.add(frames[-1])
    every = pl.concat([frame([], 0), *frames])
    expected = every.sort("start_time", "request_id", nulls_last=True, maintain_order=True)
    got = pl.concat([frame([], 0), *runs.ordered()])
    assert got.get_column("n").to_list() == expected.get_column("n").to_list()
    scanned = pl.concat([frame([], 0).select("n"), *runs.scan(["n"])])
    assert sorted(scanned.get_column("n").to_list()) == list(range(first))


def test_spilled_files_are_deleted_with_the_runs() -> None:
    runs = ConnectionRuns(memory_rows=2, block_rows=1)
    runs.add(frame([(1, "a"), (2, "b"), (3, "c")], 0))
    assert runs.spilled == 1
    files = [p for p in runs._runs[0]]
    assert all(p.exists() for p in files)
    del runs
    assert not any(p.exists() for p in files)


def _every_lab_capture() -> list[Path]:
    return sorted((TESTDATA / "lab" / "json").glob("*/*.log"))


def _reports(result: AnalysisResult, tmp_path: Path, name: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for fmt in ("json", "ndjson", "csv"):
        buffer = io.BytesIO()
        write_binary(result, fmt, buffer)
        out[fmt] = buffer.getvalue()
    parquet = tmp_path / f"{name}.parquet"
    write_binary(result, "parquet", parquet)
    out["parquet"] = pl.read_parquet(parquet).write_csv().encode()
    console = Console(record=True, width=300, file=io.StringIO())
    render_table(result, console, connections=True)
    out["table"] = console.export_text().encode()
    return out


@pytest.mark.parametrize("time_range", [None, TimeRange(since=BASE.replace(year=2025))])
def test_a_report_from_spilled_runs_is_the_report_held_in_memory(
    tmp_path: Path, time_range: TimeRange | None
) -> None:
    """Every lab capture in one run, correlated a small read at a time, its connections kept
    in memory (one run) or spilled two at a time and merged back three rows at a time: the
    same reports, in every format."""
    options = AnalysisOptions(include_all=True, time_range=time_range)

    def analyse(runs: ConnectionRuns) -> AnalysisResult:
        sources = expand_paths([str(p) for p in _every_lab_capture()])
        return analyze_sources(sources, options, block_bytes=512, batch_entries=1, runs=runs)

    held = analyse(ConnectionRuns())
    spilled_runs = ConnectionRuns(memory_rows=2, block_rows=3, merge_rows=4)
    spilled = analyse(spilled_runs)
    assert spilled_runs.spilled >= 2  # so the merge has runs to merge (see the property test)
    assert held.found == spilled.found > 15
    assert _reports(held, tmp_path, "held") == _reports(spilled, tmp_path, "spilled")


def test_a_temporary_directory_that_cannot_be_written_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing" / "dir"))
    runs = ConnectionRuns(memory_rows=2)
    with pytest.raises(SpillError, match=r"cannot write connections to .*missing/dir.*TMPDIR"):
        runs.add(frame([(1, "a"), (2, "b")], 0))


KEEP_ONE_ROW_OF_EACH = """
import sys, polars as pl
from analyzer.runs import compacted

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

kept, before = [], rss_mib()
for i in range(30):  # 30 chunks of 8 MiB of strings; one row of each is kept
    chunk = pl.DataFrame({"s": [f"{i:04d}" + "x" * 80 + str(n) for n in range(100_000)]})
    one = chunk.filter(pl.int_range(pl.len()) == 7)
    kept.append(compacted(one) if sys.argv[1] == "compacted" else one)
    del chunk
print(rss_mib() - before)
"""


def test_a_compacted_row_holds_only_its_own_bytes_not_its_chunks() -> None:
    """What ``Digest`` keeps for the end (connections without evidence) is compacted: a row
    filtered out of a decoded chunk would hold the whole chunk's strings (the control)."""
    grown = {}
    for how in ("filtered", "compacted"):
        done = subprocess.run(
            [sys.executable, "-c", KEEP_ONE_ROW_OF_EACH, how],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=True,
        )
        grown[how] = float(done.stdout)
    assert grown["filtered"] > 200  # 30 chunks of about 10 MiB each stay in memory
    # compacted: what the allocator keeps of freed chunks (a few), a quarter at most
    assert grown["compacted"] < grown["filtered"] / 4
