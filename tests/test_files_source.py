"""exporter.files on real files in a temporary directory: rotation, truncation, partial lines,
from-start versus from-end, glob re-expansion and the once (replay) mode."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.files import FileSource
from exporter.sources import FileSettings
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
