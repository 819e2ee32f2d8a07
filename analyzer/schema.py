"""Declared polars schemas: the contracts between the pipeline's stages.

lines (framing) ──▶ entries (decode) ──▶ correlated (correlate) ──▶ connections (classify)

A stage returns a frame with exactly its output schema (``conform`` enforces it), so a later
stage never has to guess whether a column exists or what type it has.
"""

from __future__ import annotations

import polars as pl

UTC_US = pl.Datetime("us", "UTC")

# One framed log line: what a source produced, before any access-log decoding.
LINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),  # file path, or namespace/pod[/container] for kubectl --prefix and k8s
    "line_no": pl.Int64(),  # 1-based physical line of the line's first fragment in its source
    "log_time": UTC_US,  # kubelet / CRI / docker timestamp when the framing has one
    "text": pl.String(),  # the payload, framing removed, no trailing newline
}

# One decoded access-log entry. Missing values (JSON null, "-" in TEXT) are null.
ENTRY_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "line_no": pl.Int64(),
    "log_time": UTC_US,
    "format": pl.String(),  # name of the format that decoded the line, e.g. "istio-json"
    "start_time": UTC_US,
    "method": pl.String(),
    "path": pl.String(),
    "protocol": pl.String(),  # downstream protocol: "HTTP/1.1", "HTTP/2", null for TCP
    "response_code": pl.Int32(),  # 0 when Envoy sent no response
    "response_flags": pl.String(),  # e.g. "UC", "UF,URX"; null when "-"
    "response_code_details": pl.String(),
    "connection_termination_details": pl.String(),
    "upstream_transport_failure_reason": pl.String(),
    "bytes_received": pl.Int64(),
    "bytes_sent": pl.Int64(),
    "duration_ms": pl.Int64(),
    "upstream_service_time_ms": pl.Int64(),
    "x_forwarded_for": pl.String(),
    "user_agent": pl.String(),
    "request_id": pl.String(),
    "authority": pl.String(),
    "upstream_host": pl.String(),
    "upstream_cluster": pl.String(),
    "upstream_local_address": pl.String(),
    "downstream_local_address": pl.String(),
    "downstream_remote_address": pl.String(),
    "requested_server_name": pl.String(),
    "route_name": pl.String(),
    # Present only when the format carries them (custom formats, wslog's access-log EnvoyFilter).
    "upstream_protocol": pl.String(),  # %UPSTREAM_PROTOCOL%
    "access_log_type": pl.String(),  # %ACCESS_LOG_TYPE%: DownstreamStart/Periodic/End, ...
    "upgrade": pl.String(),  # %REQ(UPGRADE)%
    "connection_id": pl.Int64(),  # %CONNECTION_ID%
}

# A malformed line: counted, reported with file:line, never fatal unless --strict.
REJECT_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "line_no": pl.Int64(),
    "reason": pl.String(),  # analyzer.vocab.RejectReason
    "detail": pl.String(),  # short human text, bounded
    "excerpt": pl.String(),  # the line's first 200 characters
}

# The fields of an entry kept inside a connection (as the ``client`` and ``server`` structs).
ENTRY_BRIEF_FIELDS: tuple[str, ...] = (
    "source",
    "line_no",
    "start_time",
    "protocol",
    "upstream_protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "upstream_transport_failure_reason",
    "duration_ms",
    "bytes_received",
    "bytes_sent",
    "upstream_host",
    "upstream_cluster",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "access_log_type",
)
ENTRY_BRIEF = pl.Struct({name: ENTRY_SCHEMA[name] for name in ENTRY_BRIEF_FIELDS})

# One correlated connection: what ``correlate.build_connections`` hands ``classify.classify``.
# Each side's final entry (``correlate``'s picks: a final one, else the newest) and the facts
# only the whole connection has; classification reads nothing else.
CORRELATED_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),  # the client side's, else any entry's (the smallest, by content)
    "authority": pl.String(),  # likewise
    "path": pl.String(),  # likewise, query string and all
    "client": ENTRY_BRIEF,  # the final entry of the client role (client sidecar or gateway)
    "server": ENTRY_BRIEF,  # the server sidecar's final entry
    "unsided": ENTRY_BRIEF,  # the final entry of no known side
    "server_streams": pl.UInt32(),  # server final entries (retry attempts); 1 if open, 0 if none
    "has_final": pl.Boolean(),  # some entry is final (not a start or periodic one)
    "http": pl.Boolean(),  # some entry is HTTP (only HTTP connections are classified)
    "upstream_cluster": pl.String(),  # the client role's cluster, e.g. outbound|8080||svc...
    "client_source": pl.String(),  # the source of the client role's entries
    "server_source": pl.String(),  # the source of the server's entries
    "evidence": pl.String(),  # the strongest WebSocket evidence of its entries (annotate)
}

# One classified WebSocket connection: both sidecars' final entries joined and explained.
CONNECTION_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "destination_service": pl.String(),  # FQDN, e.g. websockets-server.default.svc.cluster.local
    "destination_namespace": pl.String(),
    "source_workload": pl.String(),
    "source_namespace": pl.String(),
    "authority": pl.String(),
    "path": pl.String(),  # query string removed unless --keep-query
    "upgrade_path": pl.String(),  # analyzer.vocab.UpgradePath
    "outcome": pl.String(),  # analyzer.vocab.Outcome
    "cause": pl.String(),  # analyzer.vocab.Cause ("" when none)
    "pairing": pl.String(),  # analyzer.vocab.Pairing
    "reported_by": pl.String(),  # analyzer.vocab.Side of the entry that decided the cause, or ""
    "transport_failure": pl.String(),  # analyzer.vocab.TransportFailure of that entry
    "evidence": pl.String(),  # analyzer.vocab.Evidence: why it counts as a WebSocket
    "start_time": UTC_US,
    "duration_ms": pl.Int64(),
    "bytes_sent": pl.Int64(),
    "bytes_received": pl.Int64(),
    "response_code": pl.Int32(),  # what the client app saw (client entry), else the server's
    "attempts": pl.Int32(),  # server-side entries merged into this connection (retries)
    "client": ENTRY_BRIEF,  # the client sidecar's final entry, null when server-only
    "server": ENTRY_BRIEF,  # the server sidecar's final entry, null when client-only
    "unsided": ENTRY_BRIEF,  # an entry no evidence placed on a side (pairing "unpaired"), else null
}


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select exactly ``schema``'s columns in order, adding missing ones as nulls and casting."""
    exprs = [
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in schema.items()
    ]
    return frame.select(exprs)


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
