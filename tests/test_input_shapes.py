"""One verdict whatever shape the logs arrive in (issue: one side rule): every lab capture, in
both formats, gives the same classified connections as two files, one per sidecar, when its
lines come as two files either way round, one file concatenated either way round, one file
ordered by start time or by write time (start + duration), stdin, and in read blocks as small
as 64 bytes. ``wslog analyze --fail-on`` and the exporter's stdin source agree."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from analyzer.cli import AnalysisOptions, analyze_sources
from analyzer.decode import decode
from analyzer.formats import default_formats
from analyzer.inputs import InputSource
from analyzer.pipeline import AnalysisResult
from analyzer.report import render_table
from analyzer.schema import LINE_SCHEMA, conform
from lab.scenarios import BY_NAME
from tests.conftest import TESTDATA, verdicts
from wslog.cli import app

FORMATS = ("json", "text")
SCENARIOS = sorted(p.name for p in (TESTDATA / "lab" / "json").iterdir() if p.is_dir())

Shape = Callable[[list[str], list[str]], list[list[str]]]  # client, server lines -> files


def _write_times(lines: list[str], *, write: bool) -> list[tuple[int, int]]:
    """Each line's start (or end, ``write``) in microseconds, by wslog's own decoder."""
    frame = conform(
        pl.DataFrame(
            {"source": ["x"] * len(lines), "line_no": range(1, len(lines) + 1), "text": lines}
        ),
        LINE_SCHEMA,
    )
    entries = decode(frame, default_formats()).entries
    assert entries.height == len(lines), "every lab line is an entry"
    start = pl.col("start_time").dt.epoch("us")
    at = start + pl.col("duration_ms").fill_null(0) * 1000 if write else start
    return list(entries.select(at, pl.col("line_no")).iter_rows())


def _ordered(*, write: bool) -> Shape:
    def shape(client: list[str], server: list[str]) -> list[list[str]]:
        lines = client + server
        order = sorted(_write_times(lines, write=write))
        return [[lines[n - 1] for _, n in order]]

    return shape


SHAPES: dict[str, Shape] = {
    "two files, server first": lambda c, s: [s, c],
    "one file, client then server": lambda c, s: [c + s],
    "one file, server then client": lambda c, s: [s + c],
    "one file by start time": _ordered(write=False),
    "one file by write time": _ordered(write=True),
}


def lab_lines(fmt: str, scenario: str) -> tuple[list[str], list[str]]:
    folder = TESTDATA / "lab" / fmt / scenario
    return tuple(  # type: ignore[return-value]  # exactly two
        (folder / f"{side}.log").read_text().splitlines() for side in ("client", "server")
    )


def analyse(
    files: list[list[str]], block_bytes: int, *, stdin: bool = False, batch_entries: int = 1
) -> AnalysisResult:
    blobs = [("\n".join(lines) + "\n").encode() for lines in files]
    if stdin:
        sources = [InputSource("-")]
        stream: io.BytesIO | None = io.BytesIO(b"".join(blobs))
    else:
        sources = [
            InputSource(f"f{i}", opener=functools.partial(io.BytesIO, blob))
            for i, blob in enumerate(blobs)
        ]
        stream = None
    options = AnalysisOptions(include_all=True)
    return analyze_sources(
        sources, options, block_bytes=block_bytes, batch_entries=batch_entries, stdin=stream
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_shape_gives_the_two_file_connections(fmt: str, scenario: str) -> None:
    client, server = lab_lines(fmt, scenario)
    expected = verdicts(analyse([client, server], 1 << 20))
    assert expected.height > 0
    if BY_NAME[scenario].server_running:
        assert set(expected.get_column("pairing")) == {"paired"}
    for name, shape in SHAPES.items():
        for block in (64, 1 << 20):
            got = verdicts(analyse(shape(client, server), block))
            assert got.equals(expected), f"{name}, {block}-byte blocks"
    for stream in ([client + server], [server + client]):
        assert verdicts(analyse(stream, 64, stdin=True)).equals(expected), "stdin"


# A client sidecar's refused extended CONNECT carries no evidence of its own (it is the very entry
# a server sidecar writes): only its file, when that file holds one side, places it.
PLACED_BY_FILE_ONLY = {"app-h2-no-allow-connect"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_scenarios_in_one_stream_either_way_round(fmt: str) -> None:
    """The whole lab, every client log then every server log, spans more than the window."""
    pairs = [lab_lines(fmt, s) for s in SCENARIOS if s not in PLACED_BY_FILE_ONLY]
    clients = [line for c, _ in pairs for line in c]
    servers = [line for _, s in pairs for line in s]
    expected = verdicts(analyse([clients, servers], 1 << 20))
    for stream in ([clients + servers], [servers + clients]):
        assert verdicts(analyse(stream, 64, stdin=True)).equals(expected)
        assert verdicts(analyse(stream, 4096)).equals(expected)


def test_a_refused_connect_is_the_client_sidecars_only_in_a_client_pods_log() -> None:
    refused, _ = lab_lines("json", "app-h2-no-allow-connect")
    others, servers = lab_lines("json", "h1")
    in_client_log = analyse([others + refused, servers], 64).connections
    in_one_stream = analyse([others + refused + servers], 64).connections
    for conns, pairing, reporter in (
        (in_client_log, "client-only", "client"),
        (in_one_stream, "unpaired", ""),
    ):
        row = conns.filter(pl.col("request_id").is_null()).row(0, named=True)
        assert (row["cause"], row["pairing"], row["reported_by"]) == (
            "h2-connect-not-allowed",
            pairing,
            reporter,
        )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("reverse", [False, True], ids=["client-first", "server-first"])
def test_fail_on_trips_on_the_503_from_one_stream(fmt: str, reverse: bool) -> None:
    client, server = lab_lines(fmt, "h2-no-allow-connect")
    lines = server + client if reverse else client + server
    args = ["analyze", "--fail-on", "h2-connect-not-allowed", "--format", "json", "-"]
    result = CliRunner().invoke(app, args, input="\n".join(lines) + "\n")
    assert result.exit_code == 1, result.output
    (conn,) = json.loads(result.stdout)["connections"]
    assert (conn["upgrade_path"], conn["outcome"], conn["cause"], conn["pairing"]) == (
        "h1-h2",
        "failed",
        "h2-connect-not-allowed",
        "paired",
    )


def test_walkthrough_excerpts_are_malformed_in_every_shape() -> None:
    """The reference walkthrough's elided excerpts: never entries, whatever the shape."""
    lines = (TESTDATA / "reference" / "walkthrough-excerpts.log").read_text().splitlines()
    for files in ([lines], [lines[:2], lines[2:]], [lines[2:], lines[:2]]):
        for block in (64, 1 << 20):
            result = analyse(files, block)
            assert result.connections.height == 0
            assert result.lines == {"entry": 0, "not_access_log": 0, "malformed": 4}


def test_an_entry_no_evidence_places_keeps_its_facts(tmp_path: Path) -> None:
    """A local reply without a cluster in a stream holding both sides: side unknown, but the
    connection keeps its code, flags and times, and says it is unpaired."""
    client, server = lab_lines("json", "h1")
    denied = json.loads(client[0]) | {
        "upstream_cluster": None,
        "upstream_host": None,
        "upstream_local_address": None,
        "response_code": 403,
        "response_flags": None,
        "response_code_details": "rbac_access_denied_matched_policy[none]",
        "request_id": "denied-1",
        "duration": 0,
        "bytes_sent": 19,
    }
    stream = [*client, json.dumps(denied), *server]
    result = analyse([stream], 64, stdin=True)
    row = result.connections.filter(pl.col("request_id") == "denied-1").row(0, named=True)
    assert (row["pairing"], row["outcome"], row["response_code"], row["bytes_sent"]) == (
        "unpaired",
        "failed",
        403,
        19,
    )
    assert row["client"] is None and row["server"] is None
    assert row["unsided"]["response_code_details"].startswith("rbac_access_denied")
    assert row["start_time"] is not None
    # Alone in a client pod's log, the same entry is the client's.
    alone = analyse([[*client, json.dumps(denied)]], 64)
    row = alone.connections.filter(pl.col("request_id") == "denied-1").row(0, named=True)
    assert row["pairing"] == "client-only"


def test_a_missing_route_is_the_routing_proxys_in_any_stream() -> None:
    """NR: only the proxy routing into the mesh (client sidecar or gateway) reports it."""
    client, server = lab_lines("json", "h1")
    nr = json.loads(client[0]) | {
        "upstream_cluster": None,
        "upstream_host": None,
        "upstream_local_address": None,
        "response_code": 404,
        "response_flags": "NR",
        "response_code_details": "route_not_found",
        "request_id": "nr-1",
    }
    for files in ([[*server, json.dumps(nr), *client]], [client, [json.dumps(nr)], server]):
        result = analyse(files, 64)
        row = result.connections.filter(pl.col("request_id") == "nr-1").row(0, named=True)
        assert (row["pairing"], row["cause"], row["response_code"]) == (
            "client-only",
            "no-route",
            404,
        )


def test_merged_dumps_concatenated_out_of_order_are_reported_not_hidden() -> None:
    """The one shape the watermark cannot see through: a stream mixing pods that goes back in
    time by more than the window, with one connection on both sides of the jump. The report
    says so and how to give the input instead."""
    client, server = lab_lines("json", "app-down")
    later = lab_lines("json", "client-drop-h2")[0]  # minutes after app-down
    first = [client[0], server[0], *later]  # the client entry and the first attempt
    result = analyse([[*first, *server[1:]]], 64)  # a correlation step per 64-byte read
    assert result.late_entries == len(server) - 1
    console = Console(record=True, width=200)
    render_table(result, console)
    assert "2 entries came after their connection had been reported" in console.export_text()
    # Correlated in one step (analyze's default batches are larger than this input), the jump
    # is seen through: the connection is whole and nothing is late.
    whole = analyse([[*first, *server[1:]]], 64, batch_entries=100_000)
    assert whole.late_entries == 0
    assert verdicts(whole).equals(verdicts(analyse([client, server, later], 64)))
    # In any supported shape nothing is late.
    assert analyse([client, server], 64).late_entries == 0
