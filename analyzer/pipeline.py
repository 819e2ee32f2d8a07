"""decode -> correlate -> classify, one batch at a time: the one pipeline both ``wslog analyze``
(chunks of whole files, then ``flush``) and the exporter (micro-batches, forever) run.

Pure: lines in, classified connections and line accounting out. What counts as a WebSocket is
decided by the caller from ``Step.connections`` with ``classify.websocket_evidence`` and the
running ``PathEvidence``, because analyze decides once at the end and the exporter as it goes.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

import polars as pl

from analyzer.annotate import end_time
from analyzer.classify import classify, websocket_evidence, websocket_paths
from analyzer.correlate import CorrelationSettings, Correlator, Released
from analyzer.decode import Decoded, decode_framed
from analyzer.digest import Digest, Resolved
from analyzer.formats import FormatSet, default_formats
from analyzer.framing import Framed
from analyzer.runs import ConnectionRuns
from analyzer.schema import CONNECTION_SCHEMA, REJECT_SCHEMA
from analyzer.timerange import TimeRange
from analyzer.vocab import PAIRING_SIDES, LineResult


@dataclass(frozen=True)
class Step:
    """What one batch produced."""

    connections: pl.DataFrame  # CONNECTION_SCHEMA: HTTP connections released by this batch
    lines: dict[LineResult, int]
    rejects: pl.DataFrame  # REJECT_SCHEMA
    early: pl.DataFrame  # CONNECTION_SCHEMA: those of ``connections`` the size cap released early
    non_http: int  # connections made only of TCP entries, never WebSocket candidates
    newest: dict[str, datetime] = field(default_factory=dict)  # newest entry end per source
    late: int = 0  # entries of connections already released with both sides (see Released)


@dataclass
class PathEvidence:
    """(destination_service, path) pairs that showed WebSocket evidence so far, capped."""

    limit: int = 10_000
    paths: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"destination_service": pl.String, "path": pl.String}
        )
    )

    def learn(self, connections: pl.DataFrame) -> None:
        if self.paths.height >= self.limit:
            return
        found = websocket_paths(connections)
        self.paths = pl.concat([self.paths, found]).unique(maintain_order=True).head(self.limit)


@dataclass
class Pipeline:
    formats: FormatSet = field(default_factory=default_formats)
    settings: CorrelationSettings = field(default_factory=CorrelationSettings)
    keep_query: bool = False
    correlator: Correlator = field(init=False)

    def __post_init__(self) -> None:
        self.correlator = Correlator(self.settings)

    def feed(self, framed: Framed) -> Step:
        """Decode deframed lines and correlate their entries with what is pending."""
        return self.feed_decoded(decode_framed(framed, self.formats))

    def feed_decoded(self, decoded: Decoded, watermark: datetime | None = None) -> Step:
        """Correlate decoded entries with what is pending (see ``Correlator.feed``)."""
        released = self.correlator.feed(decoded.entries, watermark)
        step = self._step(released, decoded.counts, decoded.rejects)
        return replace(step, newest=newest_by_source(decoded.entries), late=released.late)

    def flush(self) -> Step:
        """End of input: release everything pending."""
        return self._step(self.correlator.flush(), {}, pl.DataFrame(schema=REJECT_SCHEMA))

    def release_finished(self) -> Step:
        """Inputs are idle: release every connection that has its final entries, keep open ones."""
        released = self.correlator.release_finished()
        return self._step(released, {}, pl.DataFrame(schema=REJECT_SCHEMA))

    def open_connections(self) -> pl.DataFrame:
        """Classified connections that have only start/periodic entries so far."""
        return classify(self.correlator.open_rows().filter(pl.col("http")))

    def _step(
        self, released: Released, counts: dict[LineResult, int], rejects: pl.DataFrame
    ) -> Step:
        rows = released.connections
        http = _http(rows)
        connections, early = self._classify(http), self._classify(_http(released.early))
        lines = {result: counts.get(result, 0) for result in LineResult}
        return Step(connections, lines, rejects, early, rows.height - http.height)

    def _classify(self, http: pl.DataFrame) -> pl.DataFrame:
        if http.height == 0:
            return pl.DataFrame(schema=CONNECTION_SCHEMA)
        return classify(http, keep_query=self.keep_query)


def _http(rows: pl.DataFrame) -> pl.DataFrame:
    """The HTTP connections of ``rows``; ``rows`` themselves when all are (the usual case: a
    filter copies every connection's entry structs)."""
    http = rows.get_column("http")
    return rows if http.sum() == rows.height else rows.filter(http)


def early_by_side(early: pl.DataFrame) -> dict[str, int]:
    """Connections released early by the size cap, by the sides they had (``both`` if paired)."""
    sides = early.get_column("pairing").replace_strict(PAIRING_SIDES, default="unknown")
    return {str(side): int(n) for side, n in sides.value_counts().iter_rows()}


def newest_by_source(entries: pl.DataFrame) -> dict[str, datetime]:
    """The newest entry end (start + duration) each source has logged."""
    newest = entries.group_by("source").agg(end_time().max().alias("end")).drop_nulls()
    return dict(newest.iter_rows())


@dataclass(frozen=True)
class ConnectionTable:
    """The WebSocket connections of a whole run, in report order (start time, then request
    id), read a block at a time: a run of 10M lines holds millions of connections, more
    than memory should (``analyzer.runs``). What is a WebSocket is decided here, once every
    connection's path evidence is known. A run that did not keep its connections (the
    table's report needs only the digest) has none to read."""

    runs: ConnectionRuns | None
    paths: pl.DataFrame  # PathEvidence.paths of the whole run
    include_all: bool = False
    time_range: TimeRange = field(default_factory=TimeRange)

    def blocks(self) -> Iterator[pl.DataFrame]:
        """CONNECTION_SCHEMA blocks, WebSocket candidates open within the range only."""
        if self.runs is None:
            raise ValueError("this run kept no connections (keep_connections=False)")
        for block in self.runs.ordered():
            kind = websocket_evidence(block, self.paths, include_all=self.include_all)
            keep = kind.is_not_null()
            if self.time_range.bounded:
                keep = keep & block.select(self.time_range.inside()).to_series()
            selected = block.with_columns(kind).filter(keep)
            if selected.height:
                yield selected.select(list(CONNECTION_SCHEMA))

    def frame(self) -> pl.DataFrame:
        """Every block in one frame (for the JSON document and callers that hold it all)."""
        return pl.concat([pl.DataFrame(schema=CONNECTION_SCHEMA), *self.blocks()])


@dataclass(frozen=True)
class AnalysisResult:
    """A whole run of ``wslog analyze``: the WebSocket connections and the line accounting."""

    table: ConnectionTable  # the WebSocket candidates in range, read a block at a time
    digest: Resolved  # what the reports say about them (analyzer.digest)
    lines: dict[LineResult, int]
    rejects_by_reason: dict[str, int]
    reject_examples: pl.DataFrame  # REJECT_SCHEMA, at most ``max_examples`` rows
    non_http: int
    evicted: dict[str, int]
    late_entries: int = 0  # entries that came after their connection was released paired
    time_range: TimeRange = field(default_factory=TimeRange)  # --since / --until

    @property
    def found(self) -> int:
        """Connections in ``table``."""
        return self.digest.kept

    @property
    def left_out_http(self) -> int:
        """HTTP connections without WebSocket evidence (see --all)."""
        return self.digest.total - self.digest.candidates

    @property
    def outside_range(self) -> int:
        """WebSocket connections not open within ``time_range``."""
        return self.digest.candidates - self.digest.kept

    @functools.cached_property
    def connections(self) -> pl.DataFrame:
        """Every connection of ``table`` (CONNECTION_SCHEMA) in one frame, held once asked
        for: the reports that can, read ``table.blocks()`` instead."""
        return self.table.frame()

    @property
    def total_lines(self) -> int:
        return sum(self.lines.values())


@dataclass
class Analysis:
    """Accumulates the steps of one run; decides what is a WebSocket once, at the end."""

    max_examples: int = 10
    # Where connections are kept: None keeps none (the digest is all a table needs).
    runs: ConnectionRuns | None = field(default_factory=ConnectionRuns)
    time_range: TimeRange = field(default_factory=TimeRange)  # --since / --until
    digest: Digest = field(init=False)
    _evidence: PathEvidence = field(default_factory=lambda: PathEvidence(limit=1_000_000))
    _lines: Counter[LineResult] = field(default_factory=Counter)
    _reasons: Counter[str] = field(default_factory=Counter)
    _examples: list[pl.DataFrame] = field(default_factory=list)
    _example_count: int = 0
    _non_http: int = 0
    _evicted: Counter[str] = field(default_factory=Counter)
    _late: int = 0

    def __post_init__(self) -> None:
        self.digest = Digest(self.time_range)

    def add(self, step: Step) -> None:
        if self.runs is not None:
            self.runs.add(step.connections)
        self.digest.add(step.connections)
        self._evidence.learn(step.connections)
        self._lines.update(step.lines)
        self._reasons.update(step.rejects.get_column("reason").to_list())
        room = self.max_examples - self._example_count
        if room > 0 and step.rejects.height:
            self._examples.append(step.rejects.head(room))
            self._example_count += min(room, step.rejects.height)
        self._non_http += step.non_http
        self._evicted.update(early_by_side(step.early))
        self._late += step.late

    def result(self, *, include_all: bool = False) -> AnalysisResult:
        paths = self._evidence.paths
        table = ConnectionTable(self.runs, paths, include_all, self.time_range)
        examples = pl.concat([pl.DataFrame(schema=REJECT_SCHEMA), *self._examples])
        return AnalysisResult(
            table=table,
            digest=self.digest.resolve(paths, include_all=include_all),
            lines={result: self._lines[result] for result in LineResult},
            rejects_by_reason=dict(self._reasons.most_common()),
            reject_examples=examples,
            non_http=self._non_http,
            evicted=dict(self._evicted),
            late_entries=self._late,
            time_range=self.time_range,
        )


# Entries correlated at a time by analyze: the correlator's work per feed is the batch plus a
# pass over what is pending (a correlation window of every input), so small reads are joined
# up. 100,000 entries are about 40 MiB decoded.
BATCH_ENTRIES = 100_000


def batches(
    chunks: Iterable[tuple[Decoded, datetime]], batch_entries: int
) -> Iterator[tuple[Decoded, datetime]]:
    """Consecutive chunks joined up to at least ``batch_entries`` entries, each batch with the
    watermark of its last chunk: every entry read by then is in the batch, so the watermark
    holds for it as it held for that chunk (releasing later than a chunk at a time could,
    never earlier)."""
    parts: list[Decoded] = []
    entries = 0
    for chunk, watermark in chunks:
        parts.append(chunk)
        entries += chunk.entries.height
        if entries >= batch_entries:
            yield Decoded.concat(parts), watermark
            parts, entries = [], 0
    if parts:
        yield Decoded.concat(parts), watermark


def analyze_chunks(
    chunks: Iterable[tuple[Decoded, datetime]],
    *,
    pipeline: Pipeline,
    include_all: bool = False,
    time_range: TimeRange | None = None,
    batch_entries: int = BATCH_ENTRIES,
    runs: ConnectionRuns | None = None,
    keep_connections: bool = True,
) -> AnalysisResult:
    """A whole run of ``wslog analyze``: every decoded chunk through ``pipeline``, each with
    the inputs' watermark once it was read, then the end of input. Chunks are fed
    ``batch_entries`` at a time (see ``batches``). Connections released without both sides are
    held to the end (``CorrelationSettings.hold_unpaired``), so a counterpart later in the
    same stream still joins them. WebSocket connections not open within ``time_range`` are
    counted and left out. The connections are kept in ``runs`` (by default, a fresh
    ``ConnectionRuns``: on disk past its memory budget), unless ``keep_connections`` is false:
    then the result has its digest (all the table report needs) and no connections."""
    if not pipeline.settings.hold_unpaired:
        pipeline = replace(pipeline, settings=replace(pipeline.settings, hold_unpaired=True))
    kept = (runs or ConnectionRuns()) if keep_connections else None
    analysis = Analysis(runs=kept, time_range=time_range or TimeRange())
    for batch, watermark in batches(chunks, batch_entries):
        analysis.add(pipeline.feed_decoded(batch, watermark))
    analysis.add(pipeline.flush())
    return analysis.result(include_all=include_all)
