"""Inputs: paths, directories, globs, stdin, gzip, time-ordered interleaving."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import polars as pl
import pytest

from analyzer.errors import InputError, MalformedEntryError
from analyzer.formats import FormatKind, default_formats
from analyzer.inputs import InputSet, InputSource, expand, expand_all, load_log_format
from analyzer.vocab import LineResult

FORMATS = default_formats()


def entry(second: int, duration: int, rid: str) -> str:
    return json.dumps(
        {
            "start_time": f"2026-01-01T00:00:{second:02d}.000Z",
            "method": "GET",
            "response_code": 101,
            "duration": duration,
            "request_id": rid,
        }
    )


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_directories_are_expanded_recursively_and_globs_and_stdin_kept(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write(tmp_path / "a" / "b.log", ["x"])
    write(tmp_path / "c.log", ["y"])
    names = [s.name for s in expand([str(tmp_path), str(tmp_path / "*.log"), "-"])]
    assert names == [str(tmp_path / "a" / "b.log"), str(tmp_path / "c.log"), "-"]


@pytest.mark.parametrize("arg", ["/nonexistent/access.log", "/nonexistent/*.log"])
def test_missing_inputs_raise_an_input_error_that_says_what_to_do(arg: str) -> None:
    with pytest.raises(InputError, match="Check"):
        expand([arg])


def test_gzip_is_recognised_by_its_magic_bytes_whatever_the_name(tmp_path: Path) -> None:
    (tmp_path / "server.log").write_bytes(gzip.compress((entry(1, 5, "r") + "\n").encode()))
    inputs = InputSet(expand([str(tmp_path)]), FORMATS)
    assert sum(chunk.entries.height for chunk in inputs) == 1


def test_a_truncated_gzip_keeps_what_was_read_and_counts_the_rest_malformed(
    tmp_path: Path,
) -> None:
    lines = [entry(i, 5, f"r{i}") for i in range(200)]
    data = gzip.compress("".join(line + "\n" for line in lines).encode())
    (tmp_path / "bad.gz").write_bytes(data[: len(data) // 2])
    write(tmp_path / "good.log", [entry(1, 5, "other")])
    inputs = InputSet(expand([str(tmp_path)]), FORMATS, block_bytes=64)
    chunks = list(inputs)
    rejects = pl.concat([c.rejects for c in chunks])
    assert rejects.filter(pl.col("detail").str.contains("gzip")).height == 1
    accounting = inputs.accounting()
    assert accounting[str(tmp_path / "bad.gz")][LineResult.MALFORMED] >= 1
    assert 0 < accounting[str(tmp_path / "bad.gz")][LineResult.ENTRY] < 200
    assert accounting[str(tmp_path / "good.log")][LineResult.ENTRY] == 1


def test_stdin_is_read_when_given_as_dash() -> None:
    stdin = io.BytesIO((entry(1, 5, "r") + "\nnoise\n").encode())
    inputs = InputSet([InputSource("-")], FORMATS, stdin=stdin)
    assert sum(chunk.entries.height for chunk in inputs) == 1
    assert inputs.accounting()["-"][LineResult.NOT_ACCESS_LOG] == 1


def test_sources_are_interleaved_by_time_whatever_their_order(tmp_path: Path) -> None:
    late = write(tmp_path / "late.log", [entry(s, 0, f"late-{s}") for s in range(30, 40)])
    early = write(tmp_path / "early.log", [entry(s, 0, f"early-{s}") for s in range(0, 40, 4)])
    inputs = InputSet(expand([str(late), str(early)]), FORMATS, block_bytes=300)
    order = [rid for chunk in inputs for rid in chunk.entries["request_id"].to_list()]
    assert len(order) == 20
    # after one chunk of each, the source that ends earliest is read until it catches up
    assert order.index("early-28") < order.index("late-32")
    assert order.index("late-33") < order.index("early-36")


def test_every_line_of_every_source_is_accounted_for(tmp_path: Path) -> None:
    write(tmp_path / "a.log", [entry(1, 1, "a"), "noise", entry(2, 1, "b")[:30]])
    write(tmp_path / "b.log", ["", entry(3, 1, "c")])
    inputs = InputSet(expand([str(tmp_path)]), FORMATS, block_bytes=16)
    list(inputs)
    accounting = inputs.accounting()
    assert [sum(c.values()) for c in accounting.values()] == [3, 2]
    assert accounting[str(tmp_path / "a.log")][LineResult.MALFORMED] == 1


def test_strict_stops_at_the_first_malformed_entry(tmp_path: Path) -> None:
    write(tmp_path / "a.log", [entry(1, 1, "a"), entry(2, 1, "b")[:30]])
    with pytest.raises(MalformedEntryError, match=r"a\.log:2: truncated"):
        list(InputSet(expand([str(tmp_path)]), FORMATS, strict=True))


def test_log_format_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "fmt.json").write_text('{"t": "%START_TIME%", "c": "%RESPONSE_CODE%"}')
    assert load_log_format(f"@{tmp_path / 'fmt.json'}").kind is FormatKind.JSON
    with pytest.raises(InputError, match="cannot read"):
        load_log_format(f"@{tmp_path / 'missing'}")


def test_directories_skip_files_that_do_not_look_like_logs(tmp_path: Path) -> None:
    for name in ("0.log", "0.log.20240101-120000", "1.log.gz", "pod.txt", "istio-proxy"):
        write(tmp_path / name, ["x"])
    write(tmp_path / "client-result.json", ["{"])
    expansion = expand_all([str(tmp_path)])
    kept = sorted(Path(s.name).name for s in expansion.sources)
    assert kept == ["0.log", "0.log.20240101-120000", "1.log.gz", "istio-proxy", "pod.txt"]
    assert [p.name for p in expansion.skipped] == ["client-result.json"]
    named = expand_all([str(tmp_path / "client-result.json")])
    assert [Path(s.name).name for s in named.sources] == ["client-result.json"]
