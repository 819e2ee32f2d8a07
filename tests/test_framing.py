"""Framing detection (kubelet, CRI, Docker, kubectl prefixes) and the stateful Deframer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from analyzer.framing import Deframer, Framed, Framing, detect
from analyzer.schema import LINE_SCHEMA, REJECT_SCHEMA

ENTRY = '[2026-01-01T00:00:00.000Z] "GET /ws HTTP/1.1" 101 UC - - "-" 1 2 3 - "-"'
TS = "2026-01-02T03:04:05.123456789Z"


def run(data: list[bytes], source: str = "f.log", framing: Framing | None = None) -> Framed:
    deframer = Deframer(source, framing)
    return Framed.concat([*(deframer.feed_bytes(d) for d in data), deframer.flush()])


def texts(framed: Framed) -> list[str]:
    return framed.lines["text"].to_list()


@pytest.mark.parametrize(
    ("line", "framing"),
    [
        (ENTRY, Framing.RAW),
        (f"{TS} {ENTRY}", Framing.KUBECTL_TIMESTAMPS),
        (f"[pod/ws-client-7d9/istio-proxy] {ENTRY}", Framing.KUBECTL_PREFIX),
        (f"{TS} stdout F {ENTRY}", Framing.CRI),
        (json.dumps({"log": ENTRY + "\n", "stream": "stdout", "time": TS}), Framing.DOCKER_JSON),
        (f"envoy-1         | {TS} {ENTRY}", Framing.COMPOSE),
        ("2026-01-02T03:04:05.123456Z\tinfo\txdsproxy\tconnected", Framing.RAW),
    ],
)
def test_framing_is_detected_from_the_first_lines(line: str, framing: Framing) -> None:
    assert detect(pl.Series([line, "", line])) is framing
    framed = run([(line + "\n").encode()])
    assert framed.lines.schema == LINE_SCHEMA
    assert texts(framed)[0] in (ENTRY, line)


def test_no_non_empty_line_leaves_the_framing_undecided() -> None:
    assert detect(pl.Series(["", ""])) is None


def test_kubectl_timestamps_go_to_log_time() -> None:
    framed = run([f"{TS} {ENTRY}\n".encode()])
    assert texts(framed) == [ENTRY]
    assert framed.lines["log_time"][0] == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_kubectl_prefix_names_the_pod_as_source() -> None:
    data = f"[pod/a-1/istio-proxy] {ENTRY}\n[pod/b-2/istio-proxy] {TS} {ENTRY}\n".encode()
    framed = run([data])
    assert framed.lines["source"].to_list() == ["pod/a-1/istio-proxy", "pod/b-2/istio-proxy"]
    assert framed.lines["log_time"].to_list()[0] is None
    assert texts(framed) == [ENTRY, ENTRY]


def test_cri_partial_lines_are_joined_across_chunks() -> None:
    first = f"{TS} stdout P {ENTRY[:20]}\n{TS} stderr F other\n{TS} stdout P {ENTRY[20:40]}"
    second = f"\n{TS} stdout F {ENTRY[40:]}\n{TS} stdout F next\n"
    framed = run([first.encode(), second.encode()], framing=None)
    lines = framed.lines.sort("line_no")
    assert lines["text"].to_list() == [ENTRY, "other", "next"]
    assert lines["line_no"].to_list() == [1, 2, 5]


def test_cri_chunking_byte_by_byte_gives_the_same_lines() -> None:
    data = f"{TS} stdout P ab\n{TS} stdout P cd\n{TS} stdout F ef\n{TS} stdout F gh\n".encode()
    whole = run([data])
    pieces = run([data[i : i + 1] for i in range(len(data))])
    assert whole.lines.equals(pieces.lines.sort("line_no"))
    assert texts(whole) == ["abcdef", "gh"]


def test_cri_partial_at_end_of_source_is_still_a_line() -> None:
    framed = run([f"{TS} stdout F a\n{TS} stdout P unfinished\n".encode()])
    assert texts(framed) == ["a", "unfinished"]


def test_docker_json_file_lines_are_unwrapped_and_partials_joined() -> None:
    rows = [
        {"log": ENTRY[:10], "stream": "stdout", "time": TS},
        {"log": ENTRY[10:] + "\n", "stream": "stdout", "time": TS},
        {"log": "warn\n", "stream": "stderr", "time": TS},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows) + '{"log": broken\n'
    framed = run([data.encode()])
    assert texts(framed) == [ENTRY, "warn"]
    assert framed.rejects["reason"].to_list() == ["bad-framing"]
    assert framed.rejects["line_no"].to_list() == [4]


def test_compose_prefix_gives_service_and_time_and_passes_other_lines() -> None:
    data = f"Attaching to envoy-1\nenvoy-1  | {TS} {ENTRY}\n".encode()
    framed = run([data])
    assert framed.lines["source"].to_list() == ["f.log", "envoy-1"]
    assert texts(framed) == ["Attaching to envoy-1", ENTRY]


def test_lines_without_the_detected_framing_are_bad_framing_rejects() -> None:
    data = f"{TS} {ENTRY}\n{TS} {ENTRY}\nno timestamp here\n".encode()
    framed = run([data])
    assert framed.rejects.schema == REJECT_SCHEMA
    assert framed.rejects.select("line_no", "reason").rows() == [(3, "bad-framing")]
    assert framed.lines.height == 2


def test_a_trailing_piece_waits_for_its_newline() -> None:
    deframer = Deframer("f")
    assert deframer.feed_bytes(b"abc").lines.height == 0
    assert texts(deframer.feed_bytes(b"def\ngh")) == ["abcdef"]
    assert texts(deframer.flush()) == ["gh"]


def test_invalid_utf8_is_an_encoding_reject_and_numbering_continues() -> None:
    framed = run([b"good\n\xff\xfe bad\nalso good\r\n"])
    assert texts(framed) == ["good", "also good"]
    assert framed.lines["line_no"].to_list() == [1, 3]
    assert framed.rejects.select("line_no", "reason").rows() == [(2, "encoding")]
