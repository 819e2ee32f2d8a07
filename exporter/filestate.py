"""Where the files source keeps its read positions across restarts (``--state-dir``).

Without it a restarted exporter starts again from each file's end (lines written while it was
down are lost) or, with ``--from-start``, from each file's start (everything is counted again,
and ``increase()`` over the counter reset double counts). With it, each followed file's
position is saved and the next process resumes exactly there.

A ``Checkpoint`` names a file as log shippers do (Filebeat, Vector, Fluent Bit): by device and
inode, which survive a rename (rotation), plus a fingerprint of its first bytes, which tells a
file truncated and rewritten, or a new file on a reused inode, from the one that was read. Its
``offset`` is the end of the last complete line handed to the pipeline: a partial line is
read again after a restart, never delivered twice.

When: every ``state_interval_s`` (2 s) when a position moved, and at a clean stop, after the
source handed over its last lines and before the exporter flushes them through the pipeline, so
a SIGTERM and a restart are exact (for Prometheus, less what the old process counted after its
last scrape, as with any counter reset). A SIGKILL, an OOM kill or a node crash loses what
happened since the last save: lines handed over after it are read and counted again; lines
handed over before it but not yet through a tick (at most ``--batch-interval`` of them) are
never counted. Both windows are a few seconds of traffic at most. Positions are per line, not
per connection: an entry still waiting for its other side at the stop is released single-sided
(SIGTERM) or lost with the process (SIGKILL), so a connection whose two entries straddle a
restart counts as ``client-only`` plus ``server-only``.

The state is one small JSON file, written to a temporary file, fsynced and renamed over the old
one, so a crash leaves the previous state or the new one, never a torn one. It holds no log
content (the fingerprint is a SHA-256). One exporter uses a state directory at a time: it holds
an advisory lock on ``files.lock`` there for its whole run (released by the kernel if it dies),
so a replacement started before the old process exited waits for its last save.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from analyzer.errors import WslogError
from exporter.settings import SettingsError

__all__ = ["Checkpoint", "SavedState", "StateError", "StateStore", "decode", "encode"]

STATE_FILE = "files.json"
LOCK_FILE = "files.lock"
VERSION = 1

log = logging.getLogger("wslog.exporter")


class StateError(WslogError, ValueError):
    """The state file cannot be understood."""


@dataclass(frozen=True)
class Checkpoint:
    """How far one file was read, and how to recognise that file again."""

    path: str
    device: int
    inode: int
    offset: int  # end of the last complete line handed over (or skipped)
    skip_partial: bool  # the bytes from offset to the next newline are not to be delivered
    fingerprint: str  # SHA-256 of the file's first fingerprint_size bytes
    fingerprint_size: int


@dataclass(frozen=True)
class SavedState:
    globs: tuple[str, ...]  # what the saving exporter followed
    checkpoints: tuple[Checkpoint, ...]


def fingerprint(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


def encode(state: SavedState) -> bytes:
    doc = {
        "version": VERSION,
        "globs": list(state.globs),
        "files": [asdict(c) for c in state.checkpoints],
    }
    return json.dumps(doc, indent=1).encode()


def decode(data: bytes) -> SavedState:
    """The state in ``data``; ``StateError`` saying what is wrong otherwise."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise StateError(f"not a version {VERSION} state")
    globs, files = doc.get("globs"), doc.get("files")
    if not isinstance(globs, list) or not isinstance(files, list):
        raise StateError("globs or files missing")
    if not all(isinstance(g, str) for g in globs):
        raise StateError("a glob is not a string")
    return SavedState(tuple(globs), tuple(_checkpoint(item) for item in files))


def _checkpoint(item: object) -> Checkpoint:
    names = {f.name: f.type for f in fields(Checkpoint)}
    if not isinstance(item, dict) or set(item) != set(names):
        raise StateError(f"a file entry needs exactly {', '.join(sorted(names))}")
    for name, kind in names.items():
        wanted = {"str": str, "int": int, "bool": bool}[str(kind)]
        value = item[name]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise StateError(f"{name} of {item.get('path')!r} is not {kind}")
    if item["offset"] < 0 or item["fingerprint_size"] < 0:
        raise StateError(f"negative offset or fingerprint size for {item['path']!r}")
    return Checkpoint(**item)


def check_state_dir(directory: str) -> None:
    """Create ``directory`` if needed and prove it writable, at start-up (exit 2 otherwise)."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise SettingsError(
            f"--state-dir {directory}: cannot write there ({exc.strerror}); give a writable "
            "directory (in Kubernetes an emptyDir or hostPath volume)"
        ) from exc


class StateStore:
    """The state directory of one running exporter: its lock, its last state, atomic saves."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock_fd: int | None = None
        self._failing = False

    @property
    def path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def acquire(self, stop: threading.Event, waiting: Callable[[str], None]) -> bool:
        """Hold the directory's lock (waiting while another exporter holds it); False if
        ``stop`` was set first."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        told = False
        while not stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    waiting(f"waiting for the exporter using --state-dir {self.directory} to stop")
                    told = True
                stop.wait(0.5)
                continue
            self._lock_fd = fd
            return True
        os.close(fd)
        return False

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = None

    def load(self) -> SavedState | None:
        """The saved state; None when there is none or it is unreadable (said in the log)."""
        try:
            with open(self.path, "rb") as handle:
                return decode(handle.read())
        except FileNotFoundError:
            return None
        except (OSError, StateError) as exc:
            log.warning(
                "ignoring the saved file positions, reading as without --state-dir",
                extra={"state_file": self.path, "error": str(exc)},
            )
            return None

    def save(self, state: SavedState) -> None:
        """Replace the state atomically; a failure is logged (once until it works again)."""
        try:
            self._write(encode(state))
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot save the file positions: a restart will not resume exactly",
                    extra={"state_file": self.path, "error": str(exc)},
                )
            self._failing = True
            return
        self._failing = False

    def _write(self, data: bytes) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".files.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _fsync_directory(self.directory)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
