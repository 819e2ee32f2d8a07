"""Decoding framed lines into entries: every Istio generation and custom format, public lines
from real meshes (testdata/real-world), and each malformed line rejected with its reason."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.decode import Decoded, decode, decode_framed, newest_start
from analyzer.formats import FormatSet, default_formats, parse_log_format
from analyzer.framing import Deframer, Framed
from analyzer.schema import ENTRY_SCHEMA, REJECT_SCHEMA
from analyzer.vocab import LineResult
from lab.scenarios import BY_NAME
from tests.conftest import TESTDATA

REAL_WORLD_DIR = TESTDATA / "real-world"

FORMATS = default_formats()
# The format of envoy-custom-format-websocket-compose.log, as its source publishes it.
COMPOSE_EXAMPLE_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% "
    '%DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" '
    '"%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"'
)
# file -> (entries, not_access_log, malformed, formats seen)
REAL_WORLD = {
    "cray-hpe-docs-csm-installation-failure.log": (2, 0, 0, {"istio-text-1.8"}),
    "cray-hpe-docs-csm-troubleshoot-intermittent-503s.log": (1, 0, 1, {"istio-text-1.8"}),
    "istio-io-docs-access-log-task.log": (2, 0, 0, {"istio-text-1.9"}),
    "gateway-nc-cluster-not-found.log": (3, 0, 0, {"istio-text-1.9"}),
    "sidecar-tcp-through-forward-proxy.log": (3, 0, 0, {"istio-text-1.9"}),
    "envoy-custom-format-websocket-compose.log": (0, 0, 10, set()),
    "headless-service-tcp-uf-urx.log": (1, 0, 0, {"istio-text-1.7"}),
    "headless-service-uf-urx-then-puts.log": (4, 0, 0, {"istio-text-1.7"}),
    "ambient-hbone-and-waypoint.log": (7, 0, 0, {"istio-text-1.9"}),
}


def decode_bytes(data: bytes, formats: FormatSet = FORMATS, chunk: int = 0) -> Decoded:
    deframer = Deframer("f.log")
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    parts = [decode_framed(deframer.feed_bytes(p), formats) for p in pieces]
    return Decoded.concat([*parts, decode_framed(deframer.flush(), formats)])


def decode_lines(lines: list[str], formats: FormatSet = FORMATS) -> Decoded:
    return decode_bytes("".join(line + "\n" for line in lines).encode(), formats)


def counts(decoded: Decoded) -> tuple[int, int, int]:
    return tuple(decoded.count(r) for r in LineResult)  # type: ignore[return-value]  # 3 results


@pytest.mark.parametrize("name", sorted(REAL_WORLD))
def test_every_real_world_line_is_accounted_for(name: str) -> None:
    data = (REAL_WORLD_DIR / name).read_bytes()
    decoded = decode_bytes(data)
    entries, foreign, malformed, formats = REAL_WORLD[name]
    assert counts(decoded) == (entries, foreign, malformed)
    assert decoded.lines == data.count(b"\n") + (not data.endswith(b"\n"))
    assert set(decoded.entries["format"].to_list()) == formats
    assert decoded.entries.schema == ENTRY_SCHEMA
    assert decoded.rejects.schema == REJECT_SCHEMA


def test_truncated_istio_1_7_line_is_reported_as_truncated() -> None:
    path = REAL_WORLD_DIR / "cray-hpe-docs-csm-troubleshoot-intermittent-503s.log"
    rejects = decode_bytes(path.read_bytes()).rejects
    assert rejects.select("line_no", "reason").rows() == [(1, "truncated")]
    assert "istio-text-1.7" in rejects["detail"][0]


def test_a_custom_format_behind_a_compose_prefix_decodes_with_its_log_format() -> None:
    data = (REAL_WORLD_DIR / "envoy-custom-format-websocket-compose.log").read_bytes()
    decoded = decode_bytes(data, FORMATS.with_formats(parse_log_format(COMPOSE_EXAMPLE_FORMAT)))
    assert counts(decoded) == (10, 0, 0)
    ws = decoded.entries.filter(pl.col("response_code") == 101)
    assert ws.select("response_flags", "duration_ms", "source").rows() == [
        ("DC", 13342, "envoy-1"),
        ("SI", 413322, "envoy-1"),
    ]
    assert ws["log_time"][0] == datetime(2024, 7, 21, 8, 33, 12, 906672, tzinfo=UTC)


def test_without_its_format_the_custom_format_log_is_malformed_not_foreign() -> None:
    data = (REAL_WORLD_DIR / "envoy-custom-format-websocket-compose.log").read_bytes()
    rejects = decode_bytes(data).rejects
    assert set(rejects["reason"].to_list()) == {"format-mismatch"}


def test_istio_text_fields_are_typed_and_dashes_are_null() -> None:
    data = (REAL_WORLD_DIR / "istio-io-docs-access-log-task.log").read_bytes()
    row = decode_bytes(data).entries.row(1, named=True)
    assert row["start_time"] == datetime(2020, 11, 25, 21, 26, 18, 409000, tzinfo=UTC)
    assert (row["method"], row["path"], row["protocol"]) == ("GET", "/status/418", "HTTP/1.1")
    assert (row["response_code"], row["response_flags"]) == (418, None)
    assert row["response_code_details"] == "via_upstream"
    assert (row["bytes_received"], row["bytes_sent"], row["duration_ms"]) == (0, 135, 3)
    assert row["upstream_service_time_ms"] == 1
    assert row["upstream_cluster"] == "inbound|8000||"
    assert row["route_name"] == "default"


def test_tcp_entries_have_null_method_and_protocol() -> None:
    name = "sidecar-tcp-through-forward-proxy.log"
    entries = decode_bytes((REAL_WORLD_DIR / name).read_bytes()).entries
    assert entries.select("method", "protocol", "response_code").unique().rows() == [
        (None, None, 0)
    ]


def istio_json(**over: object) -> str:
    entry: dict[str, object] = {
        "start_time": "2026-01-01T00:00:00.123Z",
        "method": "GET",
        "path": "/ws",
        "protocol": "HTTP/1.1",
        "response_code": 101,
        "response_flags": "UC",
        "duration": 10,
        "bytes_sent": 5,
        "request_id": "r-1",
        "upstream_cluster": "outbound|8080||ws.default.svc.cluster.local",
        "downstream_remote_address": "127.0.**.**:53983",
    }
    entry.update(over)
    return json.dumps({k: v for k, v in entry.items() if v is not ...})


def test_istio_json_values_as_numbers_strings_null_or_dash_in_any_key_order() -> None:
    lines = [
        istio_json(),
        istio_json(response_code="101", duration="10", bytes_sent="-"),
        json.dumps(dict(reversed(json.loads(istio_json(bytes_sent=None)).items()))),
    ]
    entries = decode_lines(lines).entries
    assert entries["response_code"].to_list() == [101, 101, 101]
    assert entries["duration_ms"].to_list() == [10, 10, 10]
    assert entries["bytes_sent"].to_list() == [5, None, None]
    assert entries["downstream_remote_address"].to_list() == ["127.0.**.**:53983"] * 3
    assert set(entries["format"].to_list()) == {"istio-json"}


def test_alt_stat_name_semicolon_is_stripped_from_upstream_cluster() -> None:
    entries = decode_lines([istio_json(upstream_cluster="outbound|80||a.b.svc.cluster.local;")])
    assert entries.entries["upstream_cluster"].to_list() == ["outbound|80||a.b.svc.cluster.local"]


def test_malformed_json_entries_are_counted_by_reason() -> None:
    lines = [
        istio_json(response_code="abc"),
        istio_json()[:60],
        istio_json(start_time=...),
        istio_json() + "}",
        istio_json(start_time="yesterday"),
    ]
    decoded = decode_lines(lines)
    assert decoded.rejects.select("line_no", "reason").rows() == [
        (1, "bad-field-value"),
        (2, "truncated"),
        (3, "missing-field"),
        (4, "invalid-json"),
        (5, "bad-field-value"),
    ]
    assert decoded.rejects["excerpt"].str.len_chars().max() <= 200  # type: ignore[operator]  # int


def test_envoy_and_pilot_agent_messages_are_not_access_log() -> None:
    lines = [
        "[2026-01-01 00:00:00.000][15][info][main] [source/server/server.cc:915] starting",
        "2026-01-01T00:00:00.123456Z\tinfo\txdsproxy\tconnected to upstream XDS server",
        '{"level":"info","time":"2026-01-01T00:00:00Z","msg":"Envoy proxy is ready"}',
        "",
        "Istio sidecar injector: done",
    ]
    assert counts(decode_lines(lines)) == (0, 5, 0)


def test_envoy_default_format_is_recognised() -> None:
    line = (
        '[2026-01-01T00:00:00.000Z] "GET /ws HTTP/1.1" 101 DC 61 105 13342 - "-" "-" '
        '"e5248829-b318-443a-a763-e2460530f070" "localhost:8000" "192.168.5.2:8080"'
    )
    entries = decode_lines([line]).entries
    assert entries.select("format", "response_code", "duration_ms").rows() == [
        ("envoy-default", 101, 13342)
    ]


def test_custom_json_format_fields_are_understood_under_user_keys() -> None:
    fmt = parse_log_format(
        '{"when": "%START_TIME%", "status": "%RESPONSE_CODE%", "hop": "%UPSTREAM_PROTOCOL%",'
        ' "type": "%ACCESS_LOG_TYPE%", "upgrade_hdr": "%REQ(UPGRADE)%", "conn": "%CONNECTION_ID%",'
        ' "rid": "%REQ(X-REQUEST-ID)%"}'
    )
    line = json.dumps(
        {
            "when": "2026-01-01T00:00:00.000Z",
            "status": 101,
            "hop": "HTTP/2",
            "rid": "x",
            "type": "DownstreamPeriodic",
            "upgrade_hdr": "websocket",
            "conn": 42,
        }
    )
    decoded = decode_lines([line], FORMATS.with_formats(fmt))
    row = decoded.entries.row(0, named=True)
    assert row["format"] == "custom"
    assert (row["upstream_protocol"], row["access_log_type"]) == ("HTTP/2", "DownstreamPeriodic")
    assert (row["upgrade"], row["connection_id"], row["response_code"]) == ("websocket", 42, 101)


def test_custom_format_string_fields_are_understood_in_position() -> None:
    fmt = parse_log_format(
        "%START_TIME(%s.%3f)% %RESPONSE_CODE% %UPSTREAM_PROTOCOL% %ACCESS_LOG_TYPE% "
        '"%REQ(UPGRADE)%" %CONNECTION_ID% %REQ(X-REQUEST-ID)%'
    )
    decoded = decode_lines(
        ['1767225600.250 101 HTTP/2 DownstreamEnd "websocket" 7 r-9'], FORMATS.with_formats(fmt)
    )
    row = decoded.entries.row(0, named=True)
    assert row["start_time"] == datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert (row["upstream_protocol"], row["access_log_type"], row["upgrade"]) == (
        "HTTP/2",
        "DownstreamEnd",
        "websocket",
    )
    assert (row["connection_id"], row["request_id"]) == (7, "r-9")


LAB = Path(__file__).resolve().parent.parent / "testdata" / "lab"


@pytest.mark.parametrize(
    "path", sorted(LAB.glob("*/*/*.log")), ids=lambda p: "/".join(p.parts[-3:])
)
def test_lab_logs_decode_completely(path: Path) -> None:
    decoded = decode_bytes(path.read_bytes())
    assert decoded.count(LineResult.ENTRY) == decoded.lines
    if path.name == "server.log" and not BY_NAME[path.parent.name].server_running:
        assert decoded.lines == 0  # no server pod in this scenario
        return
    assert decoded.lines > 0
    typed = "typed" in path.parent.name
    assert decoded.entries["access_log_type"].is_not_null().all() is typed


# ---- properties -------------------------------------------------------------------------------

SAMPLE_LINES = [
    istio_json(),
    istio_json(response_code="x"),
    istio_json()[:50],
    '[2026-01-01T00:00:00.000Z] "GET /ws HTTP/1.1" 101 DC 61 105 13342 - "-" "-" "r" "a" "u"',
    '[2026-01-01T00:00:00.000Z] "GET',
    "2026-01-01T00:00:00.123456Z\tinfo\tx",
    "",
]
line_text = st.one_of(
    st.sampled_from(SAMPLE_LINES), st.text(max_size=80).map(lambda s: s.replace("\n", " "))
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_never_raises_on_any_bytes(data: bytes) -> None:
    decoded = decode_bytes(data)
    assert decoded.lines == data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(line_text, max_size=30))
def test_every_line_is_accounted_for_exactly_once(lines: list[str]) -> None:
    frame = pl.DataFrame({"source": "s", "line_no": range(1, len(lines) + 1), "text": lines})
    decoded = decode(frame, FORMATS)
    assert decoded.lines == len(lines)
    seen = decoded.entries["line_no"].to_list() + decoded.rejects["line_no"].to_list()
    assert (
        len(seen)
        == len(set(seen))
        == decoded.count(LineResult.ENTRY) + decoded.count(LineResult.MALFORMED)
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(line_text, max_size=30), st.integers(min_value=1, max_value=64))
def test_chunk_boundaries_do_not_change_the_result(lines: list[str], chunk: int) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    whole, pieces = decode_bytes(data), decode_bytes(data, chunk=chunk)
    assert whole.counts == pieces.counts
    assert whole.entries.equals(pieces.entries)
    assert whole.rejects.equals(pieces.rejects)


def test_decode_framed_counts_framing_rejects_as_malformed() -> None:
    framed = Deframer("f").feed_bytes(b"2026-01-01T00:00:00Z a\n2026-01-01T00:00:00Z b\nbad\n")
    decoded = decode_framed(Framed.concat([framed]), FORMATS)
    assert counts(decoded) == (0, 2, 1)


def _every_log() -> list[Path]:
    lab = sorted((TESTDATA / "lab").glob("*/*/*.log"))
    return lab + sorted(REAL_WORLD_DIR.glob("*.log"))


@pytest.mark.parametrize("path", _every_log(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_peek_at_a_blocks_time_is_the_newest_start_decode_gives(path: Path) -> None:
    """``newest_start`` (a source's look at how far a block went, line by line) agrees with
    ``decode`` on the entries of every lab capture and public sample, a line at a time and
    all at once, and finds no time in a line that is not an access-log entry. (A malformed
    line whose head is a format's gives its start time: a fair measure of progress.)"""
    framed = Deframer(str(path)).feed_bytes(path.read_bytes() + b"\n")
    decoded = decode(framed.lines, FORMATS)
    by_line = dict(zip(framed.lines["line_no"], framed.lines["text"], strict=True))
    entries = list(decoded.entries.select("line_no", "start_time").iter_rows())
    starts = [(by_line[line_no], start) for line_no, start in entries]
    for text, start in starts:
        assert newest_start([text], FORMATS) == start, text
    newest = max((start for _, start in starts if start is not None), default=None)
    assert newest_start([text for text, _ in starts], FORMATS) == newest
    decoded_lines = set(decoded.rejects["line_no"]) | {line_no for line_no, _ in entries}
    for line_no, text in by_line.items():
        if line_no not in decoded_lines:
            assert newest_start([text], FORMATS) is None, text


# ---- TEXT extraction against the regexes one line at a time --------------------------------

TEXT_LINES = [
    line
    for path in sorted(
        [
            *TESTDATA.glob("lab/text/*/*.log"),
            *TESTDATA.glob("istio-text-generations/*.log"),
            *REAL_WORLD_DIR.glob("*.log"),
        ]
    )
    for line in path.read_text(encoding="utf-8").splitlines()
    if line.startswith("[")
]
# What an edit may put in a line: each separator the passes and the quote count rely on.
EDIT_CHARS = ['"', " ", "-", "7", "a", "\t", "]", "|"]


def reference_text_decode(
    text: str, formats: FormatSet = FORMATS
) -> tuple[str, dict[str, str | None]] | None:
    """The first format whose whole-line pattern matches ``text`` (Python's ``re``, one line
    at a time, no pass and no pre-filter) and its columns' raw values, ``-`` as None."""
    for fmt in formats.text:
        match = re.match(fmt.pattern, text)
        if match is not None:
            values = {c: match.group(f.key) for c, f in fmt.columns().items()}
            return fmt.name, {c: None if v == "-" else v for c, v in values.items()}
    return None


@st.composite
def edited_text_lines(draw: st.DrawFn) -> str:
    """A real TEXT line with a few characters inserted, deleted or replaced anywhere."""
    line = draw(st.sampled_from(TEXT_LINES))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(line)))
        char = draw(st.sampled_from(EDIT_CHARS))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        if edit == "insert":
            line = line[:at] + char + line[at:]
        elif at < len(line):
            line = line[:at] + (char if edit == "replace" else "") + line[at + 1 :]
    return line


def test_text_formats_of_many_fields_are_extracted_in_one_pass_groups() -> None:
    # Rust's regex captures with its one-pass engine only up to 16 groups: Istio's TEXT
    # layouts have more, so their fields are split over passes; a layout with a free-text
    # field (".*") is not one-pass and keeps one.
    by_name = {fmt.name: fmt for fmt in FORMATS.text}
    assert len(by_name["istio-text-1.9"].passes) == 2
    assert len(by_name["istio-text-1.7"].passes) == 1
    for fmt in FORMATS.text:
        groups = [p.count("(?P<") for p in fmt.passes]
        assert sum(groups) == len(fmt.columns()) + 1  # every column once, and "m"
        if len(fmt.passes) > 1:
            assert max(groups) <= 16


@settings(max_examples=300, deadline=None)
@given(st.lists(edited_text_lines(), min_size=1, max_size=20))
def test_text_lines_decode_as_their_first_matching_regex_says(lines: list[str]) -> None:
    frame = pl.DataFrame({"source": "s", "line_no": range(1, len(lines) + 1), "text": lines})
    decoded = decode(frame, FORMATS)
    entries = {row["line_no"]: row for row in decoded.entries.iter_rows(named=True)}
    bad_values = set(decoded.rejects.filter(pl.col("reason") == "bad_field")["line_no"])
    for line_no, text in enumerate(lines, start=1):
        expected = reference_text_decode(text)
        if expected is None:
            assert line_no not in entries and line_no not in bad_values, text
            continue
        if line_no in bad_values:  # it matched, with a value not of its type (a 13th month)
            continue
        name, values = expected
        entry = entries[line_no]
        assert entry["format"] == name, text
        for column, value in values.items():
            if ENTRY_SCHEMA[column] == pl.String and column != "upstream_cluster":
                assert entry[column] == value, (column, text)


# 20 columns, two of them numbers written together with a digit between: ambiguous, so the
# pattern is not one-pass and must not be split (a prefix would take "1" into BYTES_SENT).
RUN_TOGETHER = (
    "%START_TIME% %BYTES_SENT%1%BYTES_RECEIVED% %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION% %REQ(X-REQUEST-ID)% %REQ(:AUTHORITY)% "
    "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% "
    "%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME% %REQ(USER-AGENT)% "
    "%RESPONSE_CODE_DETAILS%"
)


@pytest.mark.parametrize(("separator", "passes"), [("1", 1), (" ", 2)])
def test_a_field_run_into_a_digit_keeps_its_format_in_one_pass(separator: str, passes: int) -> None:
    spec = RUN_TOGETHER.replace("%BYTES_SENT%1", "%BYTES_SENT%" + separator)
    formats = FormatSet(()).with_formats(parse_log_format(spec))
    assert len(formats.text[0].passes) == passes
    line = (
        f"2026-01-01T00:00:00.000Z 12{separator}34 GET /ws HTTP/1.1 101 - 5 r a u c l d p s "
        "route ua via_upstream"
    )
    expected = reference_text_decode(line, formats)
    assert expected is not None
    decoded = decode(pl.DataFrame({"source": "s", "line_no": [1], "text": [line]}), formats)
    assert decoded.entries["bytes_sent"].to_list() == [int(expected[1]["bytes_sent"] or 0)]
    assert decoded.entries["request_id"].to_list() == [expected[1]["request_id"]]
