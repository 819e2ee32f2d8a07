"""exporter.files on real files in a temporary directory: rotation, truncation, partial lines,
from-start versus from-end, glob re-expansion, bounded reads and the once (replay) mode."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.files import FileSource
from exporter.settings import FileSettings
from exporter.sources import Chunk
from tests.fake_k8s import Recorder, wait

pytestmark = pytest.mark.timeout(30)

CRI = "2024-01-01T00:00:00.000000001Z stdout F "


def write(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def lines(prefix: str, count: int) -> list[str]:
    return [f'{CRI}{{"tag":"{prefix}","n":{i}}}' for i in range(count)]


def text(items: list[str]) -> str:
    return "".join(f"{item}\n" for item in items)


class Following:
    def __init__(self, rec: Recorder, stop: threading.Event, thread: threading.Thread) -> None:
        self.rec, self.stop, self.thread = rec, stop, thread

    def expect(self, expected: list[str], source: str | None = None) -> None:
        wait(lambda: len(self.rec.lines(source)) >= len(expected), 5)
        time.sleep(0.15)  # a few more polls: nothing more may arrive
        assert self.rec.lines(source) == expected

    def expect_once_each(self, expected: list[str]) -> None:
        """Every line exactly once, in whatever order the files were read."""
        wait(lambda: len(self.rec.lines()) >= len(expected), 5)
        time.sleep(0.15)
        assert Counter(self.rec.lines()) == Counter(expected)


@pytest.fixture
def follow() -> Iterator[Callable[..., Following]]:
    running: list[Following] = []

    def start(*globs: str, **overrides: object) -> Following:
        values: dict[str, object] = {"globs": globs, "poll_interval_s": 0.02}
        values.update(overrides)
        source = FileSource(FileSettings(**values))  # type: ignore[arg-type]
        rec, stop = Recorder(), threading.Event()
        thread = threading.Thread(target=source.run, args=(rec.sink, stop, rec), daemon=True)
        thread.start()
        assert wait(lambda: bool(rec.healths))
        time.sleep(0.05)  # the first scan has happened
        following = Following(rec, stop, thread)
        running.append(following)
        return following

    yield start
    for following in running:
        following.stop.set()
        following.thread.join(5)
        assert not following.thread.is_alive()


def test_from_end_skips_existing_content_and_a_partial_last_line(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    log = tmp_path / "0.log"
    write(log, text(lines("old", 3)) + CRI + "half of an old li")
    run = follow(str(tmp_path / "*.log"))
    write(log, "ne\n" + text(lines("new", 2)))
    run.expect(lines("new", 2))


def test_from_start_reads_existing_content(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    log = tmp_path / "0.log"
    write(log, text(lines("old", 3)))
    run = follow(str(log), from_start=True)
    write(log, text(lines("new", 1)))
    run.expect(lines("old", 3) + lines("new", 1))
    assert {c.source for c in run.rec.chunks} == {str(log)}


def test_partial_line_is_held_until_completed(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(log))
    whole = lines("p", 1)[0]
    write(log, whole[:10])
    time.sleep(0.1)
    assert run.rec.lines() == []
    write(log, whole[10:] + "\n")
    run.expect([whole])


def test_rotation_finishes_the_old_file_then_reads_the_new_one(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(tmp_path / "*.log"))
    write(log, text(lines("a", 2)))
    run.expect(lines("a", 2))
    with log.open("a") as old:  # the writer still holds the old file while it is renamed
        old.write(text(lines("late", 2)))
        os.rename(log, tmp_path / "0.log.20240101-000000")
        write(log, text(lines("b", 3)))
    run.expect(lines("a", 2) + lines("late", 2) + lines("b", 3))
    assert (str(log), "rotated") in run.rec.restarts


def test_copytruncate_rereads_the_file_from_its_start(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(log))
    write(log, text(lines("a", 5)))
    run.expect(lines("a", 5))
    (tmp_path / "0.log.1").write_bytes(log.read_bytes())
    with log.open("r+") as handle:
        handle.truncate(0)
    write(log, text(lines("b", 2)))
    run.expect(lines("a", 5) + lines("b", 2))
    assert (str(log), "truncated") in run.rec.restarts


def test_copytruncate_then_a_burst_before_the_next_poll_loses_no_line(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    """Truncated, then written past the old position before the next poll (copytruncate):
    the size cannot tell, the file's first bytes do; the burst is read whole, from its start."""
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(log), poll_interval_s=1.0)
    write(log, text(lines("a", 3000)))
    run.expect(lines("a", 3000))  # a poll has just happened: the next one is ~1 s away
    burst = lines("burst-written-right-after-the-truncation", 3000)
    with log.open("r+", encoding="utf-8") as handle:
        handle.truncate(0)
        handle.write(text(burst))
    assert log.stat().st_size > len(text(lines("a", 3000)))
    run.expect(lines("a", 3000) + burst)
    assert run.rec.restarts == [(str(log), "truncated")]


def test_copytruncate_delivers_the_old_partial_last_line_as_a_line(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    """As ``wslog analyze`` reads a file's last line; then the new content, from its start."""
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(log))
    write(log, text(lines("a", 5)) + "an unfinished li")
    run.expect(lines("a", 5))
    with log.open("r+") as handle:
        handle.truncate(0)
    write(log, text(lines("b", 2)))
    run.expect([*lines("a", 5), "an unfinished li", *lines("b", 2)])
    assert run.rec.restarts == [(str(log), "truncated")]


def test_a_rotated_file_the_glob_still_matches_is_not_read_again(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    """``0.log`` renamed to ``0.log.<time>`` under a glob matching both: the renamed file is
    taken up where ``0.log`` left it, so its late lines arrive and nothing arrives twice."""
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(tmp_path / "0.log*"))
    write(log, text(lines("a", 3)))
    run.expect(lines("a", 3))
    with log.open("a") as old:  # the writer still holds the old file while it is renamed
        old.write(text(lines("late", 2)))
        old.flush()
        os.rename(log, tmp_path / "0.log.20240101-000000")
        write(log, text(lines("b", 3)))
        time.sleep(0.2)  # several polls: 0.log's old file was finished
        old.write(text(lines("later", 2)))
    run.expect_once_each(lines("a", 3) + lines("late", 2) + lines("b", 3) + lines("later", 2))


class _Digest:
    """A sink that keeps no line: a running hash, a count and the largest chunk in bytes."""

    def __init__(self) -> None:
        self.hash, self.lines, self.chunks, self.largest = hashlib.sha256(), 0, 0, 0

    def sink(self, chunk: Chunk) -> None:
        texts = [line for line in chunk.lines if isinstance(line, str)]
        assert len(texts) == len(chunk.lines), "no line of this file is over the bound"
        for line in texts:
            self.hash.update(line.encode() + b"\n")
        self.lines += len(texts)
        self.chunks += 1
        self.largest = max(self.largest, sum(len(line) + 1 for line in texts))


def test_a_file_much_larger_than_a_block_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """``--from-start --once`` on a large file reads it block by block, never all at once."""
    log = tmp_path / "big.log"
    content = text(lines("big", 60_000)).encode()  # about 4 MB
    log.write_bytes(content)
    block = 64 * 1024
    settings = FileSettings(globs=(str(log),), once=True, read_size=block, chunk_max_lines=10**6)
    digest, rec = _Digest(), Recorder()
    tracemalloc.start()
    try:
        FileSource(settings).run(digest.sink, threading.Event(), rec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes for a {len(content)}-byte file"  # was 8 MB
    assert digest.lines == 60_000 and digest.hash.digest() == hashlib.sha256(content).digest()
    assert digest.chunks >= len(content) // block
    assert digest.largest <= block + 100  # a block, and the line it completed


def test_glob_picks_up_new_files_from_their_start(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    pods = tmp_path / "pods"
    (pods / "ns_a_1" / "istio-proxy").mkdir(parents=True)
    run = follow(str(pods / "*" / "istio-proxy" / "*.log"))
    new = pods / "ns_b_2" / "istio-proxy"
    new.mkdir(parents=True)
    write(new / "0.log", text(lines("b", 2)))
    run.expect(lines("b", 2), str(new / "0.log"))
    write(new / "1.log", text(lines("restarted", 1)))  # the container restarted
    run.expect(lines("restarted", 1), str(new / "1.log"))


def test_deleted_file_is_closed_and_forgotten(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    log = tmp_path / "0.log"
    log.touch()
    run = follow(str(log))
    assert wait(lambda: run.rec.active == 1)
    write(log, text(lines("a", 1)))
    run.expect(lines("a", 1))
    log.unlink()
    assert wait(lambda: run.rec.active == 0)


def test_once_replays_every_file_to_its_end_and_returns(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    write(first, text(lines("a", 3)))
    write(second, text(lines("b", 2)) + "no newline at the end")
    rec, stop = Recorder(), threading.Event()
    FileSource(FileSettings(globs=(str(tmp_path / "*.log"),), once=True)).run(rec.sink, stop, rec)
    assert rec.lines(str(first)) == lines("a", 3)
    assert rec.lines(str(second)) == [*lines("b", 2), "no newline at the end"]
    assert rec.active == 0


def test_once_mode_chunks_respect_the_line_cap(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    write(log, text(lines("a", 25)))
    rec = Recorder()
    settings = FileSettings(globs=(str(log),), once=True, chunk_max_lines=10, read_size=64)
    FileSource(settings).run(rec.sink, threading.Event(), rec)
    assert rec.lines() == lines("a", 25)
    assert max(len(c.lines) for c in rec.chunks) <= 10


def test_unreadable_file_makes_the_source_unhealthy(
    tmp_path: Path, follow: Callable[..., Following]
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    log = tmp_path / "0.log"
    log.touch(mode=0o000)
    run = follow(str(log))
    assert wait(lambda: not run.rec.healths[-1][0])
    assert "cannot read" in run.rec.healths[-1][1]
