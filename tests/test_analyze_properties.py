"""Properties of the whole analysis on the lab's real logs: the result does not depend on file
order, read-block boundaries or the interleaving of both sides in one file; noise and garbage
lines never change the connections and are all accounted for; any bytes are survivable."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.correlate import CorrelationSettings
from analyzer.formats import default_formats
from analyzer.inputs import InputSet, InputSource
from analyzer.pipeline import Analysis, AnalysisResult, Pipeline
from analyzer.vocab import LineResult
from tests.conftest import TESTDATA

LAB = sorted((TESTDATA / "lab" / "json").glob("*/*.log"))
KEY = ["request_id", "upgrade_path", "outcome", "cause", "pairing", "duration_ms", "bytes_sent"]
GARBAGE = st.sampled_from(
    [
        "",
        "2026-11-26T00:13:28.000000Z\tinfo\tenvoy main\tstarting",
        '{"start_time": "2026-11-26T00:13:28.246Z", "response_code": "x"}',
        '{"truncated": ',
        '[2026-11-26T00:13:28.246Z] "GET / HTTP/1.1" garbage',
        "\x00\x01\x02",
    ]
)


def analyse(files: list[Path], block_bytes: int) -> AnalysisResult:
    formats = default_formats()
    inputs = InputSet([InputSource(str(p), p) for p in files], formats, block_bytes=block_bytes)
    settings = CorrelationSettings(window=timedelta(seconds=10))
    pipeline = Pipeline(formats=formats, settings=settings)
    analysis = Analysis()
    for chunk in inputs:
        analysis.add(pipeline.feed_decoded(chunk, inputs.low_watermark()))
    analysis.add(pipeline.flush())
    return analysis.result(include_all=True)


def key(result: AnalysisResult) -> pl.DataFrame:
    return result.connections.select(KEY).sort(KEY, nulls_last=True)


@functools.cache
def baseline() -> pl.DataFrame:
    return key(analyse(LAB, 1 << 20))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.permutations(LAB), block_bytes=st.integers(min_value=64, max_value=4096))
def test_file_order_and_block_boundaries_do_not_change_the_connections(
    order: list[Path], block_bytes: int
) -> None:
    result = analyse(list(order), block_bytes)
    assert key(result).equals(baseline())
    assert set(result.connections.get_column("pairing")) == {"paired"}


def _end_seconds(line: str) -> float:
    entry = orjson.loads(line)
    start = datetime.fromisoformat(entry["start_time"].replace("Z", "+00:00"))
    return start.timestamp() + (entry["duration"] or 0) / 1000


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_interleaved_file_with_noise_gives_the_same_connections(
    tmp_path_factory: object, data: st.DataObject
) -> None:
    """Both sides in one file, in the order Envoy's end times give them, disturbed by up to
    5 s (less than the 10 s window), with noise and garbage lines anywhere."""
    lines = [line for path in LAB for line in path.read_text().splitlines()]
    jitter = data.draw(st.lists(st.floats(0, 5), min_size=len(lines), max_size=len(lines)))
    ordered = [
        line
        for _, line in sorted(
            zip(
                (_end_seconds(x) + j for x, j in zip(lines, jitter, strict=True)),
                lines,
                strict=True,
            )
        )
    ]
    garbage = data.draw(st.lists(GARBAGE, max_size=20))
    positions = data.draw(
        st.lists(st.integers(0, len(ordered)), min_size=len(garbage), max_size=len(garbage))
    )
    mixed = list(ordered)
    for at, junk in zip(sorted(positions, reverse=True), garbage, strict=True):
        mixed.insert(at, junk)
    target = Path(str(tmp_path_factory.mktemp("mixed"))) / "all.log"  # type: ignore[attr-defined]  # pytest fixture
    target.write_bytes("\n".join(mixed).encode("utf-8", "surrogateescape") + b"\n")
    result = analyse([target], 512)
    assert key(result).equals(baseline())
    assert result.total_lines == len(mixed)


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=2048))
def test_any_bytes_are_accounted_for_and_never_raise(tmp_path_factory: object, blob: bytes) -> None:
    target = Path(str(tmp_path_factory.mktemp("blob"))) / "blob.log"  # type: ignore[attr-defined]  # pytest fixture
    target.write_bytes(blob)
    result = analyse([target], 256)
    expected = blob.count(b"\n") + (0 if blob.endswith(b"\n") or not blob else 1)
    if blob.startswith(b"\x1f\x8b"):  # read as gzip: what decompresses, then one "truncated"
        assert result.lines[LineResult.MALFORMED] >= 1
    else:
        assert result.total_lines == expected
