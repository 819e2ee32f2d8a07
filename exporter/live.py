"""The analyzer's pipeline on micro-batches: chunks from any source in, connections out.

Sources call ``LiveAnalyzer.accept`` from their threads; the exporter's main loop calls ``tick``
every batch interval, or at once when the buffer holds a batch's worth of lines. How much that
is adapts to the input rate (``BatchSize``): when live, a small batch (an eighth of the buffer's
bound) or the interval, whichever comes first, so a line waits at most about one interval; when
behind (the last batch was taken because it was full, not because the interval passed), twice
the last, up to the whole buffer, so a backlog is worked off in large batches, whose per-batch
costs are paid less often. Past the bound ``accept`` waits (backpressure, so memory stays
bounded whatever the input rate). A tick deframes nothing itself (each
source's ``Deframer`` did so on arrival), feeds the batch through the shared
``analyzer.pipeline.Pipeline`` with an event-time watermark (``SourceProgress``), keeps only
WebSocket candidates (own evidence, or a service and path that showed evidence before) and
hands every released connection to the sinks (metrics, the ``wslog tail`` printer).

A source that is ahead decodes for the tick (``_Batch``): the lines it accepts in a row make a
batch, which the source decodes itself once it holds half the buffer's bound, or when the
buffer is full (it would only wait). polars releases the interpreter lock while it decodes, so on
two cores reading and decoding the next lines overlaps correlating the last ones. A tick still
takes every line accepted before it, decoding what no source did; the result is what one
``decode_framed`` of all of them gives, so who decoded a batch never changes a count. Live
(a trickle), no batch fills and the tick decodes as before.

When no line arrived for ``idle_release`` seconds, finished connections are released without
waiting for the event-time watermark: nothing else is on its way, so their counterparts, if
any, are already pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import polars as pl

from analyzer.classify import select_websockets
from analyzer.decode import Decoded, decode, newest_start, with_framing_rejects
from analyzer.framing import Deframer, Framed, Framing
from analyzer.lines import HEAD_BYTES, MAX_LINE_BYTES, Overlong
from analyzer.pipeline import PathEvidence, Pipeline, Step
from exporter.settings import MAX_BUFFERED_BYTES
from exporter.sources import Chunk

ConnectionSink = Callable[[pl.DataFrame], None]
StepSink = Callable[[Step, pl.DataFrame], None]

FRAMING_HINTS = {"timestamps": Framing.KUBECTL_TIMESTAMPS, "cri": Framing.CRI}
PEEK_LINES = 4  # lines read to tell how far a source's block went in time (newest_start)


# A watermark before every entry: nothing is released by time (see SourceProgress.watermark).
HOLD = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class SourceProgress:
    """How far each source has got in event time (the start of its last entry, as
    ``wslog analyze`` tracks its inputs): the watermark is the oldest progress among the sources
    that delivered an entry within ``idle_s``, so a pod whose log lags behind another's is
    waited for, and a silent one does not hold the others back. A stream that was opened and
    has delivered nothing yet holds the watermark back (``HOLD``) for ``idle_s``: at start,
    every file or pod log opened is waited for, so the first one read does not release the
    others' connections unpaired."""

    idle_s: float
    _last: dict[str, tuple[int | None, float]] = field(default_factory=dict)  # (start us, seen)

    def opened(self, source: str, now: float) -> None:
        """A stream of ``source`` was opened: it is waited for until it delivers, ``idle_s``
        at most."""
        if source not in self._last:
            self._last[source] = (None, now)

    def closed(self, source: str) -> None:
        """A stream ended: one that never delivered is not waited for any more."""
        if source in self._last and self._last[source][0] is None:
            del self._last[source]

    def learn(self, entries: pl.DataFrame, now: float) -> None:
        last = (
            entries.select("source", us=pl.col("start_time").dt.epoch("us"))
            .drop_nulls()
            .group_by("source", maintain_order=True)
            .agg(pl.col("us").last())
        )
        for source, start_us in last.iter_rows():
            self._last[source] = (start_us, now)

    def watermark(self, now: float) -> datetime | None:
        """The oldest progress among active sources; a silent one is forgotten until it
        delivers again (so the map holds no more than the sources that are delivering).
        ``HOLD`` while an opened stream has not delivered yet; None when no source is
        active."""
        self._last = {s: v for s, v in self._last.items() if now - v[1] < self.idle_s}
        active = [us for us, _ in self._last.values()]
        if any(us is None for us in active):
            return HOLD
        known = [us for us in active if us is not None]
        return datetime.fromtimestamp(min(known) / 1e6, tz=UTC) if known else None


@dataclass
class BatchSize:
    """How many bytes of lines make a batch: ``live_bytes`` while batches are taken because
    the interval passed, doubling (up to ``max_bytes``) each time one is taken because it was
    full, back to ``live_bytes`` when the interval passes first again."""

    live_bytes: int
    max_bytes: int
    bytes: int = 0

    def __post_init__(self) -> None:
        self.bytes = self.live_bytes

    def after(self, *, full: bool) -> None:
        self.bytes = min(self.bytes * 2, self.max_bytes) if full else self.live_bytes


@dataclass
class _Batch:
    """Chunks accepted one after another, to be decoded together: by a source that is ahead
    (``claimed``), else by the tick."""

    parts: list[Framed] = field(default_factory=list)
    size: int = 0
    claimed: bool = False
    decoded: Decoded | None = None  # the lines' entries and decode rejects, once decoded


@dataclass
class LiveAnalyzer:
    pipeline: Pipeline
    on_step: StepSink
    idle_release_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    max_line_bytes: int = MAX_LINE_BYTES
    # Raw bytes of lines accepted but not yet ticked: past this, ``accept`` blocks its source
    # until the next tick, so a fast input waits instead of filling memory.
    max_buffered_bytes: int = MAX_BUFFERED_BYTES
    evidence: PathEvidence = field(default_factory=PathEvidence)
    progress: SourceProgress = field(init=False)
    batch: BatchSize = field(init=False)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _deframers: dict[str, Deframer] = field(default_factory=dict)
    _peekers: dict[str, Deframer] = field(default_factory=dict)  # newest_start's, per source
    _buffer: list[_Batch] = field(default_factory=list)
    _buffered_bytes: int = 0
    _draining: bool = False
    _last_input: float = 0.0
    _idle_released: bool = True
    _behind: bool = False  # the last wait ended on a full batch (see _take)
    # What the running tick works on, for held_lines (under _lock): its parts, and the entries
    # that were pending when it began (kept as they are; held_lines reads them only if asked).
    _in_tick: list[_Batch] = field(default_factory=list)
    _pending_at_tick: pl.DataFrame | None = None

    def __post_init__(self) -> None:
        self.progress = SourceProgress(self.idle_release_s)
        live = max(1, self.max_buffered_bytes // 8)
        self.batch = BatchSize(live, self.max_buffered_bytes)

    def accept(self, chunk: Chunk) -> None:
        """Thread-safe: deframe a source's chunk and keep it for the next tick; waits while the
        buffer is full (backpressure), unless the loop is stopping. A source that is ahead
        decodes a batch (see the module's docstring) rather than wait idle."""
        size = sum(len(line) if isinstance(line, str) else HEAD_BYTES for line in chunk.lines)
        while True:
            with self._lock:
                ahead = self._full_batch_to_decode()
                if ahead is None:
                    self._keep(chunk, size)
                    ahead = self._batch_to_decode(self.max_buffered_bytes // 2)
                    kept = True
                else:
                    kept = False
            if ahead is not None:
                self._decode(ahead)
            if kept:
                return

    def _full_batch_to_decode(self) -> _Batch | None:
        """Under the lock: wait while the buffer is full, unless a batch is left to decode."""
        while self._buffered_bytes >= self.max_buffered_bytes and not self._draining:
            ahead = self._batch_to_decode(1)
            if ahead is not None:
                return ahead
            self._lock.notify_all()  # wakes wait_for_batch: tick now
            self._lock.wait(0.5)
        return None

    def _keep(self, chunk: Chunk, size: int) -> None:
        deframer = self._deframers.get(chunk.source)
        if deframer is None:
            framing = FRAMING_HINTS.get(chunk.framing or "")
            deframer = Deframer(chunk.source, framing, self.max_line_bytes)
            self._deframers[chunk.source] = deframer
        if not self._buffer or self._buffer[-1].claimed:
            self._buffer.append(_Batch())
        batch = self._buffer[-1]
        batch.parts.append(deframer.feed_lines(chunk.lines))
        batch.size += size
        self._buffered_bytes += size
        self._last_input = self.clock()
        self._idle_released = False
        if self._buffered_bytes >= self.batch.bytes:
            self._lock.notify_all()  # a batch is ready: wakes wait_for_batch

    def _batch_to_decode(self, min_bytes: int) -> _Batch | None:
        """Under the lock: the open batch, claimed for decoding, once it holds ``min_bytes``."""
        batch = self._buffer[-1] if self._buffer else None
        if batch is None or batch.claimed or batch.size < min_bytes:
            return None
        batch.claimed = True
        return batch

    def _decode(self, batch: _Batch) -> None:
        """Decode a claimed batch (outside the lock); should it fail, the tick decodes it."""
        try:
            decoded = decode(Framed.concat(batch.parts).lines, self.pipeline.formats)
        except BaseException:
            with self._lock:
                batch.claimed = False
                self._lock.notify_all()
            raise
        with self._lock:
            batch.decoded = decoded
            self._lock.notify_all()

    def _decoded(self, batches: Sequence[_Batch]) -> Decoded:
        """What ``decode_framed`` gives for all the batches' lines at once: the batches a
        source is decoding are waited for, the others are decoded here."""
        for batch in batches:
            with self._lock:
                while batch.claimed and batch.decoded is None:
                    self._lock.wait(0.1)
                mine = batch.decoded is None
                batch.claimed = True
            if mine:
                self._decode(batch)
        framing = [part.rejects for batch in batches for part in batch.parts]
        done = Decoded.concat([batch.decoded for batch in batches if batch.decoded is not None])
        return with_framing_rejects(done, framing)

    def wait_for_batch(self, timeout_s: float, stop: threading.Event) -> bool:
        """Wait up to ``timeout_s`` for the next tick: less when a batch's worth of lines is
        waiting (``BatchSize``) or when ``stop`` is set. Returns whether the batch is full, and
        sizes the next one from that: a full batch means the input is ahead of the ticks."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not stop.is_set() and self._buffered_bytes < self.batch.bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
            full = self._buffered_bytes >= self.batch.bytes
            if not stop.is_set():
                self.batch.after(full=full)
            self._behind = full
            return full

    def drain(self) -> None:
        """The loop is stopping: never block a source again (it is finishing its last read)."""
        with self._lock:
            self._draining = True
            self._lock.notify_all()

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    def stream_opened(self, source: str) -> None:
        """Thread-safe: a source opened a stream of ``source`` (``SourceProgress.opened``)."""
        with self._lock:
            self.progress.opened(source, self.clock())

    def stream_closed(self, source: str) -> None:
        """Thread-safe: the stream of ``source`` ended (``SourceProgress.closed``)."""
        with self._lock:
            self.progress.closed(source)

    def newest_start(self, source: str, lines: Sequence[str | Overlong]) -> datetime | None:
        """The newest start time among the last ``PEEK_LINES`` lines of ``source`` (None when
        none is an entry), deframed as that source's lines are (a deframer of its own, for
        this look only) and read with ``decode.newest_start``. A source that reads several
        files calls it from its thread, to read the one furthest behind in time next."""
        texts = [line for line in lines[-PEEK_LINES:] if isinstance(line, str)]
        if not texts:
            return None
        with self._lock:
            peeker = self._peekers.setdefault(source, Deframer(source, None, self.max_line_bytes))
        framed = peeker.feed_lines(texts).lines.get_column("text").to_list()
        return newest_start(framed, self.pipeline.formats)

    def held_lines(self) -> pl.DataFrame:
        """Thread-safe: ``source`` and ``line_no`` of every accepted line that may still count
        (buffered, in the running tick, or pending in the correlator). A source that
        acknowledges its input (``exporter.jetstream``) acknowledges only the others."""
        with self._lock:
            batches = (*self._in_tick, *self._buffer)
            held = [_lines_of(part) for batch in batches for part in batch.parts]
            if self._pending_at_tick is not None:
                held.append(self._pending_at_tick)
            held.append(self.pipeline.correlator.pending_lines())
        return pl.concat(held)

    def tick(self) -> Step | None:
        """Run one micro-batch; returns what it produced (None when there was nothing to do)."""
        try:
            return self._tick()
        finally:
            with self._lock:
                self._in_tick, self._pending_at_tick = [], None

    def _tick(self) -> Step | None:
        with self._lock:
            batches = self._in_tick = self._take()
            self._pending_at_tick = self.pipeline.correlator.pending_lines()
            self._lock.notify_all()
            idle = (
                not batches
                and not self._idle_released
                and self.clock() - self._last_input >= self.idle_release_s
            )
            if idle:
                self._idle_released = True
        if batches:
            decoded = self._decoded(batches)
            with self._lock:  # sources report their streams opening and closing meanwhile
                self.progress.learn(decoded.entries, self.clock())
                watermark = self.progress.watermark(self.clock())
            return self._emit(self.pipeline.feed_decoded(decoded, watermark))
        if idle:
            return self._emit(self.pipeline.release_finished())
        return None

    def _take(self) -> list[_Batch]:
        """Under the lock: what this tick works on. Every batch, but when the input is ahead
        of the ticks only those a source decoded or is decoding, if any: the source decodes
        the rest while this tick correlates."""
        count = len(self._buffer)
        if self._behind:
            count = next((i for i, b in enumerate(self._buffer) if not b.claimed), count) or count
        batches, self._buffer = self._buffer[:count], self._buffer[count:]
        self._buffered_bytes = sum(batch.size for batch in self._buffer)
        return batches

    def finish(self) -> Step:
        """End of all input: flush deframers and the correlator."""
        with self._lock:
            flushed = _Batch([d.flush() for d in self._deframers.values()])
            batches = [*self._buffer, flushed] if flushed.parts else self._buffer
            self._deframers.clear()
            self._buffer, self._buffered_bytes = [], 0
            self._lock.notify_all()
        if batches:
            self._emit(self.pipeline.feed_decoded(self._decoded(batches)))
        return self._emit(self.pipeline.flush())

    def _emit(self, step: Step) -> Step:
        self.evidence.learn(step.connections)
        websockets = select_websockets(step.connections, self.evidence.paths)
        early = select_websockets(step.early, self.evidence.paths)
        self.on_step(replace(step, early=early), websockets)
        return step


def _lines_of(framed: Framed) -> pl.DataFrame:
    return pl.concat(
        [framed.lines.select("source", "line_no"), framed.rejects.select("source", "line_no")]
    )
