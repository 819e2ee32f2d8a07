"""Classify correlated connections: upgrade path, outcome, cause, pairing (DESIGN.md section 2).

Vectorised polars expressions over the rows ``correlate.build_connections`` produces. The
deciding entry is the server sidecar's when it saw a non-upgrade (it is closest to the app: a
client sidecar shows 101 even when the app answered 200 over an HTTP/2 hop), else the client's.
"""

from __future__ import annotations

import polars as pl

from analyzer import naming
from analyzer.schema import CONNECTION_SCHEMA, conform
from analyzer.vocab import Cause, Outcome, Pairing, UpgradePath

C = pl.col("client")
S = pl.col("server")

# Response flags -> cause, first match wins (Envoy's flags, comma-separated in the log).
FLAG_CAUSES: tuple[tuple[tuple[str, ...], Cause], ...] = (
    (("UF",), Cause.UPSTREAM_CONNECT_FAILURE),
    (("UH",), Cause.NO_HEALTHY_UPSTREAM),
    (("NR", "NC"), Cause.NO_ROUTE),
    (("UT", "SI"), Cause.UPSTREAM_TIMEOUT),
    (("DC", "DR"), Cause.DOWNSTREAM_DISCONNECT),
    (("UC", "UR", "UPE", "LR", "UMSDR"), Cause.UPSTREAM_RESET),
    (("URX",), Cause.UPSTREAM_CONNECT_FAILURE),
)


def _field(side: pl.Expr, name: str) -> pl.Expr:
    return side.struct.field(name)


def has_flag(flags: pl.Expr, *names: str) -> pl.Expr:
    pattern = "(^|,)(" + "|".join(names) + ")(,|$)"
    return flags.fill_null("").str.contains(pattern)


def _hop(protocol: pl.Expr) -> pl.Expr:
    return (
        pl.when(protocol.str.starts_with("HTTP/1"))
        .then(pl.lit("h1"))
        .when(protocol.is_in(["HTTP/2", "HTTP/3"]))
        .then(pl.lit("h2"))
    )


def upgrade_path() -> pl.Expr:
    """``<app-to-client-sidecar>-<sidecar-to-sidecar>``. The mesh hop is the server entry's
    downstream protocol, or the client's %UPSTREAM_PROTOCOL%; a server-only connection's first
    hop is taken as h1 (WebSocket clients speak HTTP/1.1)."""
    mesh = _hop(pl.coalesce(_field(S, "protocol"), _field(C, "upstream_protocol")))
    app = pl.coalesce(_hop(_field(C, "protocol")), pl.when(C.is_null()).then(pl.lit("h1")))
    joined = pl.concat_str(app, mesh, separator="-")
    return pl.coalesce(joined, pl.lit(UpgradePath.UNKNOWN.value))


def _upgraded(side: pl.Expr) -> pl.Expr:
    return _field(side, "response_code") == 101


def _present(side: pl.Expr) -> pl.Expr:
    return _field(side, "source").is_not_null()


def _deciding() -> pl.Expr:
    return pl.when(_present(S) & ~_upgraded(S)).then(S).otherwise(C)


def _connect_rejected() -> pl.Expr:
    server_sig = (
        (_field(S, "protocol") == "HTTP/2")
        & has_flag(_field(S, "response_flags"), "DPE")
        & (_field(S, "response_code").fill_null(0) == 0)
    )
    client_sig = (
        ~_present(S)
        & (_field(C, "upstream_protocol") == "HTTP/2")
        & (_field(C, "response_code") == 503)
        & _field(C, "response_code_details").str.starts_with(
            "upstream_reset_before_response_started"
        )
    )
    return server_sig.fill_null(False) | client_sig.fill_null(False)


def _flag_cause(flags: pl.Expr) -> pl.Expr:
    expr = pl.lit(Cause.OTHER.value)
    for names, cause in reversed(FLAG_CAUSES):
        expr = pl.when(has_flag(flags, *names)).then(pl.lit(cause.value)).otherwise(expr)
    return expr


def outcome_and_cause() -> tuple[pl.Expr, pl.Expr]:
    deciding = _deciding()
    code = _field(deciding, "response_code").fill_null(0)
    flags = _field(deciding, "response_flags")
    details = _field(deciding, "response_code_details").fill_null("")
    handshake = (
        _field(C, "response_code_details") == "websocket_handshake_unsuccessful"
    ).fill_null(False) | (
        _field(S, "response_code_details") == "websocket_handshake_unsuccessful"
    ).fill_null(False)
    from_app = (details == "via_upstream") & flags.is_null() & (code > 0)
    upgraded = (
        (~_present(C) | _upgraded(C)).fill_null(True)
        & (~_present(S) | _upgraded(S)).fill_null(True)
        & (_upgraded(C).fill_null(False) | _upgraded(S).fill_null(False))
    )
    cause = (
        pl.when(~pl.col("has_final") | upgraded)
        .then(pl.lit(Cause.NONE.value))
        .when(_connect_rejected())
        .then(pl.lit(Cause.H2_CONNECT_NOT_ALLOWED.value))
        .when(handshake | (from_app & (code < 400)))
        .then(pl.lit(Cause.APP_DID_NOT_UPGRADE.value))
        .when(from_app)
        .then(pl.lit(Cause.APP_REFUSED.value))
        .otherwise(_flag_cause(flags))
    )
    rejected = cause.is_in([Cause.APP_DID_NOT_UPGRADE.value, Cause.APP_REFUSED.value])
    outcome = (
        pl.when(~pl.col("has_final"))
        .then(pl.lit(Outcome.OPEN.value))
        .when(upgraded)
        .then(pl.lit(Outcome.UPGRADED.value))
        .when(rejected)
        .then(pl.lit(Outcome.REJECTED.value))
        .otherwise(pl.lit(Outcome.FAILED.value))
    )
    return outcome, cause


def pairing() -> pl.Expr:
    return (
        pl.when(_present(C) & _present(S))
        .then(pl.lit(Pairing.PAIRED.value))
        .when(_present(C))
        .then(pl.lit(Pairing.CLIENT_ONLY.value))
        .otherwise(pl.lit(Pairing.SERVER_ONLY.value))
    )


def _main_side(name: str) -> pl.Expr:
    """A figure from the client side's final entry, or the server's when client-only."""
    return pl.coalesce(_field(C, name), _field(S, name))


def classify(rows: pl.DataFrame, *, keep_query: bool = False) -> pl.DataFrame:
    """Turn correlated rows into CONNECTION_SCHEMA connections."""
    rows = rows.with_columns(
        client=pl.when(_present(C)).then(C),
        server=pl.when(_present(S)).then(S),
    )
    outcome, cause = outcome_and_cause()
    service = naming.destination_service()
    path = pl.col("path") if keep_query else naming.strip_query(pl.col("path"))
    out = rows.with_columns(
        destination_service=service,
        destination_namespace=pl.coalesce(
            naming.service_namespace(service), naming.source_namespace(pl.col("server_source"))
        ),
        source_workload=naming.source_workload(pl.col("client_source")),
        source_namespace=naming.source_namespace(pl.col("client_source")),
        path=path,
        upgrade_path=upgrade_path(),
        outcome=outcome,
        cause=cause,
        pairing=pairing(),
        start_time=_main_side("start_time"),
        duration_ms=_main_side("duration_ms"),
        bytes_sent=_main_side("bytes_sent"),
        bytes_received=_main_side("bytes_received"),
        response_code=_main_side("response_code"),
        attempts=pl.col("server_streams"),
    )
    return conform(out, CONNECTION_SCHEMA)


def websocket_paths(connections: pl.DataFrame) -> pl.DataFrame:
    """(destination_service, path) pairs that showed WebSocket evidence."""
    return (
        connections.filter(pl.col("evidence").is_not_null())
        .select("destination_service", "path")
        .unique()
    )


def select_websockets(
    connections: pl.DataFrame, ws_paths: pl.DataFrame, *, include_all: bool = False
) -> pl.DataFrame:
    """Keep the WebSocket candidates: own evidence, or a destination and path that showed
    evidence elsewhere in the input (marked ``path``); ``include_all`` keeps every HTTP one."""
    marked = ws_paths.with_columns(pl.lit("path").alias("_by_path"))
    joined = connections.join(
        marked, on=["destination_service", "path"], how="left", nulls_equal=True
    )
    evidence = pl.coalesce("evidence", "_by_path")
    if include_all:
        evidence = pl.coalesce(evidence, pl.lit("all"))
    return (
        joined.with_columns(evidence=evidence)
        .filter(pl.col("evidence").is_not_null())
        .select(list(CONNECTION_SCHEMA))
    )
