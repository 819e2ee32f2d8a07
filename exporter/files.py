"""The files source: follow node-local log files (DaemonSet mode) or replay saved ones.

Polling, not inotify: it works the same on every filesystem (hostPath, overlay, NFS, a
laptop), costs one ``stat`` per file per interval, and handles what kubelet and logrotate do:

- rotation (the path now names another inode): the old file is read to its end first, then
  the new one from its start;
- truncation (copytruncate: the size fell below what was read): reading restarts at 0;
- a partial trailing line is held until its newline arrives (or the file is finished);
- the globs are re-expanded every interval, so new pods' files are picked up from their start.

``once`` reads every matched file to its end and returns: the replay mode, which must deliver
exactly what ``wslog analyze`` would read from the same files.
"""

from __future__ import annotations

import glob
import io
import os
import threading
from dataclasses import dataclass

from exporter.sources import (
    FileSettings,
    RestartReason,
    Sink,
    SourceEvents,
    decode_line,
    emit,
    split_lines,
)

__all__ = ["FileFollower", "FileSource"]

KIND = "files"


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int

    @classmethod
    def of(cls, stat: os.stat_result) -> _Identity:
        return cls(stat.st_dev, stat.st_ino)


class FileFollower:
    """One path: its open file, the offset read so far and the partial line pending."""

    def __init__(self, path: str, settings: FileSettings, *, from_start: bool) -> None:
        self.path = path
        self._settings = settings
        self._from_start = from_start
        self._file: io.FileIO | None = None
        self._identity: _Identity | None = None
        self._position = 0
        self._pending = b""
        self._skip_partial = False  # started from the end in the middle of a line

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> None:
        """Open the path; from its end unless reading from the start."""
        handle = io.FileIO(self.path, "rb")
        stat = os.fstat(handle.fileno())
        self._file, self._identity = handle, _Identity.of(stat)
        self._position, self._pending = 0, b""
        if not self._from_start and stat.st_size > 0:
            self._position = handle.seek(stat.st_size)
            handle.seek(stat.st_size - 1)
            self._skip_partial = handle.read(1) != b"\n"
        self._from_start = True  # a reopened (rotated-in) file is new content

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None

    def read_available(self) -> list[str]:
        """Complete lines appended since the last read."""
        if self._file is None:
            return []
        lines: list[str] = []
        while data := self._file.read(self._settings.read_size):
            self._position += len(data)
            if self._skip_partial:
                cut = data.find(b"\n")
                if cut < 0:
                    continue
                data, self._skip_partial = data[cut + 1 :], False
            fresh, self._pending = split_lines(self._pending, data)
            lines.extend(fresh)
        return lines

    def finish(self) -> list[str]:
        """The file will not grow any more: its partial trailing line is a line after all."""
        lines = self.read_available()
        if self._pending:
            lines.append(decode_line(self._pending))
            self._pending = b""
        return lines

    def change(self) -> RestartReason | None:
        """Whether the path was rotated (another inode or gone) or truncated."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return RestartReason.ROTATED
        if _Identity.of(stat) != self._identity:
            return RestartReason.ROTATED
        if stat.st_size < self._position:
            return RestartReason.TRUNCATED
        return None

    def rewind(self) -> None:
        """After truncation: read the file again from its start."""
        if self._file is not None:
            self._file.seek(0)
        self._position, self._pending, self._skip_partial = 0, b"", False


class FileSource:
    """``--source files --path GLOB...``: poll the globs' files, emit their new lines."""

    def __init__(self, settings: FileSettings) -> None:
        self.settings = settings
        self._followers: dict[str, FileFollower] = {}
        self._unreadable: set[str] = set()

    def run(self, sink: Sink, stop: threading.Event, events: SourceEvents) -> None:
        events.health(True, "")
        first = True
        try:
            while not stop.is_set():
                self._discover(events, first=first)
                first = False
                for follower in list(self._followers.values()):
                    self._poll(follower, sink, events)
                if self.settings.once:
                    self._finish_all(sink, events)
                    return
                stop.wait(self.settings.poll_interval_s)
        finally:
            for follower in self._followers.values():
                if follower.is_open:
                    follower.close()
                    events.stream_closed(KIND, follower.path)

    def _matches(self) -> list[str]:
        paths = {
            path
            for pattern in self.settings.globs
            for path in glob.glob(pattern, recursive=True)
            if os.path.isfile(path)
        }
        return sorted(paths)

    def _discover(self, events: SourceEvents, *, first: bool) -> None:
        from_start = self.settings.from_start or self.settings.once or not first
        for path in self._matches():
            follower = self._followers.get(path)
            if follower is None:
                follower = FileFollower(path, self.settings, from_start=from_start)
                self._followers[path] = follower
            if not follower.is_open:
                self._open(follower, events)

    def _open(self, follower: FileFollower, events: SourceEvents) -> None:
        try:
            follower.open()
        except FileNotFoundError:
            return
        except OSError as error:
            if follower.path not in self._unreadable:
                self._unreadable.add(follower.path)
                events.health(False, f"cannot read {follower.path}: {error.strerror}")
            return
        if self._unreadable:
            self._unreadable.discard(follower.path)
            if not self._unreadable:
                events.health(True, "")
        events.stream_opened(KIND, follower.path)

    def _poll(self, follower: FileFollower, sink: Sink, events: SourceEvents) -> None:
        if not follower.is_open:
            return
        max_lines, framing = self.settings.chunk_max_lines, self.settings.framing
        emit(sink, follower.path, follower.read_available(), framing, max_lines)
        change = follower.change()
        if change is RestartReason.TRUNCATED:
            events.stream_restarted(KIND, follower.path, change)
            emit(sink, follower.path, follower.finish(), framing, max_lines)
            follower.rewind()
            emit(sink, follower.path, follower.read_available(), framing, max_lines)
        elif change is RestartReason.ROTATED:
            emit(sink, follower.path, follower.finish(), framing, max_lines)
            follower.close()
            events.stream_closed(KIND, follower.path)
            if not os.path.isfile(follower.path):
                del self._followers[follower.path]  # gone (pod deleted): forget it
                return
            events.stream_restarted(KIND, follower.path, change)
            self._open(follower, events)
            emit(sink, follower.path, follower.read_available(), framing, max_lines)

    def _finish_all(self, sink: Sink, events: SourceEvents) -> None:
        for follower in self._followers.values():
            if follower.is_open:
                lines = follower.finish()
                emit(
                    sink, follower.path, lines, self.settings.framing, self.settings.chunk_max_lines
                )
