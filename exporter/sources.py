"""Where the exporter's raw log lines come from, and the one interface every source speaks.

A source turns some byte stream (a pod's log API stream, node-local files, stdin) into
``Chunk``s of *complete* lines, each delivered exactly once, and reports the life of its
streams through ``SourceEvents``. Sources know nothing about access-log formats: framing
(kubelet timestamps, CRI) is only passed on as a hint for the deframer, so the pure core stays
the single place that interprets a line.

Sources are plain blocking code run on threads: the official Kubernetes client is synchronous,
and bounded concurrency (a semaphore) is simpler to reason about than an event loop here.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Protocol

from analyzer.errors import WslogError
from analyzer.lines import MAX_LINE_BYTES, LineAssembler, Overlong, Segment, split_segment

__all__ = [
    "Chunk",
    "RestartReason",
    "Sink",
    "Source",
    "SourceError",
    "SourceEvents",
    "StdinSource",
    "decode_line",
    "emit",
    "lines_of",
    "split_lines",
]

TIMESTAMPS = "timestamps"
CRI = "cri"


class RestartReason(StrEnum):
    """Why a stream was reopened (the ``reason`` label of ``wslog_stream_restarts_total``)."""

    END_OF_STREAM = "end_of_stream"  # the server ended the stream (containerd, kubelet)
    CONNECTION_ERROR = "connection_error"  # cut, reset, refused, malformed chunking
    TIMEOUT = "timeout"  # nothing read for the idle timeout
    SERVER_ERROR = "server_error"  # 5xx, 429 and other unexpected statuses
    DENIED = "denied"  # 401 or 403
    NOT_READY = "not_ready"  # container not started yet (400 or empty answer), pod not found
    CONTAINER_RESTART = "container_restart"
    WATCH_EXPIRED = "watch_expired"  # 410: relisted
    ROTATED = "rotated"
    TRUNCATED = "truncated"


class SourceError(WslogError):
    """A source cannot run. ``retryable`` says whether waiting and retrying can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Chunk:
    """Complete raw lines of one stream, without their trailing newline."""

    source: str  # "namespace/pod" (kubernetes), the file path (files), "-" (stdin)
    lines: tuple[str | Overlong, ...]  # Overlong: a line over the bound, counted ``too-long``
    framing: str | None  # "timestamps", "cri", or None: let the deframer detect it


class SourceEvents(Protocol):
    """What a source reports about its streams; the exporter bridges it to its metrics."""

    def stream_opened(self, kind: str, source: str) -> None: ...
    def stream_closed(self, kind: str, source: str) -> None: ...
    def stream_restarted(self, kind: str, source: str, reason: str) -> None: ...
    def health(self, ok: bool, reason: str) -> None: ...


Sink = Callable[[Chunk], None]


class Source(Protocol):
    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        """Deliver chunks to ``sink`` (maybe from several threads) until ``stop`` is set,
        or until the input ends for sources that have an end (stdin, files with once)."""
        ...


def split_lines(pending: bytes, data: bytes) -> tuple[list[str], bytes]:
    """Complete lines of ``pending + data`` and the trailing piece that is not a line yet.

    Lines keep everything but their ``\\n`` (a ``\\r`` before it is dropped too); undecodable
    bytes are replaced rather than lost, so a line count never depends on the encoding.
    """
    buf = pending + data
    end = buf.rfind(b"\n")
    if end < 0:
        return [], buf
    lines = [decode_line(raw) for raw in buf[:end].split(b"\n")]
    return lines, buf[end + 1 :]


def decode_line(raw: bytes) -> str:
    """A line's text; bytes that are not UTF-8 are kept (as lone surrogates) so that the
    Deframer rejects the line as ``encoding``, as ``wslog analyze`` does."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="surrogateescape")


class StdinSource:
    """Lines from a binary stream (stdin by default) until it ends or ``stop`` is set."""

    def __init__(
        self,
        stream: IO[bytes] | None = None,
        chunk_max_lines: int = 1000,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._stream = stream
        self._chunk_max_lines = chunk_max_lines
        self._max_line_bytes = max_line_bytes

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        import sys

        events.stream_opened("stdin", "-")
        events.health(True, "")
        try:
            if self._stream is None:
                self._pump(_fd_reader(sys.stdin.fileno(), stop), sink, stop)
            else:
                stream = self._stream
                self._pump(lambda: _read_some(stream), sink, stop)
        finally:
            events.stream_closed("stdin", "-")

    def _pump(self, read: Callable[[], bytes], sink: Sink, stop: threading.Event) -> None:
        assembler = LineAssembler(self._max_line_bytes)
        while not stop.is_set():
            data = read()
            if not data:
                break
            emit(sink, "-", lines_of(assembler.feed(data)), None, self._chunk_max_lines)
        if not stop.is_set():
            emit(sink, "-", lines_of(assembler.finish()), None, self._chunk_max_lines)


def lines_of(segments: list[Segment]) -> list[str | Overlong]:
    """The lines of a ``LineAssembler``'s segments, decoded; an ``Overlong`` stays one item."""
    lines: list[str | Overlong] = []
    for segment in segments:
        if isinstance(segment, Overlong):
            lines.append(segment)
        else:
            lines.extend(split_segment(segment))
    return lines


def _fd_reader(fd: int, stop: threading.Event, poll_s: float = 0.2) -> Callable[[], bytes]:
    """Reads of the process's stdin straight from its file descriptor, waking every ``poll_s``
    to see ``stop``: a thread blocked inside ``sys.stdin.buffer`` holds its lock, and Python
    aborts at exit ("could not acquire lock ... at interpreter shutdown") on SIGTERM."""

    def read() -> bytes:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], poll_s)
            if ready:
                return os.read(fd, 65536)
        return b""

    return read


def _read_some(stream: IO[bytes]) -> bytes:
    read1 = getattr(stream, "read1", None)
    if read1 is not None:
        data: bytes = read1(65536)
        return data
    return stream.read(65536)


def emit(
    sink: Sink,
    source: str,
    lines: Sequence[str | Overlong],
    framing: str | None,
    max_lines: int,
) -> None:
    """Hand ``lines`` to ``sink`` in chunks of at most ``max_lines``."""
    for start in range(0, len(lines), max_lines):
        sink(Chunk(source, tuple(lines[start : start + max_lines]), framing))
