"""Correlation and classification rules on entries built in the shape docs/design.md section 1
measured. The same rules run on the lab's real Envoy logs in tests/test_analyze_lab.py; these
cases pin the corners the lab cannot stage (masked addresses, shared request ids, skew,
chunking, the size cap) and the schema correlation hands classification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from analyzer import side
from analyzer.classify import classify
from analyzer.correlate import CorrelationSettings, Correlator
from analyzer.schema import CORRELATED_SCHEMA, ENTRY_SCHEMA, conform

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
CLUSTER = "outbound|8080||websockets-server.default.svc.cluster.local"
AUTHORITY = "websockets-server.default.svc.cluster.local:8080"


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


def client(rid: str | None, at: timedelta, **kw: Any) -> dict[str, Any]:
    entry = {
        "source": "default/websockets-client-sleep-5d8f7c9b4d-abcde",
        "start_time": T0 + at,
        "method": "GET",
        "path": "/chat?token=secret",
        "protocol": "HTTP/1.1",
        "authority": AUTHORITY,
        "request_id": rid,
        "upstream_cluster": CLUSTER,
        "upstream_host": "10.0.0.2:80",
        "upstream_local_address": "10.0.0.1:40000",
        "response_code": 101,
        "response_flags": "UC",
        "response_code_details": "via_upstream",
        "duration_ms": 2000,
        "bytes_sent": 23,
        "bytes_received": 30,
    }
    return entry | kw


def server(rid: str | None, at: timedelta, **kw: Any) -> dict[str, Any]:
    entry = {
        "source": "default/websockets-server-7c9d8b6f5d-x2x9k",
        "start_time": T0 + at,
        "method": "GET",
        "path": "/chat?token=secret",
        "protocol": "HTTP/1.1",
        "authority": AUTHORITY,
        "request_id": rid,
        "upstream_cluster": "inbound|80||",
        "upstream_host": "10.0.0.2:80",
        "downstream_local_address": "10.0.0.2:80",
        "downstream_remote_address": "10.0.0.1:40000",
        "response_code": 101,
        "response_flags": "UC",
        "response_code_details": "via_upstream",
        "duration_ms": 1999,
        "bytes_sent": 30,
        "bytes_received": 23,
    }
    return entry | kw


def entries(rows: list[dict[str, Any]]) -> pl.DataFrame:
    for line_no, row in enumerate(rows, 1):
        row.setdefault("line_no", line_no)
    return conform(pl.DataFrame(rows, infer_schema_length=None), ENTRY_SCHEMA)


def analyse(rows: list[dict[str, Any]], chunk: int = 0, **settings: Any) -> pl.DataFrame:
    correlator = Correlator(CorrelationSettings(**settings))
    frame = entries(rows)
    size = chunk or max(frame.height, 1)
    out = [correlator.feed(frame.slice(i, size)).connections for i in range(0, frame.height, size)]
    out.append(correlator.flush().connections)
    return classify(pl.concat(out)).sort("start_time")


def dpe_server(at: timedelta, peer: str = "10.0.0.1:40000") -> dict[str, Any]:
    return server(
        None,
        at,
        method=None,
        path=None,
        protocol="HTTP/2",
        response_code=0,
        response_flags="DPE",
        response_code_details="http2.invalid.header.field",
        upstream_cluster=None,
        upstream_host=None,
        downstream_remote_address=peer,
        duration_ms=0,
    )


def rejected_client(rid: str, at: timedelta) -> dict[str, Any]:
    return client(
        rid,
        at,
        response_code=503,
        response_code_details="upstream_reset_before_response_started{connection_termination}",
        duration_ms=1000,
        bytes_sent=95,
        bytes_received=0,
    )


def test_paired_h1_connection_is_upgraded_with_client_figures_and_no_query() -> None:
    conns = analyse([client("r1", ms(0)), server("r1", ms(1))])
    row = conns.row(0, named=True)
    assert (row["upgrade_path"], row["outcome"], row["cause"], row["pairing"]) == (
        "h1-h1",
        "upgraded",
        "",
        "paired",
    )
    assert (row["bytes_sent"], row["bytes_received"], row["duration_ms"]) == (23, 30, 2000)
    assert row["path"] == "/chat"
    assert row["destination_service"] == "websockets-server.default.svc.cluster.local"
    assert row["destination_namespace"] == "default"
    assert row["source_workload"] == "websockets-client-sleep"
    assert row["source_namespace"] == "default"


def test_server_protocol_decides_the_mesh_hop() -> None:
    conns = analyse(
        [client("r1", ms(0), response_flags="UR"), server("r1", ms(1), protocol="HTTP/2")]
    )
    assert conns.get_column("upgrade_path").to_list() == ["h1-h2"]
    assert conns.get_column("outcome").to_list() == ["upgraded"]


def test_dpe_server_entry_pairs_by_address_and_time() -> None:
    conns = analyse([rejected_client("r2", ms(0)), dpe_server(ms(1))])
    assert conns.height == 1
    row = conns.row(0, named=True)
    assert (row["pairing"], row["outcome"], row["cause"], row["upgrade_path"]) == (
        "paired",
        "failed",
        "h2-connect-not-allowed",
        "h1-h2",
    )
    assert row["response_code"] == 503


def test_masked_addresses_still_pair() -> None:
    conns = analyse([rejected_client("r2", ms(0)), dpe_server(ms(2), peer="10.0.**.**:40000")])
    assert conns.get_column("pairing").to_list() == ["paired"]


def test_dpe_entries_on_one_h2_connection_pair_with_the_closest_client() -> None:
    rows = [rejected_client(f"r{i}", ms(100 * i)) for i in range(3)]
    rows += [dpe_server(ms(100 * i + 1)) for i in range(3)]
    conns = analyse(rows)
    assert conns.height == 3
    assert set(conns.get_column("pairing")) == {"paired"}
    assert set(conns.get_column("cause")) == {"h2-connect-not-allowed"}


def test_dpe_entry_too_late_for_its_client_stays_unpaired() -> None:
    conns = analyse([rejected_client("r2", ms(0)), dpe_server(ms(50))], clock_skew=ms(10))
    # Without its client the refused CONNECT has no side: a client sidecar writes the same entry
    # when its app speaks HTTP/2 (lab scenario app-h2-no-allow-connect).
    assert sorted(conns.get_column("pairing")) == ["client-only", "unpaired"]


def test_clock_skew_within_tolerance_still_pairs() -> None:
    conns = analyse([rejected_client("r2", ms(0)), dpe_server(ms(-400))], clock_skew=ms(500))
    assert conns.get_column("pairing").to_list() == ["paired"]


def test_retry_attempts_merge_into_one_connection() -> None:
    failure = {"response_code": 503, "response_flags": "UF", "duration_ms": 0}
    rows = [
        client("r3", ms(0), response_code=503, response_flags="URX", duration_ms=60),
        server("r3", ms(1), **failure),
        server("r3", ms(26), **failure),
        server("r3", ms(55), **failure),
    ]
    conns = analyse(rows)
    assert conns.height == 1
    row = conns.row(0, named=True)
    assert (row["attempts"], row["outcome"], row["cause"]) == (
        3,
        "failed",
        "upstream-connect-failure",
    )


def test_periodic_entries_merge_into_one_connection_without_summing() -> None:
    typed = [
        client(
            "r4",
            ms(0),
            access_log_type="DownstreamStart",
            response_code=0,
            response_flags=None,
            duration_ms=None,
            bytes_sent=0,
        ),
        client(
            "r4",
            ms(0),
            access_log_type="DownstreamPeriodic",
            response_flags=None,
            duration_ms=1000,
            bytes_sent=10,
        ),
        client("r4", ms(0), access_log_type="DownstreamEnd", duration_ms=3000, bytes_sent=40),
        server("r4", ms(1), duration_ms=2999),
    ]
    conns = analyse(typed)
    assert conns.height == 1
    row = conns.row(0, named=True)
    assert (row["bytes_sent"], row["duration_ms"], row["outcome"]) == (40, 3000, "upgraded")


def test_untyped_flag_free_101_is_an_open_connection_until_its_end() -> None:
    periodic = client("r5", ms(0), response_flags=None, duration_ms=1000, bytes_sent=10)
    conns = analyse([periodic])
    assert conns.get_column("outcome").to_list() == ["open"]
    conns = analyse([periodic, client("r5", ms(0), duration_ms=5000, bytes_sent=99)])
    assert conns.height == 1
    assert conns.row(0, named=True)["bytes_sent"] == 99


def test_shared_request_id_splits_by_client_start_time() -> None:
    rows = [
        client("same", ms(0)),
        server("same", ms(1)),
        client("same", ms(5000), response_code=403, response_flags=None, duration_ms=3),
        server("same", ms(5001), response_code=403, response_flags=None, duration_ms=2),
    ]
    conns = analyse(rows)
    assert conns.get_column("outcome").to_list() == ["upgraded", "rejected"]
    assert conns.get_column("cause").to_list() == ["", "app-refused"]
    assert set(conns.get_column("pairing")) == {"paired"}


@pytest.mark.parametrize(
    ("client_kw", "server_kw", "expected"),
    [
        (
            {"response_code": 403, "response_flags": None},
            {"response_code": 403, "response_flags": None},
            ("rejected", "app-refused"),
        ),
        (
            {
                "response_code": 200,
                "response_flags": None,
                "response_code_details": "websocket_handshake_unsuccessful",
            },
            {
                "response_code": 200,
                "response_flags": None,
                "response_code_details": "websocket_handshake_unsuccessful",
            },
            ("rejected", "app-did-not-upgrade"),
        ),
        # On an HTTP/2 hop the client sidecar reports 101 although the app answered 200.
        (
            {},
            {
                "protocol": "HTTP/2",
                "response_code": 200,
                "response_flags": None,
                "response_code_details": "websocket_handshake_unsuccessful",
            },
            ("rejected", "app-did-not-upgrade"),
        ),
        ({"response_flags": "DC"}, {}, ("upgraded", "")),
        (
            {
                "response_code": 0,
                "response_flags": "DC",
                "response_code_details": "downstream_remote_disconnect",
            },
            {"response_code": 0, "response_flags": "DC"},
            ("failed", "downstream-disconnect"),
        ),
        (
            {
                "response_code": 503,
                "response_flags": "UH",
                "response_code_details": "no_healthy_upstream",
            },
            {},
            ("failed", "no-healthy-upstream"),
        ),
        ({"response_code": 504, "response_flags": "UT"}, {}, ("failed", "upstream-timeout")),
        ({"response_code": 404, "response_flags": "NR"}, {}, ("failed", "no-route")),
        ({"response_code": 500, "response_flags": "ZZ"}, {}, ("failed", "other")),
    ],
)
def test_outcome_and_cause(
    client_kw: dict[str, Any], server_kw: dict[str, Any], expected: tuple[str, str]
) -> None:
    rows = [client("r", ms(0), **client_kw)]
    if server_kw:
        rows.append(server("r", ms(1), **server_kw))
    conns = analyse(rows)
    assert conns.height == 1
    assert (conns.item(0, "outcome"), conns.item(0, "cause")) == expected


@pytest.mark.parametrize(
    ("flags", "details", "no_route"),
    [
        ("NR", None, True),
        ("UF,NR", None, True),
        ("NC,URX", None, True),
        ("DC,NC", None, True),
        ("NRX", None, False),  # a flag that only starts like NR
        ("XNR", None, False),
        ("UF", None, False),
        (None, None, False),
        ("", None, False),
        (None, "route_not_found", True),
        ("-", "cluster_not_found", True),
        ("UF", "via_upstream", False),
    ],
)
def test_no_route_reads_whole_flags_and_the_details(
    flags: str | None, details: str | None, no_route: bool
) -> None:
    entry = pl.DataFrame(
        {"response_flags": [flags], "response_code_details": [details]},
        schema={"response_flags": pl.String, "response_code_details": pl.String},
    )
    assert entry.select(side.no_route()).item() is no_route


def test_entries_without_a_cluster_take_their_sources_side() -> None:
    rows = [client("a", ms(0)), client("b", ms(100), upstream_cluster=None), server("b", ms(101))]
    conns = analyse(rows)
    assert conns.filter(pl.col("request_id") == "b").item(0, "pairing") == "paired"


def test_window_releases_paired_connections_once_the_watermark_passes() -> None:
    correlator = Correlator(CorrelationSettings(window=timedelta(seconds=5)))
    first = correlator.feed(entries([client("r1", ms(0)), server("r1", ms(1))]))
    assert first.connections.height == 0
    assert correlator.pending == 2
    later = correlator.feed(entries([client("r2", timedelta(seconds=10))]))
    assert later.connections.height == 1
    assert correlator.pending == 1


def test_request_ids_are_remembered_only_while_their_connections_wait() -> None:
    # The exporter correlates forever: an id is kept (as its group's key) while an entry of
    # it is pending, then forgotten; a later entry of the same id pairs with nothing released.
    correlator = Correlator(CorrelationSettings(window=timedelta(seconds=5)))
    released = 0
    for step in range(30):
        at = timedelta(seconds=step)
        rows = [client(f"r{step}-{i}", at + ms(i)) for i in range(20)]
        rows += [server(f"r{step}-{i}", at + ms(i + 1)) for i in range(20)]
        released += correlator.feed(entries(rows)).connections.height
        assert correlator.request_ids <= 20 * 7  # about a window's worth of seconds
    assert released > 20 * 20
    correlator.feed(entries([server("r0-0", timedelta(seconds=31))]))
    flushed = correlator.flush().connections.filter(pl.col("request_id") == "r0-0")
    assert correlator.request_ids == 0
    assert flushed.height == 1
    assert flushed.item(0, "client") is None  # its client was released long ago


def test_size_cap_evicts_the_oldest_connections_and_counts_them() -> None:
    correlator = Correlator(CorrelationSettings(max_pending=2))
    rows = [client(f"r{i}", ms(i)) for i in range(5)]
    released = correlator.feed(entries(rows))
    assert correlator.pending == 2
    assert released.connections.height == 3
    assert released.early.equals(released.connections)


def test_results_do_not_depend_on_chunking_or_file_order() -> None:
    rows = [client(f"r{i}", ms(300 * i)) for i in range(6)]
    rows += [server(f"r{i}", ms(300 * i + 1)) for i in range(6)]
    rows += [rejected_client("x", ms(5000)), dpe_server(ms(5001))]
    whole = analyse(rows).drop("client", "server")
    for chunk in (1, 3, 5):
        assert analyse(rows, chunk=chunk).drop("client", "server").equals(whole)
    assert analyse(rows[::-1]).drop("client", "server").equals(whole)


def correlated(rows: list[dict[str, Any]]) -> list[pl.DataFrame]:
    """What a correlator hands on for ``rows``: the open connections, then every release."""
    correlator = Correlator(CorrelationSettings())
    released = correlator.feed(entries(rows))
    return [correlator.open_rows(), released.connections, correlator.flush().connections]


MIXED = [
    client("r1", ms(0)),
    server("r1", ms(1)),
    rejected_client("r2", ms(100)),
    dpe_server(ms(101)),
    dpe_server(ms(9000), peer="10.9.9.9:1") | {"source": "-"},  # alone, from stdin: unsided
    client("r3", ms(200), response_flags=None, duration_ms=100),  # periodic: open
]


def test_correlation_hands_classification_exactly_the_correlated_schema() -> None:
    frames = correlated(MIXED)
    pairings = set(classify(pl.concat(frames)).get_column("pairing"))
    assert pairings == {"paired", "client-only", "unpaired"}
    for frame in frames:
        assert frame.schema == pl.Schema(CORRELATED_SCHEMA)


def test_classification_reads_nothing_beyond_the_correlated_schema() -> None:
    rows = pl.concat(correlated(MIXED))
    # Columns a classifier might be tempted to read, holding values that would change verdicts.
    decoys = rows.with_columns(
        s_protocol=pl.lit("HTTP/2"),
        c_source=pl.lit(None, pl.String),
        response_code=pl.lit(101),
        pairing=pl.lit("paired"),
        outcome=pl.lit("upgraded"),
    )
    assert classify(decoys).equals(classify(rows))
