"""Per-entry facts the correlator and the classifier rely on (DESIGN.md section 1).

Which side of the mesh wrote an entry, when it ends, whether it is a connection's final entry
or a start/periodic one, whether it is HTTP, and what WebSocket evidence it carries: polars
expressions over ENTRY_SCHEMA columns, computed once per entry.
"""

from __future__ import annotations

import polars as pl

from analyzer.vocab import Side

NOT_FINAL_TYPES = (
    "DownstreamStart",
    "DownstreamPeriodic",
    "DownstreamTunnelSuccessfullyEstablished",
    "UpstreamPoolReady",
    "UpstreamPeriodic",
)


def role_of(side: pl.Expr) -> pl.Expr:
    return (
        pl.when(side == Side.SERVER)
        .then(pl.lit("server"))
        .when(side.is_in([Side.CLIENT, Side.GATEWAY]))
        .then(pl.lit("client"))
    )


def annotate(entries: pl.DataFrame) -> pl.DataFrame:
    """Per-entry facts: side, role, end time, whether final, whether HTTP, WebSocket evidence."""
    cluster = pl.col("upstream_cluster")
    side = (
        pl.when(pl.col("source").str.contains("(?i)gateway"))
        .then(pl.lit(Side.GATEWAY.value))
        .when(cluster.str.starts_with("outbound|"))
        .then(pl.lit(Side.CLIENT.value))
        .when(cluster.str.starts_with("inbound"))
        .then(pl.lit(Side.SERVER.value))
    )
    duration = pl.duration(milliseconds=pl.col("duration_ms").fill_null(0))
    return entries.with_columns(
        side=side,
        end_time=pl.col("start_time") + duration,
        final=is_final(),
        http=pl.col("method").is_not_null() | pl.col("protocol").str.starts_with("HTTP"),
        evidence=entry_evidence(),
    ).with_columns(role=role_of(pl.col("side")))


def is_final() -> pl.Expr:
    """False for start and periodic entries: typed ones, or untyped flag-free entries with code
    0 (start) or 101 (periodic): a WebSocket's last entry always carries a close flag such as
    UC, UR or DC, and an entry with no response carries the reason as a flag."""
    typed = pl.col("access_log_type").is_not_null()
    untyped_periodic = (
        pl.col("response_code").fill_null(0).is_in([0, 101]) & pl.col("response_flags").is_null()
    )
    return (
        pl.when(typed)
        .then(~pl.col("access_log_type").is_in(NOT_FINAL_TYPES))
        .otherwise(~untyped_periodic)
    )


def connect_rejected() -> pl.Expr:
    """The server side of an extended CONNECT the server sidecar does not allow."""
    flags = pl.col("response_flags").fill_null("")
    return (
        (pl.col("protocol") == "HTTP/2")
        & flags.str.contains("DPE")
        & (pl.col("response_code").fill_null(0) == 0)
        & pl.col("method").is_null()
    )


def entry_evidence() -> pl.Expr:
    """Why an entry is a WebSocket, in order of strength; null when it shows nothing."""
    details = pl.col("response_code_details").fill_null("")
    return (
        pl.when(pl.col("upgrade").str.to_lowercase() == "websocket")
        .then(pl.lit("upgrade-header"))
        .when(pl.col("response_code") == 101)
        .then(pl.lit("101"))
        .when(details == "websocket_handshake_unsuccessful")
        .then(pl.lit("handshake-unsuccessful"))
        .when(connect_rejected())
        .then(pl.lit("h2-connect-rejected"))
    )
