"""exporter.sources.StdinSource: lines from a byte stream, each delivered once, until it ends."""

from __future__ import annotations

import io
import os
import threading

import pytest

from exporter.sources import Chunk, StdinSource, split_lines
from tests.fake_k8s import Recorder, wait

pytestmark = pytest.mark.timeout(10)


def test_every_line_is_delivered_once_including_an_unterminated_last_one() -> None:
    data = b'{"a":1}\r\n{"b":2}\n\n{"c":3}'
    rec = Recorder()
    StdinSource(io.BytesIO(data)).run(rec.sink, threading.Event(), rec)
    assert rec.lines() == ['{"a":1}', '{"b":2}', "", '{"c":3}']
    assert {c.source for c in rec.chunks} == {"-"}
    assert all(c.framing is None for c in rec.chunks)
    assert rec.opened == rec.closed == ["-"]
    assert rec.healths == [(True, "")]


def test_lines_split_across_reads_of_a_pipe_are_joined() -> None:
    read_fd, write_fd = os.pipe()
    rec, stop = Recorder(), threading.Event()
    with os.fdopen(read_fd, "rb", buffering=0) as reader:
        thread = threading.Thread(target=StdinSource(reader).run, args=(rec.sink, stop, rec))
        thread.start()
        os.write(write_fd, b"first li")
        assert not wait(lambda: bool(rec.lines()), 0.2)
        os.write(write_fd, b"ne\nsecond")
        assert wait(lambda: rec.lines() == ["first line"])
        os.write(write_fd, b" line\n")
        os.close(write_fd)
        thread.join(5)
    assert rec.lines() == ["first line", "second line"]


def test_invalid_utf8_is_kept_for_the_deframer_to_reject_not_dropped() -> None:
    lines, rest = split_lines(b"", b"ok\n\xff\xfe bad\npartial")
    assert lines == ["ok", "\udcff\udcfe bad"]
    assert rest == b"partial"


def test_chunks_are_capped() -> None:
    rec = Recorder()
    data = b"".join(b"line %d\n" % i for i in range(25))
    StdinSource(io.BytesIO(data), chunk_max_lines=10).run(rec.sink, threading.Event(), rec)
    assert [len(c.lines) for c in rec.chunks] == [10, 10, 5]
    assert isinstance(rec.chunks[0], Chunk)
