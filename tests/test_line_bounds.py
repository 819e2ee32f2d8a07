"""A line's length is bounded in every input: an over-long line is one malformed ``too-long``
line, nothing around it is lost, and no buffer grows with it (``--max-line-bytes``)."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from analyzer.framing import Deframer
from analyzer.lines import HEAD_BYTES, LineAssembler, Overlong, split_segment
from exporter.sources import Chunk, StdinSource
from tests.conftest import ROOT, TESTDATA
from tests.test_exporter import analysed_connections, replay

GOOD = TESTDATA / "lab" / "json" / "h1" / "client.log"


def reference(data: bytes, cap: int) -> list[bytes | Overlong]:
    """What the lines of ``data`` are, written the obvious way."""
    pieces = data.split(b"\n")
    lines: list[bytes | Overlong] = []
    for index, piece in enumerate(pieces):
        if index == len(pieces) - 1 and not piece:
            break
        lines.append(Overlong(len(piece), piece[:HEAD_BYTES]) if len(piece) > cap else piece)
    return lines


def assembled(data: bytes, cuts: list[int], cap: int) -> tuple[list[bytes | Overlong], int]:
    assembler, out, held = LineAssembler(cap), [], 0
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        out.extend(assembler.feed(data[start:end]))
        held = max(held, assembler.pending_bytes)
    out.extend(assembler.finish())
    lines: list[bytes | Overlong] = []
    for segment in out:
        if isinstance(segment, Overlong):
            lines.append(segment)
        else:
            lines.extend(line.encode() for line in split_segment(segment))
    return lines, held


@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"xyz" * 5]), max_size=60).map(b"".join),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    cap=st.integers(1, 20),
)
def test_lines_are_the_same_whatever_the_blocks_and_never_held_past_the_bound(
    data: bytes, cuts: list[int], cap: int
) -> None:
    lines, held = assembled(data, cuts, cap)
    expected = reference(data, cap)
    # Complete lines inside one block pass through (the deframer checks those, vectorised).
    normalised = [
        Overlong(len(x), x[:HEAD_BYTES]) if isinstance(x, bytes) and len(x) > cap else x
        for x in lines
    ]
    assert normalised == expected
    assert held <= cap


def test_deframer_counts_an_over_long_line_once_and_keeps_its_neighbours_numbers() -> None:
    deframer = Deframer("f", max_line_bytes=1024)
    data = b"first\n" + b"x" * 5000 + b"\nthird\n" + b"y" * 2000
    framed = [deframer.feed_bytes(data[i : i + 700]) for i in range(0, len(data), 700)]
    framed.append(deframer.flush())
    lines = [row for f in framed for row in f.lines.select("line_no", "text").iter_rows()]
    rejects = [row for f in framed for row in f.rejects.iter_rows(named=True)]
    assert lines == [(1, "first"), (3, "third")]
    assert [(r["line_no"], r["reason"]) for r in rejects] == [(2, "too-long"), (4, "too-long")]
    assert rejects[0]["detail"].startswith("line of 5000 bytes")
    assert rejects[0]["excerpt"] == "x" * HEAD_BYTES


def test_a_cri_line_split_into_partials_is_bounded_too() -> None:
    deframer = Deframer("cri", max_line_bytes=1024)
    stamp = "2026-01-01T00:00:00.000000000Z stdout"
    partials = [f"{stamp} P {'z' * 600}" for _ in range(6)] + [f"{stamp} F end"]
    framed = deframer.feed_lines([f"{stamp} F ok", *partials, f"{stamp} F after"])
    assert framed.lines["text"].to_list() == ["ok", "after"]
    assert framed.rejects.select("line_no", "reason").rows() == [(2, "too-long")]


class _Endless(io.RawIOBase):
    """``size`` zero bytes with no newline, then ``tail``: /dev/zero with an end."""

    def __init__(self, size: int, tail: bytes) -> None:
        self.left, self.tail = size, tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # typeshed: WriteableBuffer
        if self.left > 0:
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n
        n = min(len(buffer), len(self.tail))
        buffer[:n], self.tail = self.tail[:n], self.tail[n:]
        return n


class _Events:
    def stream_opened(self, kind: str, source: str) -> None: ...
    def stream_closed(self, kind: str, source: str) -> None: ...
    def stream_restarted(self, kind: str, source: str, reason: str) -> None: ...
    def health(self, ok: bool, reason: str) -> None: ...


def test_stdin_reports_a_64_mb_line_as_one_overlong_without_holding_it() -> None:
    size = 64 << 20
    stream = io.BufferedReader(_Endless(size, b"\nnext line\n"))
    chunks: list[Chunk] = []
    StdinSource(stream, max_line_bytes=1 << 20).run(chunks.append, threading.Event(), _Events())
    lines = [line for chunk in chunks for line in chunk.lines]
    assert lines == [Overlong(size, bytes(HEAD_BYTES)), "next line"]


def test_analyze_and_the_exporter_count_an_over_long_line_the_same(tmp_path: Path) -> None:
    good = GOOD.read_bytes()
    log = tmp_path / "long.log"
    log.write_bytes(b'{"authority": "' + b"h" * (3 << 20) + b'"}\n' + good + b"z" * (2 << 20))
    plain = tmp_path / "plain.log"
    plain.write_bytes(good)
    connections, lines = analysed_connections([str(log)])
    plain_connections, plain_lines = analysed_connections([str(plain)])
    assert lines["malformed"] == 2
    assert (connections, lines["entry"]) == (plain_connections, plain_lines["entry"])
    samples = replay([str(log)], lines=good.count(b"\n") + 2)
    reasons = {labels["reason"]: v for labels, v in samples["wslog_malformed_lines_total"]}
    assert reasons == {"too-long": 2}


def test_analyze_memory_stays_flat_on_a_line_of_300_mb(tmp_path: Path) -> None:
    """The whole line is never held: peak memory is that of a short input plus the bound."""
    feeder = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "block = bytes(1 << 20)\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    out.write(block)\n"
        "out.write(b'\\n' + open(sys.argv[2], 'rb').read())\n"
    )

    def peak_kb(megabytes: int) -> int:
        script = (
            "import resource, subprocess, sys\n"
            "feed = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]],"
            " stdout=subprocess.PIPE)\n"
            "run = subprocess.run([sys.executable, '-m', 'wslog', 'analyze', '-', '-f', 'json'],"
            " stdin=feed.stdout, capture_output=True)\n"
            "feed.wait()\n"
            "assert run.returncode == 0, run.stderr\n"
            "assert b'too-long' in run.stdout, run.stdout[-2000:]\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, feeder, str(megabytes), str(GOOD)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return int(out.stdout.strip())

    small, large = peak_kb(2), peak_kb(300)
    assert large - small < 100 * 1024, f"peak {small} kB for 2 MB, {large} kB for 300 MB"
