"""Per-entry facts the correlator and the classifier rely on (docs/design.md section 1).

The side an entry's own fields prove (``analyzer.side``), when it ends, whether it is a
connection's final entry or a start/periodic one, whether it is HTTP, and what WebSocket
evidence it carries: polars expressions over ENTRY_SCHEMA columns, computed once per entry.
"""

from __future__ import annotations

import polars as pl

from analyzer.side import own_side, role_of
from analyzer.signatures import connect_rejected, handshake_unsuccessful
from analyzer.vocab import Evidence

NOT_FINAL_TYPES = (
    "DownstreamStart",
    "DownstreamPeriodic",
    "DownstreamTunnelSuccessfullyEstablished",
    "UpstreamPoolReady",
    "UpstreamPeriodic",
)


def annotate(entries: pl.DataFrame) -> pl.DataFrame:
    """Per-entry facts: own side, role, end time, whether final, whether HTTP, evidence."""
    return entries.with_columns(
        side=own_side(),
        end_time=end_time(),
        final=is_final(),
        http=pl.col("method").is_not_null() | pl.col("protocol").str.starts_with("HTTP"),
        evidence=entry_evidence(),
    ).with_columns(role=role_of(pl.col("side")))


def end_time() -> pl.Expr:
    """When an entry ends: its start plus its duration (none logged: it ends as it starts)."""
    return pl.col("start_time") + pl.duration(milliseconds=pl.col("duration_ms").fill_null(0))


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


# What an entry itself can show, strongest first (``path`` and ``all`` come from elsewhere).
EVIDENCE = (
    Evidence.UPGRADE_HEADER.value,
    Evidence.SWITCHED.value,
    Evidence.HANDSHAKE_UNSUCCESSFUL.value,
    Evidence.H2_CONNECT_REJECTED.value,
)


def entry_evidence() -> pl.Expr:
    """Why an entry is a WebSocket, in order of strength (``EVIDENCE``); null when it shows
    nothing."""
    proofs = (
        pl.col("upgrade").str.to_lowercase() == "websocket",
        pl.col("response_code") == 101,
        handshake_unsuccessful(),
        connect_rejected(),
    )
    chain: pl.Expr = pl.lit(None, pl.String)
    for proof, name in reversed(list(zip(proofs, EVIDENCE, strict=True))):
        chain = pl.when(proof).then(pl.lit(name)).otherwise(chain)
    return chain


def evidence_rank() -> pl.Expr:
    """The strength of an entry's evidence, 0 strongest; a connection shows its strongest."""
    return pl.col("evidence").replace_strict(
        {name: rank for rank, name in enumerate(EVIDENCE)}, default=len(EVIDENCE)
    )


def evidence_name(rank: pl.Expr) -> pl.Expr:
    """The evidence a rank (``evidence_rank``) stands for; null for none."""
    return rank.replace_strict(dict(enumerate(EVIDENCE)), default=None, return_dtype=pl.String)
