"""Over every input the tests carry (lab captures, public real-world lines, every Istio TEXT
generation, the walkthrough's excerpts): every line is accounted for exactly once, and every
connection keeps a side's entry, its response code and its start time."""

from __future__ import annotations

from pathlib import Path

import pytest

from analyzer.cli import AnalysisOptions, analyze_paths
from tests.conftest import TESTDATA

INPUTS = sorted(
    {p.parent for p in TESTDATA.glob("lab/*/*/*.log")}
    | {p for p in TESTDATA.glob("real-world/*.log")}
    | {p for p in TESTDATA.glob("istio-text-generations/*.log")}
    | {TESTDATA / "reference" / "walkthrough-excerpts.log"}
)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: str(p.relative_to(TESTDATA)))
def test_every_line_counted_once_and_every_connection_keeps_its_entry(path: Path) -> None:
    result = analyze_paths([str(path)], AnalysisOptions(include_all=True))
    text = b"".join(p.read_bytes() for p in ([path] if path.is_file() else path.glob("*.log")))
    lines = text.count(b"\n") + (0 if not text or text.endswith(b"\n") else 1)
    # total_lines is entries + not_access_log + malformed: each physical line in exactly one
    assert result.total_lines == lines
    for conn in result.connections.to_dicts():
        entries = [conn[side] for side in ("client", "server", "unsided") if conn[side]]
        assert entries, conn
        assert conn["start_time"] is not None
        if any(e["response_code"] is not None for e in entries):
            assert conn["response_code"] is not None, conn
