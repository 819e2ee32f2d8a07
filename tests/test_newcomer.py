"""What a new user meets first, through the real entry point: a report that is whole in a pipe,
a warning when nothing was read, a gate that says what tripped it, a cut gzip that keeps what
it holds."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import zlib
from pathlib import Path

from tests.conftest import ROOT, TESTDATA, run_wslog

BROKEN = TESTDATA / "lab" / "json" / "h2-no-allow-connect"
REQUEST_ID = "308739e3-a3e8-42a2-bab1-5c2c2fb20047"


def test_the_report_in_a_pipe_keeps_ids_and_sentences_whole() -> None:
    result = run_wslog("analyze", str(BROKEN), "--connections")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(REQUEST_ID in line for line in lines) == 2  # the failure's example and its row
    why = next(line for line in lines if line.lstrip().startswith("why:"))
    assert why.rstrip().endswith("the client sidecar answered 503.")
    assert "\x1b[" not in result.stdout  # no colour codes in a file


def test_a_gate_names_the_connections_that_tripped_it() -> None:
    result = run_wslog("analyze", str(BROKEN), "--fail-on", "h2-connect-not-allowed")
    assert result.returncode == 1
    assert "--fail-on tripped by 1 failed/h2-connect-not-allowed" in result.stderr
    assert "websockets-server.default.svc.cluster.local" in result.stderr
    assert REQUEST_ID in result.stderr


def test_nothing_readable_is_said_and_a_gate_on_it_exits_2(tmp_path: Path) -> None:
    empty_dir, empty_file, binary = tmp_path / "d", tmp_path / "e.log", tmp_path / "b.log"
    empty_dir.mkdir()
    empty_file.touch()
    binary.write_bytes(bytes(range(256)) * 20)
    for path in (empty_dir, empty_file, binary):
        result = run_wslog("analyze", str(path))
        assert result.returncode == 0
        assert "nothing was analysed" in result.stderr, path
        gated = run_wslog("analyze", str(path), "--fail-on", "failed")
        assert gated.returncode == 2
        assert "--fail-on checked nothing" in gated.stderr


def test_a_truncated_gzip_keeps_every_complete_line_zlib_gives(tmp_path: Path) -> None:
    entry = json.loads((BROKEN / "client.log").read_text().splitlines()[0])
    rng = random.Random(7)
    lines = []
    for n in range(20):
        entry["request_id"] = f"{rng.getrandbits(128):032x}-{n}"
        lines.append(json.dumps(entry))
    packed = gzip.compress(("\n".join(lines) + "\n").encode())
    cut = packed[: len(packed) * 3 // 4]
    log = tmp_path / "cut.log.gz"
    log.write_bytes(cut)
    readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)
    complete = readable.count(b"\n")
    assert 5 < complete < 20
    result = run_wslog("analyze", str(log), "-f", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["lines"]["entries"] == complete
    assert report["malformed"]["by_reason"]["truncated"] >= 1


def test_progress_at_a_terminal_shows_bytes_of_the_total() -> None:
    import os
    import pty
    import re
    import select

    data = TESTDATA / "lab" / "json"
    total = sum(p.stat().st_size for p in data.rglob("*.log"))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wslog", "analyze", str(data)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(slave)
    screen = b""
    while select.select([master], [], [], 60)[0]:
        try:
            data_read = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data_read:
            break
        screen += data_read
    assert proc.wait(timeout=60) == 0
    shown = re.findall(rb"/([0-9.]+) kB", screen)
    assert shown and float(shown[-1]) == round(total / 1000, 1)
