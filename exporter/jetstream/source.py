"""The correlator's source: this replica's partitions of the stream, as chunks of their original
sources, acknowledged only once counted.

Each message is one physical line; it is handed to the live pipeline as a line of its original
source (header ``Wslog-Source``), so per-source deframing and the event-time watermark work as
with local files. The source numbers each source's lines as the pipeline's ``Deframer`` does
(one per line, in order), so it knows which message holds which ``(source, line_no)``.

Acknowledgement (AckAll, per partition): every ``ack_interval_s`` the source asks the analyzer
which lines may still count (``LiveAnalyzer.held_lines``: buffered, in a tick, or pending a
counterpart) and acknowledges each partition's longest prefix of messages none of which is held:
a message is acknowledged only when every connection its line belongs to has been counted (or the
line was counted as noise). After a crash the consumer is recreated right after its
acknowledged floor (``stream.resume_consumer``): nothing counted-not-acknowledged is lost, and
what is replayed is the held lines plus the lines after the oldest held one in that partition;
the connections among the latter that were already counted are counted again (the duplicates,
bounded by what a partition receives while its oldest held line waits: the pair window in
steady traffic, longer behind an open long-lived connection's entries).

A graceful stop (SIGTERM) is a handover, not an end of input: ``flush_on_stop = False`` tells
``exporter.run.Loop`` not to count what is held (it would count it unpaired, unacknowledged, and
the next owner would count it again); the last acknowledgement leaves those messages to the next
owner. The same duplicates as after a crash remain possible (counted lines after a held one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats
import polars as pl

from analyzer.lines import Overlong
from exporter.jetstream import subjects
from exporter.jetstream.stream import ensure_stream, resume_consumer
from exporter.settings import NatsSettings
from exporter.sources import Chunk, Sink, SourceError, SourceEvents

log = logging.getLogger("wslog.nats")
KIND = "nats"
FETCH_WAIT_S = 0.05


class Holder(Protocol):
    def held_lines(self) -> pl.DataFrame: ...


@dataclass
class Delivered:
    """A delivered, not yet acknowledged message: its sequence, line and reply subject."""

    seq: int
    source: str
    line_no: int
    reply: str


@dataclass
class Partition:
    number: int
    sub: Any
    unacked: deque[Delivered] = field(default_factory=deque)

    def done_prefix(self, held: dict[str, set[int]]) -> Delivered | None:
        """Pop the longest prefix of messages whose lines are not held; the last one popped."""
        last = None
        while self.unacked:
            first = self.unacked[0]
            if first.line_no in held.get(first.source, ()):
                break
            last = self.unacked.popleft()
        return last


class JetStreamSource:
    """``wslog exporter --source nats``: this replica's partitions (``NatsSettings.owned``)."""

    # Stopping (SIGTERM, a rescheduled pod) counts nothing that is held: those lines stay
    # unacknowledged and the next owner of the partition counts them with their counterparts.
    flush_on_stop = False
    streams_are_sources = False  # its streams are partitions; its lines keep their sources

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self._holder: Holder | None = None
        self._line_nos: dict[str, int] = {}
        self.replayed_from: dict[int, int] = {}  # partition: first stream sequence delivered

    def attach(self, holder: Holder) -> None:
        """The analyzer whose held lines decide what is acknowledged (``exporter.run.Loop``)."""
        self._holder = holder

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        if self._holder is None:
            raise SourceError("the nats source needs the analyzer attached", retryable=False)
        asyncio.run(self._main(sink, stop, events))

    async def _main(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        try:
            nc = await nats.connect(
                self.settings.url,
                connect_timeout=self.settings.connect_timeout_s,
                max_reconnect_attempts=-1,
            )
        except Exception as exc:  # nats raises OSError, TimeoutError and its own errors
            events.health(False, f"cannot reach NATS at {self.settings.url}")
            raise SourceError(
                f"cannot reach NATS at {self.settings.url}: {exc}", retryable=True
            ) from exc
        try:
            partitions = await self._open(nc)
            for p in partitions:
                events.stream_opened(KIND, f"partition-{p.number}")
            events.health(True, "")
            await self._consume(nc, partitions, sink, stop)
            await self._ack(nc, partitions)
        finally:
            for number in self.settings.owned:
                events.stream_closed(KIND, f"partition-{number}")
            await nc.close()

    async def _open(self, nc: Any) -> list[Partition]:
        js = nc.jetstream()
        await ensure_stream(js, self.settings)
        partitions = []
        for number in self.settings.owned:
            self.replayed_from[number] = await resume_consumer(js, self.settings, number)
            sub = await js.pull_subscribe_bind(subjects.consumer_name(number), self.settings.stream)
            partitions.append(Partition(number, sub))
        return partitions

    async def _consume(
        self, nc: Any, partitions: list[Partition], sink: Sink, stop: threading.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        next_ack = loop.time()
        while not stop.is_set():
            got = 0
            for partition in partitions:
                messages = await _fetch(partition.sub, self.settings.fetch_batch)
                got += len(messages)
                for chunk in self._chunks(partition, messages):
                    await asyncio.to_thread(sink, chunk)
            if loop.time() >= next_ack:
                await self._ack(nc, partitions)
                next_ack = loop.time() + self.settings.ack_interval_s
            if not got:
                await asyncio.sleep(FETCH_WAIT_S)

    def _chunks(self, partition: Partition, messages: list[Any]) -> list[Chunk]:
        """Messages as chunks of their original sources, in order; each line numbered."""
        lines: dict[tuple[str, str | None], list[str | Overlong]] = {}
        for message in messages:
            headers = message.headers or {}
            source = headers.get(subjects.SOURCE, "nats")
            framing = headers.get(subjects.FRAMING)
            line_no = self._line_nos.get(source, 0) + 1
            self._line_nos[source] = line_no
            reply = message.reply
            partition.unacked.append(
                Delivered(message.metadata.sequence.stream, source, line_no, reply)
            )
            lines.setdefault((source, framing), []).append(_line(message.data, headers))
        return [Chunk(source, tuple(body), framing) for (source, framing), body in lines.items()]

    async def _ack(self, nc: Any, partitions: list[Partition]) -> None:
        assert self._holder is not None
        frame = self._holder.held_lines()
        held: dict[str, set[int]] = {}
        for source, line_nos in frame.group_by("source").agg("line_no").iter_rows():
            held[source] = set(line_nos)
        for partition in partitions:
            last = partition.done_prefix(held)
            if last is not None:
                await nc.publish(last.reply, b"+ACK")
        await nc.flush()


async def _fetch(sub: Any, batch: int) -> list[Any]:
    try:
        messages: list[Any] = await sub.fetch(batch, timeout=FETCH_WAIT_S)
        return messages
    except (nats.errors.TimeoutError, TimeoutError):  # nothing within the wait
        return []


def _line(data: bytes, headers: dict[str, str]) -> str | Overlong:
    length = headers.get(subjects.OVERLONG)
    if length is not None:
        return Overlong(int(length), data)
    return data.decode("utf-8", errors="surrogateescape")
