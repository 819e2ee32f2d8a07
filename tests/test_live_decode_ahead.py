"""A source that is ahead decodes for the tick (exporter/live.py, ``_Batch``): the lines it
accepts in a row are decoded together by the source once they fill half the buffer, or when
the buffer is full, while the tick correlates the previous lines. Who decoded a batch never
changes what a tick produces: a tick over batches decoded apart gives exactly what one decode
of all their lines gives, entries, rejects and line counts, and no line is lost or counted
twice when a source and the loop run together."""

from __future__ import annotations

import threading
from datetime import timedelta

import polars as pl
import pytest

from analyzer.correlate import CorrelationSettings
from analyzer.decode import Decoded, decode
from analyzer.formats import FormatSet, default_formats
from analyzer.pipeline import Pipeline, Step
from analyzer.vocab import LineResult
from exporter.live import LiveAnalyzer
from exporter.run import Loop
from exporter.sources import Chunk, Sink, SourceEvents
from tests.conftest import TESTDATA

GENERATIONS = sorted((TESTDATA / "istio-text-generations").glob("*.log"))
JSON_LOG = TESTDATA / "lab" / "json" / "h1" / "client.log"
ODD = (
    "2026-01-01T00:00:00.000000Z\tinfo\tenvoy main: a proxy's own message",
    '[2026-01-01T00:00:01.000Z] "GET /cut HTTP/1.1" 101',  # an entry cut short: malformed
    '{"start_time": "2026-01-01T00:00:02.000Z", "method": "GET"',  # truncated JSON
    "",
)


def _chunks() -> list[Chunk]:
    """Every Istio TEXT generation, JSON entries and odd lines, in chunks of a few lines;
    one CRI source has lines that are not CRI (framing rejects)."""
    chunks = []
    for path in [*GENERATIONS, JSON_LOG]:
        lines = path.read_text().splitlines()
        for start in range(0, len(lines), 7):
            chunks.append(Chunk(path.name, tuple(lines[start : start + 7]) + ODD, None))
    cri = ("2026-01-01T00:00:03.000000000Z stdout F " + line for line in ODD[:2])
    chunks.append(Chunk("cri", (*cri, "not a CRI line"), "cri"))
    return chunks


def _analyzer(steps: list[Step], max_buffered_bytes: int) -> LiveAnalyzer:
    settings = CorrelationSettings(window=timedelta(seconds=2))
    pipeline = Pipeline(formats=default_formats(), settings=settings)

    def on_step(step: Step, websockets: pl.DataFrame) -> None:
        steps.append(step)

    return LiveAnalyzer(pipeline=pipeline, on_step=on_step, max_buffered_bytes=max_buffered_bytes)


def _bytes(chunks: list[Chunk]) -> int:
    return sum(len(line) for chunk in chunks for line in chunk.lines if isinstance(line, str))


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of lines of each ``decode`` the live analyzer runs."""
    calls: list[int] = []

    def counted(lines: pl.DataFrame, formats: FormatSet) -> Decoded:
        calls.append(lines.height)
        return decode(lines, formats)

    monkeypatch.setattr("exporter.live.decode", counted)
    return calls


def _one_tick(chunks: list[Chunk], max_buffered_bytes: int) -> list[Step]:
    steps: list[Step] = []
    live = _analyzer(steps, max_buffered_bytes)
    for chunk in chunks:
        live.accept(chunk)
    live.tick()
    live.finish()
    return steps


def _assert_same(left: list[Step], right: list[Step]) -> None:
    assert len(left) == len(right)
    for mine, theirs in zip(left, right, strict=True):
        assert mine.lines == theirs.lines
        assert mine.rejects.equals(theirs.rejects)
        assert mine.connections.equals(theirs.connections)
        assert mine.newest == theirs.newest


def test_a_tick_over_batches_decoded_by_the_source_gives_one_decode_of_all_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunks = _chunks()
    reference = _one_tick(chunks, max_buffered_bytes=64 << 20)
    calls = _counting_decodes(monkeypatch)
    # half the buffer is three quarters of the input: the source decodes a batch of those,
    # the tick the rest
    ahead = _one_tick(chunks, max_buffered_bytes=3 * _bytes(chunks) // 2)
    assert len(calls) >= 2, "the source decoded a batch ahead of the tick"
    _assert_same(ahead, reference)
    counted = reference[0].lines
    assert counted[LineResult.ENTRY] and counted[LineResult.MALFORMED]
    assert counted[LineResult.NOT_ACCESS_LOG]


class Backlog:
    """Every chunk as fast as the pipeline takes them, then the end (``--once``)."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        for chunk in self.chunks:
            sink(chunk)


class Events:
    def stream_opened(self, kind: str, source: str) -> None: ...
    def stream_closed(self, kind: str, source: str) -> None: ...
    def stream_restarted(self, kind: str, source: str, reason: str) -> None: ...
    def health(self, ok: bool, reason: str) -> None: ...


def _looped(chunks: list[Chunk], max_buffered_bytes: int) -> list[Step]:
    steps: list[Step] = []
    live = _analyzer(steps, max_buffered_bytes)
    loop = Loop(live, Backlog(chunks), Events(), batch_interval_s=0.05, exit_on_end=True)
    runner = threading.Thread(target=loop.run, args=(threading.Event(),))
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the loop stopped once the source ended"
    return steps


def test_a_source_decoding_ahead_of_the_loop_loses_no_line_and_counts_none_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chunks = _chunks() * 4
    reference = _one_tick(chunks, max_buffered_bytes=64 << 20)
    calls = _counting_decodes(monkeypatch)
    steps = _looped(chunks, max_buffered_bytes=4 << 10)  # full all the time: always ahead
    assert len(calls) > 10
    lines = sum(len(chunk.lines) for chunk in chunks)
    assert sum(sum(step.lines.values()) for step in steps) == lines
    for result in LineResult:
        counted = sum(step.lines[result] for step in steps)
        assert counted == reference[0].lines[result]
    rejects = pl.concat([s.rejects for s in steps]).sort("source", "line_no")
    assert rejects.equals(reference[0].rejects.sort("source", "line_no"))
