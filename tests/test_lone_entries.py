"""What wslog concludes from one entry alone: edge and local replies keep their
code, flags and times; the app's own answer is told from a mesh failure even without
%RESPONSE_CODE_DETAILS%; the destination comes from what the mesh named. Lines are built in the
layouts of public istio-proxy lines (their threads cited beside each), with wslog's own values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analyzer.cli import AnalysisOptions, analyze_paths
from analyzer.report import failures
from analyzer.vocab import LineResult
from tests.conftest import TESTDATA

TS = "2020-11-22T20:04:32.765Z"
# Istio 1.7 TEXT, server sidecar, Istio < 1.10 inbound cluster, the client sent an IP authority
# (layout of istio/istio#29109): the app answered 500 itself.
INBOUND_500 = (
    f'[{TS}] "GET /products HTTP/1.1" 500 - "-" "-" 0 122 11939 11933 "-" "PostmanRuntime/7.26.8" '
    '"5d1e0f2a-0000-4000-8000-000000000001" "172.17.0.2:30164" "127.0.0.1:8080" '
    "inbound|8080|http-8080|shop.default.svc.cluster.local 127.0.0.1:52034 172.18.0.10:8080 "
    "172.18.0.1:37035 - default"
)
# Istio 1.9+ TEXT, an ingress gateway with no route for the host (NR, no cluster).
GATEWAY_NR = (
    f'[{TS}] "GET /ws HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "10.0.0.1" "curl/7.79.1" '
    '"5d1e0f2a-0000-4000-8000-000000000002" "unknown.example.org" "-" - - 10.244.0.6:8080 '
    "10.0.0.1:55662 - -"
)
# Envoy's default format at an edge Envoy: a local 403 (no upstream host, no flags).
EDGE_403 = (
    f'[{TS}] "GET /ws HTTP/1.1" 403 - 0 19 0 - "-" "curl/7.79.1" '
    '"5d1e0f2a-0000-4000-8000-000000000003" "edge.example.org" "-"'
)
# Envoy's default format: the app answered 200 without upgrading.
EDGE_200 = (
    f'[{TS}] "GET /ws HTTP/1.1" 200 - 0 12 3 2 "-" "curl/7.79.1" '
    '"5d1e0f2a-0000-4000-8000-000000000004" "edge.example.org" "10.1.2.3:8080"'
)


def analyse(tmp_path: Path, name: str, *lines: str) -> list[dict[str, Any]]:
    log = tmp_path / name
    log.write_text("".join(f"{line}\n" for line in lines))
    result = analyze_paths([str(log)], AnalysisOptions(include_all=True, strict=True))
    assert result.lines[LineResult.ENTRY] == len(lines)
    return result.connections.to_dicts()


def test_an_inbound_500_without_details_is_the_app_refusing_named_by_its_cluster(
    tmp_path: Path,
) -> None:
    (conn,) = analyse(tmp_path, "shop-7d9f8c6b5-x2x4z.log", INBOUND_500)
    assert (conn["outcome"], conn["cause"], conn["pairing"]) == (
        "rejected",
        "app-refused",
        "server-only",
    )
    assert conn["destination_service"] == "shop.default.svc.cluster.local"
    assert conn["response_code"] == 500 and conn["start_time"] is not None
    assert conn["server"]["upstream_host"] == "127.0.0.1:8080"


@pytest.mark.parametrize(
    ("name", "line", "side", "outcome", "cause", "code"),
    [
        (
            "istio-ingressgateway-5c9d7b8f4-abcde.log",
            GATEWAY_NR,
            "client",
            "failed",
            "no-route",
            404,
        ),
        ("edge.log", EDGE_403, "unsided", "failed", "other", 403),
        ("edge.log", EDGE_200, "unsided", "rejected", "app-did-not-upgrade", 200),
    ],
)
def test_a_lone_entry_keeps_its_code_flags_and_times(
    tmp_path: Path, name: str, line: str, side: str, outcome: str, cause: str, code: int
) -> None:
    (conn,) = analyse(tmp_path, name, line)
    assert (conn["outcome"], conn["cause"], conn["response_code"]) == (outcome, cause, code)
    assert conn["start_time"] is not None and conn["duration_ms"] is not None
    assert conn[side] is not None and conn[side]["response_code"] == code
    assert conn["client"] is not None or conn["server"] is not None or conn["unsided"] is not None


def test_the_mtls_sni_names_the_destination_when_the_cluster_does_not(tmp_path: Path) -> None:
    line = INBOUND_500.replace(
        "inbound|8080|http-8080|shop.default.svc.cluster.local", "inbound|8080||"
    )
    line = line.replace(" - default", " outbound_.8080_._.shop.default.svc.cluster.local default")
    (conn,) = analyse(tmp_path, "shop.log", line)
    assert conn["destination_service"] == "shop.default.svc.cluster.local"


def _failure(tmp_path: Path, name: str, *lines: str) -> dict[str, object]:
    log = tmp_path / name
    log.write_text("".join(f"{line}\n" for line in lines))
    (record,) = failures(analyze_paths([str(log)], AnalysisOptions(include_all=True)).connections)
    return record


def test_a_tls_failure_at_the_client_sidecar_is_explained_as_tls(tmp_path: Path) -> None:
    """docs-csm's 503 UF,URX "TLS error: Secret is not supplied by SDS" (Istio 1.8 TEXT)."""
    lines = (TESTDATA / "real-world" / "cray-hpe-docs-csm-installation-failure.log").read_text()
    record = _failure(tmp_path, "keycloak-client.log", *lines.splitlines())
    assert (record["cause"], record["reported_by"], record["transport_failure"]) == (
        "upstream-connect-failure",
        "client",
        "tls",
    )
    assert "TLS handshake" in str(record["explanation"])
    assert "application" not in str(record["explanation"])


def test_retries_exhausted_at_the_client_alone_point_at_the_server_sidecars_log(
    tmp_path: Path,
) -> None:
    """The lab's app-down, client log only: 503 URX via_upstream, no UF on this side."""
    client = (TESTDATA / "lab" / "json" / "app-down" / "client.log").read_text().splitlines()
    record = _failure(tmp_path, "client.log", *client)
    assert (record["cause"], record["reported_by"]) == ("upstream-connect-failure", "client")
    assert "retries exhausted" in str(record["explanation"])
    assert "server pod's istio-proxy log" in str(record["remedy"])


def test_a_gateways_no_route_names_the_gateways_virtualservice(tmp_path: Path) -> None:
    record = _failure(tmp_path, "istio-ingressgateway-5c9d7b8f4-abcde.log", GATEWAY_NR)
    assert (record["cause"], record["reported_by"]) == ("no-route", "gateway")
    assert "Gateway" in str(record["explanation"])
