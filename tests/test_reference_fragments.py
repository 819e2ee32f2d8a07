"""The reference walkthrough's own log excerpts (``{...."protocol":"HTTP/2",....}``): elided by
their author, so not valid entries. They must be accounted for as malformed with a reason and
their file:line, never crash the run, and never become connections; the same excerpts with the
elision repaired decode to the fields the walkthrough points at."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import polars as pl

from analyzer.cli import AnalysisOptions, analyze_paths
from analyzer.decode import decode
from analyzer.formats import default_formats
from analyzer.schema import LINE_SCHEMA, conform
from analyzer.vocab import LineResult
from tests.conftest import TESTDATA


def excerpts() -> list[str]:
    text = (TESTDATA / "reference" / "walkthrough-excerpts.log").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("{....")]


def test_elided_excerpts_are_malformed_with_file_and_line(tmp_path: Path) -> None:
    lines = excerpts()
    assert len(lines) == 4
    log = tmp_path / "walkthrough.log"
    log.write_text("\n".join(lines) + "\n")
    result = analyze_paths([str(log)], AnalysisOptions(include_all=True))
    assert result.lines[LineResult.MALFORMED] == 4
    assert result.connections.height == 0
    assert result.reject_examples.get_column("line_no").to_list() == [1, 2, 3, 4]
    assert set(result.rejects_by_reason) <= {"invalid-json", "truncated"}


def test_repaired_excerpts_show_the_protocols_the_walkthrough_reads() -> None:
    repaired = [
        re.sub(r"\.\.\.\.", "", line).replace("{,", "{").replace(",}", "}") for line in excerpts()
    ]
    texts = [
        orjson.dumps({"start_time": "2022-01-01T00:00:00.000Z", **orjson.loads(t)}).decode()
        for t in repaired
    ]
    frame = conform(
        pl.DataFrame({"source": ["ref"] * 4, "line_no": [1, 2, 3, 4], "text": texts}), LINE_SCHEMA
    )
    decoded = decode(frame, default_formats())
    assert decoded.entries.get_column("protocol").to_list() == [
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/2",
    ]
    assert decoded.entries.get_column("upstream_local_address").to_list()[1] == "127.0.**.**:53983"
