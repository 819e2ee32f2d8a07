"""exporter.filestate with exporter.files on real files: a stopped and restarted files source
resumes after the last line it handed over (``--state-dir``), whatever happened to the files
meanwhile; a damaged state never stops it. The same through the real CLI is in
tests/test_exporter.py."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from analyzer.lines import Overlong
from exporter.files import FileSource
from exporter.filestate import (
    STATE_FILE,
    Checkpoint,
    SavedState,
    StateError,
    decode,
    encode,
)
from exporter.settings import FileSettings
from tests.fake_k8s import Recorder, wait

pytestmark = pytest.mark.timeout(60)

CRI = "2024-01-01T00:00:00.000000001Z stdout F "


def lines(prefix: str, count: int) -> list[str]:
    return [f'{CRI}{{"tag":"{prefix}","n":{i}}}' for i in range(count)]


def text(items: list[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def append(path: Path, content: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(content)


class Run:
    """One life of a files source: started, then stopped cleanly as on SIGTERM."""

    def __init__(self, settings: FileSettings) -> None:
        self.rec, self.stop = Recorder(), threading.Event()
        self.thread = threading.Thread(
            target=FileSource(settings).run, args=(self.rec.sink, self.stop, self.rec), daemon=True
        )
        self.thread.start()

    def started(self) -> Run:
        assert wait(lambda: bool(self.rec.healths) and self.rec.healths[-1][0])
        time.sleep(0.1)  # the first scan has happened
        return self

    def delivered(self, count: int) -> list[str | Overlong]:
        """What was delivered once at least ``count`` lines were, and a few polls more."""
        wait(lambda: len(self.rec.lines()) >= count, 5)
        time.sleep(0.15)
        return self.rec.lines()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def settings(tmp_path: Path, *globs: str, **overrides: object) -> FileSettings:
    values: dict[str, object] = {
        "globs": globs,
        "poll_interval_s": 0.02,
        "state_dir": str(tmp_path / "state"),
    }
    values.update(overrides)
    return FileSettings(**values)  # type: ignore[arg-type]


def life(config: FileSettings, count: int) -> list[str | Overlong]:
    """Start, let ``count`` lines arrive (and nothing more), stop cleanly."""
    run = Run(config).started()
    try:
        return run.delivered(count)
    finally:
        run.end()


@pytest.mark.parametrize("from_start", [False, True], ids=["from-end", "from-start"])
def test_a_restart_resumes_after_the_last_line_handed_over(
    tmp_path: Path, from_start: bool
) -> None:
    """Lines written while stopped arrive once; none read before comes again, not even with
    ``--from-start``; a partial line pending at the stop is read whole after the restart. The
    first life saves only at its start and at its clean stop (no periodic save in between)."""
    log = tmp_path / "0.log"
    append(log, text(lines("before", 50)))
    first = Run(settings(tmp_path, str(log), from_start=True, state_interval_s=3600)).started()
    try:
        assert first.delivered(50) == lines("before", 50)
        append(log, text(lines("during", 20)) + CRI + "half of a li")
        assert first.delivered(70) == lines("before", 50) + lines("during", 20)
    finally:
        first.end()
    append(log, "ne\n" + text(lines("while-stopped", 30)))
    second = life(settings(tmp_path, str(log), from_start=from_start), 31)
    assert second == [CRI + "half of a line", *lines("while-stopped", 30)]


def test_a_restart_inside_an_over_long_line_resumes_at_its_start(tmp_path: Path) -> None:
    """A line past ``max_line_bytes`` is held as a count, not as bytes: the saved offset is
    still the end of the last complete line, so the long line is counted once, whole."""
    log = tmp_path / "0.log"
    long_line = "x" * 5000
    append(log, text(lines("a", 2)) + long_line[:3000])
    small = {"max_line_bytes": 1024, "read_size": 256}
    assert life(settings(tmp_path, str(log), from_start=True, **small), 2) == lines("a", 2)
    append(log, long_line[3000:] + "\n" + text(lines("b", 2)))
    overlong, *rest = life(settings(tmp_path, str(log), **small), 3)
    assert isinstance(overlong, Overlong) and overlong.length == len(long_line)
    assert rest == lines("b", 2)


def test_files_that_appeared_while_stopped_are_read_from_their_start(tmp_path: Path) -> None:
    """The saved state covered these globs: a file it does not know is new since (a pod
    started while the exporter was down), even without ``--from-start``."""
    pods = tmp_path / "pods"
    (pods / "a").mkdir(parents=True)
    append(pods / "a" / "0.log", text(lines("a", 3)))
    pattern = str(pods / "*" / "*.log")
    assert life(settings(tmp_path, pattern, from_start=True), 3) == lines("a", 3)
    (pods / "b").mkdir()
    append(pods / "b" / "0.log", text(lines("b", 4)))
    assert life(settings(tmp_path, pattern), 4) == lines("b", 4)


@pytest.mark.parametrize(
    ("pattern", "late_lines_kept"),
    [("0.log*", True), ("*.log", False)],
    ids=["glob-matches-rotated", "glob-misses-rotated"],
)
def test_rotation_while_stopped(tmp_path: Path, pattern: str, late_lines_kept: bool) -> None:
    """kubelet renamed ``0.log`` to ``0.log.<time>`` while the exporter was down: the new
    ``0.log`` is read from its start; the old file's lines written after the stop arrive when
    the globs still match it, and are lost (documented) when they do not."""
    log = tmp_path / "0.log"
    append(log, text(lines("a", 3)))
    assert life(settings(tmp_path, str(tmp_path / pattern), from_start=True), 3) == lines("a", 3)
    append(log, text(lines("late", 2)))
    os.rename(log, tmp_path / "0.log.20240101-000000")
    append(log, text(lines("b", 2)))
    expected = (lines("late", 2) if late_lines_kept else []) + lines("b", 2)
    delivered = life(settings(tmp_path, str(tmp_path / pattern)), len(expected))
    assert Counter(delivered) == Counter(expected)


def test_a_file_truncated_and_rewritten_while_stopped_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    """Same inode, larger than the saved position, but other first bytes: another content."""
    log = tmp_path / "0.log"
    append(log, text(lines("a", 5)))
    assert life(settings(tmp_path, str(log), from_start=True), 5) == lines("a", 5)
    log.write_text(text(lines("rewritten-after-copytruncate", 20)))
    expected = lines("rewritten-after-copytruncate", 20)
    assert life(settings(tmp_path, str(log)), 20) == expected


def test_a_corrupt_state_is_ignored_with_a_warning_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "0.log"
    append(log, text(lines("old", 3)))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_bytes(b'{"version": 1, "globs": [], "fi')
    with caplog.at_level(logging.WARNING, logger="wslog"):
        run = Run(settings(tmp_path, str(log))).started()
        append(log, text(lines("new", 2)))
        assert run.delivered(2) == lines("new", 2)  # as without --state-dir: from the end
        run.end()
    assert any("ignoring the saved file positions" in r.getMessage() for r in caplog.records)
    state = decode((tmp_path / "state" / STATE_FILE).read_bytes())
    assert [c.offset for c in state.checkpoints] == [log.stat().st_size]


def test_the_state_holds_positions_and_fingerprints_but_no_log_content(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    append(log, text(lines("secret-payload", 3)))
    life(settings(tmp_path, str(log), from_start=True), 3)
    raw = (tmp_path / "state" / STATE_FILE).read_bytes()
    assert b"secret-payload" not in raw
    (entry,) = json.loads(raw)["files"]
    stat = log.stat()
    assert (entry["inode"], entry["device"], entry["offset"]) == (
        stat.st_ino,
        stat.st_dev,
        stat.st_size,
    )
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")]


def test_a_second_exporter_on_the_same_state_dir_waits_then_resumes_where_the_first_stopped(
    tmp_path: Path,
) -> None:
    """A replacement started before the old process exited (a rolling update with surge)."""
    log = tmp_path / "0.log"
    append(log, text(lines("a", 4)))
    first = Run(settings(tmp_path, str(log), from_start=True)).started()
    assert first.delivered(4) == lines("a", 4)
    second = Run(settings(tmp_path, str(log), from_start=True))
    assert wait(lambda: bool(second.rec.healths))
    assert second.rec.healths[0][0] is False and "waiting" in second.rec.healths[0][1]
    append(log, text(lines("b", 2)))
    assert first.delivered(6) == lines("a", 4) + lines("b", 2)
    first.end()
    append(log, text(lines("c", 1)))
    try:
        assert second.started().delivered(1) == lines("c", 1)
    finally:
        second.end()


def test_the_state_round_trips_and_anything_else_is_refused() -> None:
    checkpoint = Checkpoint("/var/log/pods/x/0.log", 2049, 77, 1234, False, "ab" * 32, 1024)
    state = SavedState(("/var/log/pods/*/istio-proxy/*.log",), (checkpoint,))
    assert decode(encode(state)) == state
    entry = json.loads(encode(state))["files"][0]
    broken = [
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "globs": [], "files": []}',
        b'{"version": 1, "globs": [1], "files": []}',
        json.dumps({"version": 1, "globs": [], "files": [entry | {"offset": "12"}]}).encode(),
        json.dumps({"version": 1, "globs": [], "files": [entry | {"offset": -1}]}).encode(),
        json.dumps({"version": 1, "globs": [], "files": [entry | {"inode": True}]}).encode(),
        json.dumps({"version": 1, "globs": [], "files": [{"path": "x"}]}).encode(),
    ]
    for data in broken:
        with pytest.raises(StateError):
            decode(data)
