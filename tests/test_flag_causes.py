"""Every response flag ``classify.FLAG_CAUSES`` knows, on the entry Envoy writes with it before
the upgrade, through correlation and classification: the cause it names.

Codes and details are the ones Envoy's router writes with each flag; the lab captures
(testdata/lab/json) show UF, URX, NR, UC, DC and DR as Envoy 1.40 wrote them. After a 101 the
same close flags (``UC``/``UR``/``DC``) end an upgraded WebSocket: success, not a cause.
"""

from __future__ import annotations

from typing import Any

import pytest

from analyzer.classify import FLAG_CAUSES
from analyzer.vocab import Cause, Outcome
from tests.test_correlate import analyse, client, ms, server

RESET = "upstream_reset_before_response_started"
REFUSED = f"{RESET}{{remote_connection_failure|delayed_connect_error:_Connection_refused}}"


def client_alone(code: int, flags: str, details: str | None, **kw: Any) -> list[dict[str, Any]]:
    """A client sidecar's entry whose server sidecar wrote nothing (it never got the request)."""
    return [
        client(
            "r",
            ms(0),
            response_code=code,
            response_flags=flags,
            response_code_details=details,
            bytes_received=0,
            duration_ms=12,
            **kw,
        )
    ]


def no_upstream(code: int, flags: str, details: str) -> list[dict[str, Any]]:
    """The client sidecar answered itself: no cluster, or no host in it."""
    return client_alone(code, flags, details, upstream_host=None, upstream_local_address=None)


def no_route(code: int, flags: str, details: str) -> list[dict[str, Any]]:
    rows = no_upstream(code, flags, details)
    return [rows[0] | {"upstream_cluster": None}]


def server_failed(flags: str, details: str, **kw: Any) -> list[dict[str, Any]]:
    """The server sidecar's entry decides: it is closest to the app."""
    return [
        client("r", ms(0), response_code=503, response_flags="URX", duration_ms=60),
        server("r", ms(1), response_flags=flags, response_code_details=details, **kw),
    ]


# flag -> (the connection's entries, the cause)
CASES: dict[str, tuple[list[dict[str, Any]], Cause]] = {
    # lab app-down: the server sidecar cannot reach the app, one UF entry per attempt
    "UF": (server_failed("UF", REFUSED, response_code=503), Cause.UPSTREAM_CONNECT_FAILURE),
    # lab app-down, the client sidecar's side: retries exhausted on the server's 503s
    "URX": (client_alone(503, "URX", "via_upstream"), Cause.UPSTREAM_CONNECT_FAILURE),
    "UH": (no_upstream(503, "UH", "no_healthy_upstream"), Cause.NO_HEALTHY_UPSTREAM),
    # lab gateway-no-route: the gateway found no route, no cluster
    "NR": (no_route(404, "NR", "route_not_found"), Cause.NO_ROUTE),
    "NC": (no_route(503, "NC", "cluster_not_found"), Cause.NO_ROUTE),
    "UT": (client_alone(504, "UT", "upstream_response_timeout"), Cause.UPSTREAM_TIMEOUT),
    "SI": (client_alone(408, "SI", "stream_idle_timeout"), Cause.UPSTREAM_TIMEOUT),
    # lab client-drop writes DC with the 101; before it there is no response code
    "DC": (client_alone(0, "DC", "downstream_remote_disconnect"), Cause.DOWNSTREAM_DISCONNECT),
    # lab client-drop-h2: the server sidecar on an HTTP/2 hop sees the stream reset (DR)
    "DR": (
        [
            client("r", ms(0), response_code=0, response_flags="DC", duration_ms=5),
            server(
                "r",
                ms(1),
                protocol="HTTP/2",
                response_code=0,
                response_flags="DR",
                response_code_details="http2.remote_reset",
            ),
        ],
        Cause.DOWNSTREAM_DISCONNECT,
    ),
    # lab h2-no-allow-connect's client entry: alone, and without %UPSTREAM_PROTOCOL%, it
    # cannot tell a refused extended CONNECT from any upstream that closed before answering
    "UC": (
        client_alone(503, "UC", f"{RESET}{{connection_termination}}"),
        Cause.UPSTREAM_RESET,
    ),
    "UR": (client_alone(503, "UR", f"{RESET}{{remote_reset}}"), Cause.UPSTREAM_RESET),
    "UPE": (client_alone(502, "UPE", f"{RESET}{{protocol_error}}"), Cause.UPSTREAM_RESET),
    "LR": (client_alone(503, "LR", f"{RESET}{{local_reset}}"), Cause.UPSTREAM_RESET),
    "UMSDR": (
        client_alone(408, "UMSDR", "upstream_max_stream_duration_reached"),
        Cause.UPSTREAM_RESET,
    ),
}


def test_every_flag_of_the_table_has_a_case() -> None:
    assert set(CASES) == {flag for flags, _ in FLAG_CAUSES for flag in flags}


@pytest.mark.parametrize("flag", sorted(CASES))
def test_a_flag_before_the_upgrade_names_its_cause(flag: str) -> None:
    rows, cause = CASES[flag]
    conns = analyse(rows)
    assert conns.height == 1
    assert (conns.item(0, "outcome"), conns.item(0, "cause")) == (Outcome.FAILED, cause)


def test_flags_listed_together_name_the_cause_of_the_first_row_they_match() -> None:
    # testdata/real-world: a client sidecar's 503 UF,URX (TLS to the server failed, retried)
    conns = analyse(client_alone(503, "UF,URX", f"{RESET}{{connection_failure}}"))
    assert conns.item(0, "cause") == Cause.UPSTREAM_CONNECT_FAILURE
    conns = analyse(client_alone(504, "UT,URX", "upstream_per_try_timeout"))
    assert conns.item(0, "cause") == Cause.UPSTREAM_TIMEOUT


@pytest.mark.parametrize("flag", ["UC", "UR", "DC"])
def test_the_same_flags_closing_an_upgraded_websocket_are_success(flag: str) -> None:
    conns = analyse([client("r", ms(0), response_flags=flag), server("r", ms(1))])
    assert (conns.item(0, "outcome"), conns.item(0, "cause")) == (Outcome.UPGRADED, Cause.NONE)
