"""Batching adapts to the input rate (exporter/live.py, ``BatchSize``): a backlog is worked off
in batches that grow past the live size, and a live trickle is processed every interval, never
held back until a batch fills."""

from __future__ import annotations

import threading
from datetime import timedelta

import polars as pl

from analyzer.correlate import CorrelationSettings
from analyzer.formats import default_formats
from analyzer.pipeline import Pipeline, Step
from exporter.live import BatchSize, LiveAnalyzer
from exporter.run import Loop
from exporter.sources import Chunk, Sink, SourceEvents
from tests.conftest import TESTDATA

H1 = TESTDATA / "lab" / "json" / "h1"
LINES = tuple((H1 / "client.log").read_text().splitlines())
BUFFER_BYTES = 64 << 10  # live batches of 8 KiB


class Events:
    def stream_opened(self, kind: str, source: str) -> None: ...
    def stream_closed(self, kind: str, source: str) -> None: ...
    def stream_restarted(self, kind: str, source: str, reason: str) -> None: ...
    def health(self, ok: bool, reason: str) -> None: ...


class Recorder(LiveAnalyzer):
    """A LiveAnalyzer noting how many bytes of lines each tick took."""

    batches: list[int]

    def tick(self) -> Step | None:
        self.batches.append(self.buffered_bytes)
        return super().tick()


def _live(lines_seen: list[int], ticked: threading.Event | None = None) -> Recorder:
    def on_step(step: Step, websockets: pl.DataFrame) -> None:
        lines: int = sum(step.lines.values())
        lines_seen.append(lines)
        if ticked is not None and lines:
            ticked.set()

    settings = CorrelationSettings(window=timedelta(seconds=2))
    pipeline = Pipeline(formats=default_formats(), settings=settings)
    live = Recorder(pipeline=pipeline, on_step=on_step, max_buffered_bytes=BUFFER_BYTES)
    live.batches = []
    return live


class Backlog:
    """Everything at once: ``chunks`` chunks as fast as the pipeline takes them."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        for n in range(self.chunks):
            sink(Chunk(f"pod-{n % 2}", LINES, None))


class Trickle:
    """One chunk, then nothing until the loop has processed it, ``chunks`` times."""

    def __init__(self, chunks: int, ticked: threading.Event) -> None:
        self.chunks, self.ticked = chunks, ticked
        self.processed = 0

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        for _ in range(self.chunks):
            self.ticked.clear()
            sink(Chunk("pod", LINES, None))
            if not self.ticked.wait(10):
                return
            self.processed += 1


def test_batch_size_doubles_while_batches_fill_and_resets_when_the_interval_passes() -> None:
    size = BatchSize(live_bytes=10, max_bytes=50)
    taken = []
    for full in (True, True, True, True, False, True):
        size.after(full=full)
        taken.append(size.bytes)
    assert taken == [20, 40, 50, 50, 10, 20]


def test_a_backlog_is_taken_in_batches_growing_past_the_live_size() -> None:
    live = _live([])
    stop = threading.Event()
    for n in range(5):  # lines keep coming faster than the ticks: every batch is full
        while live.buffered_bytes < live.batch.bytes:
            live.accept(Chunk(f"pod-{n % 2}", LINES, None))
        assert live.wait_for_batch(30.0, stop)  # full: taken without waiting for the interval
        live.tick()
    assert live.batches[0] < 2 * BUFFER_BYTES // 8
    assert live.batches == sorted(live.batches)
    assert live.batches[-1] >= BUFFER_BYTES
    live.accept(Chunk("pod-0", LINES, None))  # then a trickle: live again
    assert not live.wait_for_batch(0.05, stop)
    live.tick()
    assert live.batch.bytes == BUFFER_BYTES // 8


def test_a_backlog_through_the_loop_counts_every_line_in_bounded_batches() -> None:
    lines_seen: list[int] = []
    live = _live(lines_seen)
    chunks = 400
    loop = Loop(live, Backlog(chunks), Events(), batch_interval_s=0.2, exit_on_end=True)
    loop.run(threading.Event())
    assert sum(lines_seen) == chunks * len(LINES)
    chunk_bytes = sum(len(line) for line in LINES)
    assert max(live.batches) <= BUFFER_BYTES + chunk_bytes


def test_a_live_trickle_is_processed_every_interval() -> None:
    lines_seen: list[int] = []
    ticked = threading.Event()
    live = _live(lines_seen, ticked)
    trickle = Trickle(3, ticked)
    stop = threading.Event()
    loop = Loop(live, trickle, Events(), batch_interval_s=0.2, exit_on_end=True)
    runner = threading.Thread(target=loop.run, args=(stop,))
    runner.start()
    runner.join(timeout=30)
    stop.set()
    runner.join(timeout=10)
    assert trickle.processed == 3  # each chunk, below a batch's size, was ticked on its own
    assert [n for n in lines_seen if n] == [len(LINES)] * 3
    assert live.batch.bytes == live.batch.live_bytes
