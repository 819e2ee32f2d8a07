"""``analyzer.digest``: what the table says, gathered as connections are released, is what the
report said when it read every kept connection back in report order (``Reference`` below, the
report's code before the digest), whatever the release order, the steps, the path evidence,
``--all`` and the time range."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from analyzer.classify import websocket_evidence
from analyzer.cli import AnalysisOptions, analyze_sources, expand_paths
from analyzer.digest import (
    FAILURE_KEYS,
    NOT_UPGRADED,
    PAIRING_COLUMNS,
    SUMMARY_KEYS,
    Digest,
)
from analyzer.report import render_table
from analyzer.runs import ConnectionRuns
from analyzer.schema import CONNECTION_SCHEMA
from analyzer.timerange import TimeRange
from analyzer.vocab import Cause, Outcome, Pairing, explain
from tests.conftest import TESTDATA

EXAMPLES = pl.col("request_id").drop_nulls().head(3).alias("example_request_ids")


@dataclass
class Reference:
    """The report's digest as it was: blocks of kept connections, read in report order."""

    _summary: list[pl.DataFrame] = field(default_factory=list)
    _failures: list[pl.DataFrame] = field(default_factory=list)
    _pairing: Counter[str] = field(default_factory=Counter)

    def add(self, block: pl.DataFrame) -> None:
        pairing = pl.col("pairing")
        pairs = [(pairing == p.value).sum().alias(PAIRING_COLUMNS[p]) for p in Pairing]
        by_group = block.group_by(SUMMARY_KEYS, maintain_order=True)
        self._summary.append(by_group.agg(pl.len().alias("connections"), *pairs, EXAMPLES))
        failed = block.filter(pl.col("outcome").is_in(NOT_UPGRADED))
        by_failure = failed.group_by(FAILURE_KEYS, maintain_order=True)
        self._failures.append(by_failure.agg(pl.len().alias("connections"), EXAMPLES))
        self._pairing.update(dict(block.group_by("pairing").len().iter_rows()))

    def summary(self) -> pl.DataFrame:
        counts = ["connections", *PAIRING_COLUMNS.values()]
        return _combine(self._summary, SUMMARY_KEYS, counts).sort(SUMMARY_KEYS, nulls_last=True)

    def failures(self) -> list[dict[str, Any]]:
        grouped = _combine(self._failures, FAILURE_KEYS, ["connections"]).sort(
            "connections",
            "destination_service",
            descending=[True, False],
            nulls_last=True,
            maintain_order=True,
        )
        records = grouped.to_dicts()
        for record in records:
            found = explain(
                Cause(record["cause"]), record["reported_by"], record["transport_failure"]
            )
            record["explanation"] = found.summary if found else ""
            record["remedy"] = found.remedy if found else ""
        return records


def _combine(parts: list[pl.DataFrame], keys: list[str], counts: list[str]) -> pl.DataFrame:
    columns = [*keys, *counts, "example_request_ids"]
    if not parts:
        schema = {k: pl.String() for k in keys} | {c: pl.UInt32() for c in counts}
        return pl.DataFrame(schema=schema | {"example_request_ids": pl.List(pl.String())})
    return (
        pl.concat([part.select(columns) for part in parts])
        .group_by(keys, maintain_order=True)
        .agg(
            *[pl.col(c).sum() for c in counts],
            pl.col("example_request_ids").explode().drop_nulls().head(3),
        )
    )


def _every_lab_capture() -> list[Path]:
    return sorted((TESTDATA / "lab" / "json").glob("*/*.log"))


@cache
def _pool() -> pl.DataFrame:
    """Real connections: every lab capture's, HTTP ones included (``--all``)."""
    sources = expand_paths([str(p) for p in _every_lab_capture()])
    return analyze_sources(sources, AnalysisOptions(include_all=True)).connections


BASE = datetime(2026, 1, 1, tzinfo=UTC)
TIMES = st.none() | st.integers(0, 4).map(lambda s: BASE + timedelta(seconds=s))  # many ties
IDS = st.none() | st.sampled_from(["a", "ab", "b", "é"])  # shared ids, as retries share theirs
PATHS = st.sampled_from(["/ws", "/echo", None])
# Connections of the pool, a few of them often (groups of more than three, whose examples
# must be the first three in report order) and any of them.
PICK = st.integers(0, 1) | st.integers(0, 10_000)
row = st.tuples(PICK, TIMES, IDS, st.booleans(), PATHS)


Row = tuple[int, datetime | None, str | None, bool, str | None]


def _released(rows: Sequence[Row]) -> pl.DataFrame:
    pool = _pool()
    picked = pool[[i % pool.height for i, *_ in rows]] if rows else pool.clear()
    evidence = pl.Series([own for *_, own, _ in rows], dtype=pl.Boolean)
    return picked.with_columns(
        start_time=pl.Series([t for _, t, *_ in rows], dtype=CONNECTION_SCHEMA["start_time"]),
        request_id=pl.Series([rid for _, _, rid, *_ in rows], dtype=pl.String),
        path=pl.Series([p for *_, p in rows], dtype=pl.String),
        evidence=pl.when(evidence).then(pl.col("evidence")).otherwise(None),
    )


@given(
    rows=st.lists(row, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    marked=st.sets(st.sampled_from(["/ws", "/echo"])),
    include_all=st.booleans(),
    since=st.none() | st.integers(0, 5),
)
def test_the_digest_of_released_batches_is_the_report_of_the_kept_connections_in_order(
    rows: list[Row],
    cuts: list[int],
    marked: set[str],
    include_all: bool,
    since: int | None,
) -> None:
    released = _released(rows)
    time_range = TimeRange(since=None if since is None else BASE + timedelta(seconds=since))
    services = released.select("destination_service").unique()
    ws_paths = services.join(
        pl.DataFrame({"path": sorted(marked)}, schema={"path": pl.String}), how="cross"
    )

    digest = Digest(time_range)
    bounds = sorted({0, released.height, *(c for c in cuts if c <= released.height)})
    for start, end in itertools.pairwise(bounds):
        digest.add(released.slice(start, end - start))
    got = digest.resolve(ws_paths, include_all=include_all)

    kind = websocket_evidence(released, ws_paths, include_all=include_all)
    inside = released.select(time_range.inside()).to_series()
    kept = (
        released.with_columns(kind)
        .filter(kind.is_not_null() & inside)
        .sort("start_time", "request_id", nulls_last=True, maintain_order=True)
    )
    reference = Reference()
    reference.add(kept)
    assert (got.total, got.candidates, got.kept) == (
        released.height,
        kind.len() - kind.null_count(),
        kept.height,
    )
    assert got.summary().equals(reference.summary())
    assert got.summary().schema == reference.summary().schema
    assert got.failures() == reference.failures()
    assert got.pairing() == dict(reference._pairing)
    checks = {Outcome.FAILED.value, Cause.H2_CONNECT_NOT_ALLOWED.value}
    expected_trips = (
        kept.filter(pl.col("outcome").is_in(list(checks)) | pl.col("cause").is_in(list(checks)))
        .group_by("outcome", "cause", "destination_service")
        .agg(pl.len(), pl.col("request_id").drop_nulls().min())
    )
    assert sorted(got.tripped(checks), key=str) == sorted(expected_trips.iter_rows(), key=str)


def _table(**kwargs: Any) -> str:
    sources = expand_paths([str(p) for p in _every_lab_capture()])
    options = AnalysisOptions(**kwargs)
    result = analyze_sources(sources, options, block_bytes=512, batch_entries=1)
    console = Console(record=True, width=300, file=io.StringIO())
    render_table(result, console)
    return console.export_text()


@pytest.mark.parametrize("include_all", [False, True])
def test_a_table_run_keeps_no_connection_and_says_the_same(include_all: bool) -> None:
    """The table of every lab capture from a run that kept its connections (and read them
    back) and from one that kept none: the same text."""
    kept = _table(include_all=include_all)
    assert "h2-connect-not-allowed" in kept
    assert _table(include_all=include_all, keep_connections=False) == kept


def test_a_run_that_kept_no_connection_says_so_when_asked_for_them() -> None:
    capture = TESTDATA / "lab" / "json" / "h2-no-allow-connect"
    sources = expand_paths([str(capture / "client.log"), str(capture / "server.log")])
    result = analyze_sources(sources, AnalysisOptions(keep_connections=False))
    assert result.found == 1
    with pytest.raises(ValueError, match="kept no connections"):
        _ = result.connections


def test_examples_are_the_first_request_ids_in_report_order_not_in_release_order() -> None:
    """Five connections of one group released newest first, over two batches: the examples
    are the three that start first (a tie on start time goes to the request id)."""
    starts = [4, 3, 1, 2, 1]
    rows = [
        (0, BASE + timedelta(seconds=s), rid, True, None)
        for s, rid in zip(starts, ["a", "ab", "é", "b", "c"], strict=True)
    ]
    released = _released(rows)
    digest = Digest()
    digest.add(released.head(1))
    digest.add(released.tail(4))
    no_paths = pl.DataFrame(schema={"destination_service": pl.String, "path": pl.String})
    (summary,) = digest.resolve(no_paths).summary().to_dicts()
    assert summary["example_request_ids"] == ["c", "é", "b"]
    assert summary["connections"] == 5


def test_connections_without_evidence_wait_on_disk_not_in_the_aggregates() -> None:
    """Plain HTTP requests (no evidence of their own) have as many paths as a service has
    ids: they are kept as connections, spilled past the budget, and judged at the end; the
    aggregates hold only WebSocket candidates, a row per report group."""
    rows = [(0, BASE, f"id-{i}", i % 10 == 0, f"/api/users/{i}") for i in range(200)]
    released = _released(rows)
    digest = Digest(unjudged=ConnectionRuns(memory_rows=20))
    for start in range(0, released.height, 50):
        digest.add(released.slice(start, 50))
    assert digest.unjudged.spilled == 4  # a run per batch: 45 of its 50 have no evidence
    assert sum(part.height for part in digest._parts) <= 4 * len(
        released.select(SUMMARY_KEYS).unique()
    )
    marked = pl.DataFrame(
        {
            "destination_service": released["destination_service"][:2],
            "path": ["/api/users/1", "/api/users/3"],
        }
    )
    got = digest.resolve(marked)
    assert (got.total, got.candidates, got.kept) == (200, 22, 22)
