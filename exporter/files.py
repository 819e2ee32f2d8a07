"""The files source: follow node-local log files (DaemonSet mode) or replay saved ones.

Polling, not inotify: it works the same on every filesystem (hostPath, overlay, NFS, a
laptop), costs a few system calls per file per interval, and handles what kubelet and logrotate
do. Each poll of a path:

- **rotation** (the path now names another inode, or nothing): the old file is read to its end
  through the descriptor still open, its partial last line delivered as a line, then the new
  file is read from its start. A renamed file the globs still match (``0.log.20240101-000000``
  under a glob ending in ``*``) is picked up where its old name left off, not read again.
- **truncation** (copytruncate): the file no longer holds what was read, because it is shorter
  than the position read, or because its first bytes (up to ``FINGERPRINT_BYTES``, the
  fingerprint log shippers keep) changed. The second rule catches a truncation followed by a
  burst written past the old position before the next poll, which the size cannot tell. Every
  block is checked after it is read and before its lines are handed over, so no line of the new
  content is ever read from its middle. Then ``wslog_stream_restarts_total{reason="truncated"}``
  counts it, the old content's partial last line is delivered as a line (as ``wslog analyze``
  reads a file's last line) and the file is read again from its start. Limits: new content
  whose first KiB equals the old one's and that is already as long as the position read cannot
  be told from appended content (real log lines start with distinct timestamps); a truncation
  racing the read of one block drops that block, because it cannot be told whether it was read
  before or after (its lines were old content, which copytruncate's copy holds).
- reads go by blocks of ``read_size``, each handed over before the next is read (and the
  pipeline's ``accept`` blocks while its buffer is full): memory is bounded by a block and a
  partial line, not by the file;
- a partial trailing line is held until its newline arrives (or the file is finished), at most
  ``max_line_bytes`` of it (``analyzer.lines``: a longer line is counted ``too-long``);
- the globs are re-expanded every interval, so new pods' files are picked up from their start.

Where a file is first read from: the saved position when ``--state-dir`` holds one for this
very file (``exporter.filestate``); else its start with ``--from-start``, with ``--once``, for a
file found after the first scan, or for a file the saved state does not know (it appeared while
the exporter was down); else its end.

``once`` reads every matched file to its end and returns: the replay mode, which must deliver
exactly what ``wslog analyze`` would read from the same files.
"""

from __future__ import annotations

import glob
import heapq
import io
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from analyzer.lines import LineAssembler, Overlong
from exporter.filestate import Checkpoint, SavedState, StateStore, fingerprint
from exporter.settings import FileSettings
from exporter.sources import RestartReason, Sink, SourceEvents, emit, lines_of

__all__ = ["FileFollower", "FileSource"]

KIND = "files"
FINGERPRINT_BYTES = 1024
Lines = list[str | Overlong]


class Clock(Protocol):
    """What tells how far in time a block of lines went (``LiveAnalyzer.newest_start``)."""

    def newest_start(self, source: str, lines: Sequence[str | Overlong]) -> datetime | None: ...


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int

    @classmethod
    def of(cls, stat: os.stat_result) -> _Identity:
        return cls(stat.st_dev, stat.st_ino)


class _Lines:
    """Bytes in, complete lines out (``analyzer.lines``: bounded length, a partial last line
    held); also how many bytes fed are not part of a complete line yet."""

    def __init__(self, max_line_bytes: int) -> None:
        self._assembler = LineAssembler(max_line_bytes)
        self.unfinished = 0  # bytes since the end of the last complete line

    def feed(self, data: bytes) -> Lines:
        segments = self._assembler.feed(data)
        used = sum(len(s) if isinstance(s, bytes) else s.length + 1 for s in segments)
        self.unfinished += len(data) - used
        return lines_of(segments)

    def flush(self) -> Lines:
        """The input ended: the partial line is a line after all."""
        self.unfinished = 0
        return lines_of(self._assembler.finish())


class FileFollower:
    """One path: its open file, the position read, the file's first bytes, the partial line."""

    def __init__(self, path: str, settings: FileSettings, *, from_start: bool) -> None:
        self.path = path
        self._read_size, self._max_line_bytes = settings.read_size, settings.max_line_bytes
        self._from_start = from_start
        self._file: io.FileIO | None = None
        self.identity: _Identity | None = None
        self._position = 0
        self._head = b""  # the file's first bytes as read: its fingerprint
        self._lines = _Lines(settings.max_line_bytes)
        self._skip_partial = False  # started in the middle of a line: drop up to its end

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> _Identity:
        """Open the path, at its start; ``place`` then moves to where reading resumes."""
        handle = io.FileIO(self.path, "rb")
        self._file, self.identity = handle, _Identity.of(os.fstat(handle.fileno()))
        self._position, self._head, self._skip_partial = 0, b"", False
        self._lines = _Lines(self._max_line_bytes)
        return self.identity

    def place(self, checkpoint: Checkpoint | None) -> None:
        """Resume at ``checkpoint`` if it names this file, else start here or at the end."""
        if not (checkpoint is not None and self._resume(checkpoint)) and not self._from_start:
            self._seek_end()
        self._from_start = True  # a reopened (rotated-in) file is new content

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def rotated(self) -> bool:
        """Whether the path names another file now, or none."""
        try:
            return _Identity.of(os.stat(self.path)) != self.identity
        except FileNotFoundError:
            return True

    def read_block(self) -> Lines | Literal[RestartReason.TRUNCATED] | None:
        """Lines the next block completes; None at the end of what is written; ``TRUNCATED``
        (and nothing delivered) when the file no longer holds what was read."""
        if self._file is None:
            return None
        data = os.pread(self._file.fileno(), self._read_size, self._position)
        if not self._unchanged():
            return RestartReason.TRUNCATED
        if not data:
            return None
        self._position += len(data)
        if self._skip_partial:
            cut = data.find(b"\n")
            if cut < 0:
                return []
            data, self._skip_partial = data[cut + 1 :], False
        return self._lines.feed(data)

    def flush(self) -> Lines:
        """The file will not grow any more: its partial trailing line is a line after all."""
        return [] if self._skip_partial else self._lines.flush()

    def restart(self) -> Lines:
        """After truncation: the old content's partial last line, and back to the start."""
        lines = self.flush()
        self._position, self._head, self._skip_partial = 0, b"", False
        return lines

    def checkpoint(self) -> Checkpoint:
        """Where a restarted exporter resumes this file: after its last complete line."""
        assert self.identity is not None, "checkpoint of a file never opened"
        offset = self._position - self._lines.unfinished
        return Checkpoint(
            path=self.path,
            device=self.identity.device,
            inode=self.identity.inode,
            offset=offset,
            skip_partial=self._skip_partial,
            fingerprint=fingerprint(self._head),
            fingerprint_size=len(self._head),
        )

    def _unchanged(self) -> bool:
        """The file still holds what was read: not shorter, and the same first bytes."""
        head = self._read_head()
        if self._size() < self._position or not head.startswith(self._head):
            return False
        self._head = head
        return True

    def _resume(self, checkpoint: Checkpoint) -> bool:
        if self.identity != _Identity(checkpoint.device, checkpoint.inode):
            return False
        head = self._read_head()
        if self._size() < checkpoint.offset or len(head) < checkpoint.fingerprint_size:
            return False
        if fingerprint(head[: checkpoint.fingerprint_size]) != checkpoint.fingerprint:
            return False
        self._position, self._head = checkpoint.offset, head
        self._skip_partial = checkpoint.skip_partial
        return True

    def _seek_end(self) -> None:
        size = self._size()
        self._position, self._head = size, self._read_head()
        self._skip_partial = size > 0 and self._pread(1, size - 1) != b"\n"

    def _read_head(self) -> bytes:
        return self._pread(FINGERPRINT_BYTES, 0)

    def _pread(self, size: int, offset: int) -> bytes:
        assert self._file is not None
        return os.pread(self._file.fileno(), size, offset)

    def _size(self) -> int:
        assert self._file is not None
        return os.fstat(self._file.fileno()).st_size


class FileSource:
    """``--source files --path GLOB...``: poll the globs' files, emit their new lines."""

    def __init__(self, settings: FileSettings) -> None:
        self.settings = settings
        self._followers: dict[str, FileFollower] = {}
        self._unreadable: set[str] = set()
        self._known: dict[_Identity, Checkpoint] = {}  # files to resume when next matched
        self._unknown_is_new = False  # the saved state covered our globs
        self._store = StateStore(settings.state_dir) if settings.state_dir else None
        self._saved: tuple[Checkpoint, ...] = ()
        self._saved_at = float("-inf")
        self._clock: Clock | None = None
        self._turn = 0

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        store = self._store
        if store is not None and not store.acquire(stop, lambda why: events.health(False, why)):
            return
        events.health(True, "")
        try:
            self._restore()
            self._follow(sink, stop, events)
        finally:
            self._save(force=True)
            for follower in self._followers.values():
                if follower.is_open:
                    follower.close()
                    events.stream_closed(KIND, follower.path)
            if store is not None:
                store.release()

    def _follow(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        first = True
        while not stop.is_set():
            self._discover(events, first=first)
            first = False
            self._read_all(sink, stop, events)
            if self.settings.once:
                self._finish_all(sink, stop)
                return
            self._save()
            stop.wait(self.settings.poll_interval_s)

    def _restore(self) -> None:
        state = self._store.load() if self._store is not None else None
        if state is not None:
            self._known = {_Identity(c.device, c.inode): c for c in state.checkpoints}
            self._unknown_is_new = state.globs == self.settings.globs

    def _matches(self) -> list[str]:
        paths = {
            path
            for pattern in self.settings.globs
            for path in glob.glob(pattern, recursive=True)
            if os.path.isfile(path)
        }
        return sorted(paths)

    def _discover(self, events: SourceEvents, *, first: bool) -> None:
        settings = self.settings
        from_start = settings.from_start or settings.once or self._unknown_is_new or not first
        for path in self._matches():
            follower = self._followers.get(path)
            if follower is None:
                follower = FileFollower(path, settings, from_start=from_start)
                self._followers[path] = follower
            if not follower.is_open:
                self._open(follower, events)
        self._known.clear()  # a file no path matched any more is gone

    def _open(self, follower: FileFollower, events: SourceEvents) -> None:
        try:
            identity = follower.open()
        except FileNotFoundError:
            return
        except OSError as error:
            if follower.path not in self._unreadable:
                self._unreadable.add(follower.path)
                events.health(False, f"cannot read {follower.path}: {error.strerror}")
            return
        if self._followed_elsewhere(follower, identity):
            follower.close()  # renamed, still read under its old name: resume once that ends
            return
        follower.place(self._known.pop(identity, None))
        if self._unreadable:
            self._unreadable.discard(follower.path)
            if not self._unreadable:
                events.health(True, "")
        events.stream_opened(KIND, follower.path)

    def _followed_elsewhere(self, follower: FileFollower, identity: _Identity) -> bool:
        return any(
            other.identity == identity and other.is_open and other is not follower
            for other in self._followers.values()
        )

    def attach(self, analyzer: Clock) -> None:
        """The analyzer that tells how far a block went in time (``exporter.run.Loop``)."""
        self._clock = analyzer

    def _read_all(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        """Every file to the end of what is written, the one furthest behind in time first
        (by the newest entry of its last block; a file not read yet, or that showed no entry,
        counts as furthest behind): files written side by side (both sidecars' logs, replayed
        or caught up after a restart) come out in time order, as ``wslog analyze`` reads
        them, so a connection's entries from two files meet within the correlation window
        instead of one file's backlog being released, unpaired, before the other's is read.
        Without a clock, a block from each in turn. A rotated file is finished first (its old
        content, then the new file's)."""
        turn: list[tuple[float, int, FileFollower]] = []
        for order, follower in enumerate(list(self._followers.values())):
            if not follower.is_open:
                continue
            if follower.rotated():
                self._rotate(follower, sink, stop, events)
            else:
                turn.append((-math.inf, order, follower))
        heapq.heapify(turn)
        while turn and not stop.is_set():
            _, order, follower = heapq.heappop(turn)
            lines = self._read_one(follower, sink, events)
            if lines is not None:
                heapq.heappush(turn, (self._time_of(follower.path, lines), order, follower))

    def _time_of(self, path: str, lines: Lines) -> float:
        """Where a file is in time after ``lines``: its newest entry's start (seconds), or,
        without a clock, the turn (so files are read a block each in turn)."""
        if self._clock is None:
            self._turn += 1
            return float(self._turn)
        newest = self._clock.newest_start(path, lines)
        return -math.inf if newest is None else newest.timestamp()

    def _read_one(self, follower: FileFollower, sink: Sink, events: SourceEvents) -> Lines | None:
        """Hand over the next block's lines; None at the end of what is written."""
        block = follower.read_block()
        if block is None:
            return None
        if block is RestartReason.TRUNCATED:
            events.stream_restarted(KIND, follower.path, block)
            block = follower.restart()
        self._emit(sink, follower.path, block)
        return block

    def _drain(
        self, follower: FileFollower, sink: Sink, stop: threading.Event, events: SourceEvents
    ) -> None:
        """Hand over what is written, block by block, to its end (or until ``stop``)."""
        while not stop.is_set() and self._read_one(follower, sink, events) is not None:
            pass

    def _rotate(
        self, follower: FileFollower, sink: Sink, stop: threading.Event, events: SourceEvents
    ) -> None:
        self._drain(follower, sink, stop, events)  # the old file, through its descriptor
        if stop.is_set():
            return  # its checkpoint resumes it after a restart
        self._emit(sink, follower.path, follower.flush())
        assert follower.identity is not None
        self._known[follower.identity] = follower.checkpoint()
        follower.close()
        events.stream_closed(KIND, follower.path)
        if not os.path.isfile(follower.path):
            del self._followers[follower.path]  # gone (pod deleted): forget it
            return
        events.stream_restarted(KIND, follower.path, RestartReason.ROTATED)
        self._open(follower, events)
        self._drain(follower, sink, stop, events)

    def _finish_all(self, sink: Sink, stop: threading.Event) -> None:
        if stop.is_set():
            return
        for follower in self._followers.values():
            if follower.is_open:
                self._emit(sink, follower.path, follower.flush())

    def _emit(self, sink: Sink, path: str, lines: Lines) -> None:
        emit(sink, path, lines, self.settings.framing, self.settings.chunk_max_lines)

    def _save(self, *, force: bool = False) -> None:
        """Save every file's checkpoint, at most every ``state_interval_s`` unless ``force``."""
        now = time.monotonic()
        if self._store is None or (
            not force and now - self._saved_at < self.settings.state_interval_s
        ):
            return
        self._saved_at = now
        open_files = (f.checkpoint() for f in self._followers.values() if f.is_open)
        checkpoints = (*open_files, *self._known.values())
        if checkpoints != self._saved:
            self._store.save(SavedState(self.settings.globs, checkpoints))
            self._saved = checkpoints
