"""What each lab scenario's raw logs must show, checked on the committed testdata.

The same checks run on a live lab run in ``test_lab_live.py``: a future Envoy that writes
something else fails them there, and the testdata must then be regenerated and reviewed. Logs are
parsed here with orjson and a regex built from Istio's TEXT format, independently of wslog's
decoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from analyzer.istio_formats import ISTIO_JSON_FORMAT, ISTIO_TEXT_FORMAT, WSLOG_EXTRA_FIELDS
from lab.envoy_config import CLIENT_CLUSTER, SERVER_CLUSTER, WSLOG_EXTRA_TEXT
from lab.scenarios import BY_NAME, GATEWAY_HOST, SCENARIOS, LogFormat

Entry = dict[str, Any]
TESTDATA_LAB = Path(__file__).resolve().parent.parent / "testdata" / "lab"
_INTEGER_KEYS = ("response_code", "bytes_received", "bytes_sent", "duration")
_OPERATOR_KEYS = {op: key for key, op in {**ISTIO_JSON_FORMAT, **WSLOG_EXTRA_FIELDS}.items()}


def _text_pattern(fmt: str) -> re.Pattern[str]:
    parts = re.split(r"(%[A-Z_]+(?:\([^)]*\))?%)", fmt.rstrip("\n"))
    regex = ""
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex += re.escape(part)
            continue
        before = parts[i - 1][-1:]
        value = {'"': r'[^"]*', "[": r"[^\]]*"}.get(before, r"\S*")
        regex += f"(?P<{_OPERATOR_KEYS[part]}>{value})"
    return re.compile(regex + "$")


_TEXT = _text_pattern(ISTIO_TEXT_FORMAT)
_TEXT_TYPED = _text_pattern(ISTIO_TEXT_FORMAT.rstrip("\n") + " " + WSLOG_EXTRA_TEXT)


def parse_text_line(line: str, typed: bool) -> Entry:
    match = (_TEXT_TYPED if typed else _TEXT).match(line)
    assert match, f"not Istio's TEXT format: {line!r}"
    entry: Entry = {k: (None if v == "-" else v) for k, v in match.groupdict().items()}
    entry["response_flags"] = match["response_flags"]
    for key in _INTEGER_KEYS:
        entry[key] = int(entry[key]) if entry[key] is not None else None
    return entry


def read_log(path: Path, fmt: LogFormat, typed: bool) -> list[Entry]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if fmt is LogFormat.JSON:
        return [orjson.loads(line) for line in lines]
    return [parse_text_line(line, typed) for line in lines]


@dataclass(frozen=True)
class Run:
    """One scenario's output directory, parsed."""

    name: str
    client: list[Entry]
    server: list[Entry]
    result: dict[str, Any]

    @property
    def seen(self) -> dict[str, Any]:
        first: dict[str, Any] = self.result["connections"][0]
        return first


def load_run(directory: Path, fmt: LogFormat) -> Run:
    typed = BY_NAME[directory.name].typed_format
    return Run(
        name=directory.name,
        client=read_log(directory / "client.log", fmt, typed),
        server=read_log(directory / "server.log", fmt, typed),
        result=orjson.loads((directory / "client-result.json").read_bytes()),
    )


def _only(entries: list[Entry]) -> Entry:
    assert len(entries) == 1, f"expected one entry, found {len(entries)}: {entries}"
    return entries[0]


def _pair(run: Run) -> tuple[Entry, Entry]:
    return _only(run.client), _only(run.server)


def _assert_sides(client: Entry, server: Entry) -> None:
    assert client["upstream_cluster"] == CLIENT_CLUSTER
    assert server["upstream_cluster"] in (SERVER_CLUSTER, None)
    assert client["route_name"] == "default"
    assert client["upstream_service_time"] is None
    assert client["upstream_local_address"] == server["downstream_remote_address"]
    assert client["upstream_host"] == server["downstream_local_address"]


def _assert_same_request(client: Entry, server: Entry) -> None:
    _assert_sides(client, server)
    assert client["request_id"] and client["request_id"] == server["request_id"]
    assert server["route_name"] == "default"
    assert client["method"] == server["method"] == "GET"


def _assert_echoed(run: Run) -> None:
    assert run.seen["status"] == 101
    assert run.seen["echoes"][:2] == ["hello", "world"]
    assert run.seen["close_code"] == 1000


def check_h1(run: Run) -> None:
    client, server = _pair(run)
    _assert_same_request(client, server)
    for entry in (client, server):
        assert entry["protocol"] == "HTTP/1.1"
        assert (entry["response_code"], entry["response_flags"]) == (101, "UC")
        assert entry["response_code_details"] == (
            "upstream_reset_after_response_started{connection_termination}"
        )
    assert client["bytes_received"] == server["bytes_received"] > 0
    assert client["bytes_sent"] == server["bytes_sent"] > 0
    _assert_echoed(run)


def _assert_h2_upgraded(client: Entry, server: Entry) -> None:
    _assert_same_request(client, server)
    assert (client["protocol"], client["response_code"]) == ("HTTP/1.1", 101)
    assert client["response_flags"] == "UR"
    assert client["response_code_details"] == (
        "upstream_reset_after_response_started{remote_error_with_CONNECT_request}"
    )
    assert (server["protocol"], server["response_code"]) == ("HTTP/2", 101)
    assert server["response_flags"] == "UC"


def check_h2(run: Run) -> None:
    _assert_h2_upgraded(*_pair(run))
    _assert_echoed(run)


def check_h2_no_allow_connect(run: Run) -> None:
    client, server = _pair(run)
    _assert_sides(client, server)
    assert (client["protocol"], client["response_code"], client["response_flags"]) == (
        "HTTP/1.1",
        503,
        "UC",
    )
    assert client["response_code_details"] == (
        "upstream_reset_before_response_started{connection_termination}"
    )
    assert client["duration"] >= 500
    assert (server["protocol"], server["method"], server["response_code"]) == ("HTTP/2", None, 0)
    assert server["response_flags"] == "DPE"
    assert server["response_code_details"] == "http2.invalid.header.field"
    assert server["request_id"] is None
    assert run.seen["status"] == 503


def check_app_down(run: Run) -> None:
    client = _only(run.client)
    assert (client["response_code"], client["response_flags"]) == (503, "URX")
    assert len(run.server) == 3, "one server entry per attempt (1 + Istio's 2 retries)"
    for server in run.server:
        assert (server["response_code"], server["response_flags"]) == (503, "UF")
        assert server["request_id"] == client["request_id"]
    assert client["upstream_local_address"] == run.server[-1]["downstream_remote_address"]
    assert run.seen["status"] == 503


def check_app_refuses(run: Run) -> None:
    client, server = _pair(run)
    _assert_same_request(client, server)
    for entry in (client, server):
        assert (entry["response_code"], entry["response_code_details"]) == (403, "via_upstream")
    assert run.seen["status"] == 403


def check_app_no_upgrade(run: Run) -> None:
    client, server = _pair(run)
    _assert_same_request(client, server)
    for entry in (client, server):
        assert entry["response_code"] == 200
        assert entry["response_code_details"] == "websocket_handshake_unsuccessful"
    assert run.seen["status"] == 200


def check_app_no_upgrade_h2(run: Run) -> None:
    client, server = _pair(run)
    _assert_same_request(client, server)
    assert (client["response_code"], client["response_code_details"]) == (101, "via_upstream")
    assert (server["protocol"], server["response_code"]) == ("HTTP/2", 200)
    assert server["response_code_details"] == "websocket_handshake_unsuccessful"
    assert run.seen["status"] == 101
    assert run.seen["echoes"] == []


def check_client_drop(run: Run) -> None:
    client, server = _pair(run)
    _assert_same_request(client, server)
    for entry in (client, server):
        assert (entry["response_code"], entry["response_flags"]) == (101, "DC")
        assert entry["response_code_details"] == "downstream_remote_disconnect"
    assert run.seen["echoes"] == ["hello", "world"]
    assert run.seen["close_code"] is None


def check_client_drop_h2(run: Run) -> None:
    client, server = _pair(run)
    _assert_same_request(client, server)
    assert (client["response_code"], client["response_flags"]) == (101, "DC")
    assert client["response_code_details"] == "downstream_remote_disconnect"
    assert (server["protocol"], server["response_code"], server["response_flags"]) == (
        "HTTP/2",
        101,
        "DR",
    )
    assert server["response_code_details"] == "http2.remote_reset"
    assert run.seen["echoes"] == ["hello", "world"]


def _assert_one_stream_over_time(entries: list[Entry]) -> None:
    assert len(entries) >= 3, "start, at least one periodic and an end entry"
    assert len({(e["request_id"], e["start_time"]) for e in entries}) == 1
    first, middle, last = entries[0], entries[1:-1], entries[-1]
    assert (first["response_code"], first["bytes_sent"]) == (0, 0)
    # Written as the stream starts: Envoy measures its duration up to the write, 0 or 1 ms
    # (1 ms seen from real Envoy on a loaded machine).
    assert first["duration"] in (0, 1)
    assert any(e["response_code"] == 101 and e["response_flags"] == "-" for e in middle)
    assert last["response_code"] == 101 and last["response_flags"] in ("UC", "UR")
    durations = [e["duration"] for e in entries]
    assert durations == sorted(durations) and durations[-1] >= 3000
    sent = [e["bytes_sent"] for e in entries]
    assert sent == sorted(sent) and sent[-1] > sent[1]


def check_long_lived(run: Run) -> None:
    for entries in (run.client, run.server):
        _assert_one_stream_over_time(entries)
    assert run.client[0]["request_id"] == run.server[0]["request_id"]
    _assert_echoed(run)


def check_long_lived_typed(run: Run) -> None:
    check_long_lived(run)
    for entries in (run.client, run.server):
        types = [e["access_log_type"] for e in entries]
        assert types[0] == "DownstreamStart" and types[-1] == "DownstreamEnd"
        assert set(types[1:-1]) == {"DownstreamPeriodic"}
    assert run.client[-1]["upstream_protocol"] == "HTTP/2"
    assert run.server[-1]["protocol"] == "HTTP/2"
    assert run.server[-1]["upstream_protocol"] == "HTTP/1.1"


def check_concurrent_h2(run: Run) -> None:
    assert len(run.client) == len(run.server) == 3
    servers = {s["request_id"]: s for s in run.server}
    for client in run.client:
        _assert_h2_upgraded(client, servers[client["request_id"]])
    assert len({c["upstream_local_address"] for c in run.client}) == 1, "one HTTP/2 connection"
    assert len({c["downstream_remote_address"] for c in run.client}) == 3
    assert all(c["status"] == 101 for c in run.result["connections"])


def _assert_through_gateway(gateway: Entry, server: Entry) -> None:
    """The gateway calls the Service's outbound cluster; the server sidecar takes the client's
    address from x-forwarded-for (port 0), not the gateway's connection: only the request id
    joins the two entries."""
    assert gateway["upstream_cluster"] == CLIENT_CLUSTER
    assert gateway["route_name"] is None  # istiod names no route for an unnamed VS route
    assert gateway["authority"] == server["authority"] == f"{GATEWAY_HOST}:8080"
    assert gateway["request_id"] and gateway["request_id"] == server["request_id"]
    assert server["downstream_remote_address"] != gateway["upstream_local_address"]
    assert server["downstream_remote_address"].endswith(":0")
    assert server["x_forwarded_for"] == gateway["x_forwarded_for"] is not None
    assert gateway["upstream_host"] == server["downstream_local_address"]


def check_gateway_h1(run: Run) -> None:
    gateway, server = _pair(run)
    _assert_through_gateway(gateway, server)
    for entry in (gateway, server):
        assert (entry["protocol"], entry["response_code"], entry["response_flags"]) == (
            "HTTP/1.1",
            101,
            "UC",
        )
    _assert_echoed(run)


def check_gateway_h2(run: Run) -> None:
    gateway, server = _pair(run)
    _assert_through_gateway(gateway, server)
    assert (gateway["protocol"], gateway["response_code"], gateway["response_flags"]) == (
        "HTTP/1.1",
        101,
        "UR",
    )
    assert (server["protocol"], server["response_code"]) == ("HTTP/2", 101)
    _assert_echoed(run)


def check_gateway_no_route(run: Run) -> None:
    gateway = _only(run.client)
    assert run.server == []
    assert (gateway["response_code"], gateway["response_flags"]) == (404, "NR")
    assert gateway["response_code_details"] == "route_not_found"
    assert gateway["upstream_cluster"] is None and gateway["upstream_host"] is None
    assert run.seen["status"] == 404


def check_gateway_server_down(run: Run) -> None:
    gateway = _only(run.client)
    assert run.server == []
    assert gateway["upstream_cluster"] == CLIENT_CLUSTER
    assert gateway["response_code"] == 503
    assert set(gateway["response_flags"].split(",")) == {"UF", "URX"}
    assert "Connection_refused" in gateway["upstream_transport_failure_reason"]
    assert run.seen["status"] == 503


def check_app_h2_no_allow_connect(run: Run) -> None:
    """The client sidecar writes the very entry a server sidecar writes for a refused CONNECT."""
    refused = _only(run.client)
    assert run.server == []
    assert (refused["protocol"], refused["response_code"], refused["response_flags"]) == (
        "HTTP/2",
        0,
        "DPE",
    )
    assert refused["response_code_details"] == "http2.invalid.header.field"
    assert refused["method"] is None and refused["request_id"] is None
    assert refused["upstream_cluster"] is None
    assert run.seen["status"] == 503


def _assert_h2_app(client: Entry, server: Entry, mesh_protocol: str) -> None:
    _assert_same_request(client, server)
    assert (client["protocol"], client["response_code"]) == ("HTTP/2", 101)
    assert (server["protocol"], server["response_code"], server["response_flags"]) == (
        mesh_protocol,
        101,
        "UC",
    )


def check_h2_h1(run: Run) -> None:
    client, server = _pair(run)
    _assert_h2_app(client, server, "HTTP/1.1")
    assert client["response_flags"] == "UC"
    _assert_echoed(run)


def check_h2_h2(run: Run) -> None:
    client, server = _pair(run)
    _assert_h2_app(client, server, "HTTP/2")
    assert client["response_flags"] == "UR"
    _assert_echoed(run)


CHECKS: dict[str, Callable[[Run], None]] = {
    "h1": check_h1,
    "h2": check_h2,
    "h2-no-allow-connect": check_h2_no_allow_connect,
    "app-down": check_app_down,
    "app-refuses": check_app_refuses,
    "app-no-upgrade": check_app_no_upgrade,
    "app-no-upgrade-h2": check_app_no_upgrade_h2,
    "client-drop": check_client_drop,
    "client-drop-h2": check_client_drop_h2,
    "long-lived": check_long_lived,
    "long-lived-typed": check_long_lived_typed,
    "concurrent-h2": check_concurrent_h2,
    "gateway-h1": check_gateway_h1,
    "gateway-h2": check_gateway_h2,
    "gateway-no-route": check_gateway_no_route,
    "gateway-server-down": check_gateway_server_down,
    "app-h2-no-allow-connect": check_app_h2_no_allow_connect,
    "h2-h1": check_h2_h1,
    "h2-h2": check_h2_h2,
}

CASES = [(s.name, f) for s in SCENARIOS for f in LogFormat]


def test_every_scenario_has_a_check() -> None:
    assert set(CHECKS) == {s.name for s in SCENARIOS}


@pytest.mark.parametrize(("scenario", "fmt"), CASES, ids=[f"{f}-{s}" for s, f in CASES])
def test_committed_testdata_shows_what_envoy_does(scenario: str, fmt: LogFormat) -> None:
    CHECKS[scenario](load_run(TESTDATA_LAB / fmt / scenario, fmt))


def test_text_parser_rejects_a_line_of_another_format() -> None:
    with pytest.raises(AssertionError, match="not Istio's TEXT format"):
        parse_text_line('[2026-01-01T00:00:00.000Z] "GET / HTTP/1.1" 200 - 0 0 1', typed=False)


@pytest.mark.parametrize(
    ("check", "other"),
    [
        ("h1", "h2"),
        ("h2", "h2-no-allow-connect"),
        ("app-no-upgrade", "app-no-upgrade-h2"),
        ("long-lived-typed", "long-lived"),
        ("concurrent-h2", "h2"),
        ("client-drop-h2", "client-drop"),
        ("client-drop", "h1"),
        ("gateway-h1", "h1"),
        ("gateway-h2", "gateway-h1"),
        ("gateway-no-route", "gateway-server-down"),
        ("app-h2-no-allow-connect", "h2-no-allow-connect"),
        ("h2-h1", "h1"),
        ("h2-h2", "h2"),
    ],
)
def test_a_check_fails_on_another_scenarios_logs(check: str, other: str) -> None:
    run = load_run(TESTDATA_LAB / LogFormat.JSON / other, LogFormat.JSON)
    with pytest.raises((AssertionError, KeyError)):
        CHECKS[check](run)
