"""Classify correlated connections: upgrade path, outcome, cause, pairing (docs/design.md 2).

Vectorised polars expressions over CORRELATED_SCHEMA rows (``correlate.build_connections``).
The deciding entry is the server sidecar's when it saw a non-upgrade (it is closest to the app:
a client sidecar shows 101 even when the app answered 200 over an HTTP/2 hop), else the
client's.
"""

from __future__ import annotations

import polars as pl

from analyzer import naming
from analyzer.hops import ASSUMED_APP_HOP, path_of, protocol_hop
from analyzer.schema import CONNECTION_SCHEMA, CORRELATED_SCHEMA, conform
from analyzer.side import gateway_source
from analyzer.signatures import connect_rejected, connect_reset_upstream, handshake_unsuccessful
from analyzer.vocab import Cause, Evidence, Outcome, Pairing, Side, TransportFailure

C = pl.col("client")
S = pl.col("server")
U = pl.col("unsided")

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


FIELDS = (
    "source",
    "protocol",
    "upstream_protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "upstream_host",
    "upstream_transport_failure_reason",
)


def _flatten(rows: pl.DataFrame) -> pl.DataFrame:
    """The entry fields classification reads, as plain ``c_*`` / ``s_*`` columns."""
    return rows.with_columns(
        *[C.struct.field(f).alias(f"c_{f}") for f in FIELDS],
        *[S.struct.field(f).alias(f"s_{f}") for f in FIELDS],
        *[U.struct.field(f).alias(f"u_{f}") for f in FIELDS],
    )


def flag_cause(flags: str | None) -> str:
    """The cause Envoy's response flags (``UF,URX``) point at, first match wins."""
    present = set((flags or "").split(","))
    for names, cause in FLAG_CAUSES:
        if present.intersection(names):
            return cause.value
    return Cause.OTHER.value


def upgrade_path() -> pl.Expr:
    """``<app-to-client-sidecar>-<sidecar-to-sidecar>`` (``analyzer.hops``). The mesh hop is
    the server entry's downstream protocol, or the client's %UPSTREAM_PROTOCOL%; a server-only
    connection's app hop is ``ASSUMED_APP_HOP``."""
    mesh = protocol_hop(pl.coalesce("s_protocol", "c_upstream_protocol"))
    assumed = pl.when(pl.col("c_source").is_null()).then(pl.lit(ASSUMED_APP_HOP.value))
    app = pl.coalesce(protocol_hop(pl.col("c_protocol")), assumed)
    return path_of(app, mesh)


def _server_decides() -> pl.Expr:
    """The server saw a non-upgrade: its entry, closest to the app, decides."""
    return pl.col("s_source").is_not_null() & (pl.col("s_response_code") != 101)


def _deciding(name: str) -> pl.Expr:
    """The server's field when the server saw a non-upgrade, else the client's; the entry of
    unknown side when neither side's was seen."""
    return (
        pl.when(_server_decides())
        .then(pl.col(f"s_{name}"))
        .when(pl.col("c_source").is_not_null())
        .then(pl.col(f"c_{name}"))
        .otherwise(pl.col(f"u_{name}"))
    )


def _answered_upstream() -> pl.Expr:
    """The response came from upstream: Envoy says so (``via_upstream``), or, in formats
    without %RESPONSE_CODE_DETAILS% (Istio <= 1.8 TEXT, Envoy's default), an upstream host
    was picked and no flag marks a local reply."""
    details = _deciding("response_code_details")
    return (
        pl.when(details.is_not_null())
        .then(details == "via_upstream")
        .otherwise(_deciding("upstream_host").is_not_null())
    )


def _connect_rejected() -> pl.Expr:
    """A sidecar refused an HTTP/2 extended CONNECT (``analyzer.signatures``): an entry with
    the signature on either side (the server sidecar on an HTTP/2 mesh hop; the client sidecar
    when its app speaks HTTP/2), or, with no server entry, the client's 503 after the server
    reset an HTTP/2 stream."""
    refused = [
        (pl.col(f"{p}_source").is_not_null() & connect_rejected(f"{p}_")).fill_null(False)
        for p in ("s", "c", "u")
    ]
    client_sig = pl.col("s_source").is_null() & connect_reset_upstream("c_")
    return pl.any_horizontal(*refused, client_sig.fill_null(False))


def _upgraded() -> pl.Expr:
    """Every entry seen answered 101 (the unsided one counts only when it is alone)."""
    c_up = pl.col("c_response_code") == 101
    s_up = pl.col("s_response_code") == 101
    alone = pl.col("c_source").is_null() & pl.col("s_source").is_null()
    u_up = alone & (pl.col("u_response_code") == 101)
    return (
        (pl.col("c_source").is_null() | c_up).fill_null(False)
        & (pl.col("s_source").is_null() | s_up).fill_null(False)
        & (c_up.fill_null(False) | s_up.fill_null(False) | u_up.fill_null(False))
    )


def outcome_and_cause(flag_causes: dict[str, str]) -> tuple[pl.Expr, pl.Expr]:
    code = _deciding("response_code").fill_null(0)
    flags = _deciding("response_flags")
    from_app = _answered_upstream() & flags.is_null() & (code > 0)
    handshake = handshake_unsuccessful("c_") | handshake_unsuccessful("s_")
    by_flags = flags.replace_strict(flag_causes, default=Cause.OTHER.value, return_dtype=pl.String)
    upgraded = _upgraded()
    cause = (
        pl.when(~pl.col("has_final") | upgraded)
        .then(pl.lit(Cause.NONE.value))
        .when(_connect_rejected())
        .then(pl.lit(Cause.H2_CONNECT_NOT_ALLOWED.value))
        .when(handshake | (from_app & (code < 400)).fill_null(False))
        .then(pl.lit(Cause.APP_DID_NOT_UPGRADE.value))
        .when(from_app.fill_null(False))
        .then(pl.lit(Cause.APP_REFUSED.value))
        .otherwise(by_flags)
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


def reported_by() -> pl.Expr:
    """The side whose entry decided the cause (see ``_deciding``); "" for none or unknown."""
    client = pl.when(gateway_source(pl.col("c_source"))).then(pl.lit(Side.GATEWAY.value))
    return (
        pl.when(pl.col("cause") == Cause.NONE.value)
        .then(pl.lit(""))
        .when(_server_decides().fill_null(False))
        .then(pl.lit(Side.SERVER.value))
        .when(pl.col("c_source").is_not_null())
        .then(pl.coalesce(client, pl.lit(Side.CLIENT.value)))
        .otherwise(pl.lit(""))
    )


# %UPSTREAM_TRANSPORT_FAILURE_REASON% texts (Envoy's and BoringSSL's wording), first match wins.
TRANSPORT_FAILURES: tuple[tuple[str, TransportFailure], ...] = (
    (r"(?i)tls|ssl|certificate|secret|handshake", TransportFailure.TLS),
    (r"(?i)refused|_111\b", TransportFailure.REFUSED),
    (r"(?i)timeout|timed.out|_110\b", TransportFailure.TIMEOUT),
)


def transport_failure() -> pl.Expr:
    """How the deciding entry's transport failed (``TRANSPORT_FAILURES``), "" when not logged."""
    reason = _deciding("upstream_transport_failure_reason")
    chain: pl.Expr = (
        pl.when(reason.is_not_null())
        .then(pl.lit(TransportFailure.OTHER.value))
        .otherwise(pl.lit(TransportFailure.NONE.value))
    )
    for pattern, kind in reversed(TRANSPORT_FAILURES):
        chain = pl.when(reason.str.contains(pattern)).then(pl.lit(kind.value)).otherwise(chain)
    return chain


def pairing() -> pl.Expr:
    client, server = pl.col("c_source").is_not_null(), pl.col("s_source").is_not_null()
    return (
        pl.when(client & server)
        .then(pl.lit(Pairing.PAIRED.value))
        .when(client)
        .then(pl.lit(Pairing.CLIENT_ONLY.value))
        .when(server)
        .then(pl.lit(Pairing.SERVER_ONLY.value))
        .otherwise(pl.lit(Pairing.UNPAIRED.value))
    )


def _main_side(name: str) -> pl.Expr:
    """A figure from the client side's final entry, else the server's, else the unsided one's."""
    return pl.coalesce(C.struct.field(name), S.struct.field(name), U.struct.field(name))


def _by_unique(rows: pl.DataFrame, keys: list[str], **exprs: pl.Expr) -> pl.DataFrame:
    """Compute ``exprs`` once per distinct ``keys`` (a few services and pods, many rows)."""
    distinct = rows.select(keys).unique().with_columns(**exprs)
    return rows.join(distinct, on=keys, how="left", nulls_equal=True)


def _names(rows: pl.DataFrame, keep_query: bool) -> pl.DataFrame:
    service = naming.destination_service()
    rows = rows.with_columns(
        server_cluster=S.struct.field("upstream_cluster"),
        server_sni=S.struct.field("requested_server_name"),
    )
    rows = _by_unique(
        rows,
        ["upstream_cluster", "server_cluster", "server_sni", "authority", "server_source"],
        destination_service=service,
        destination_namespace=pl.coalesce(
            naming.service_namespace(service), naming.source_namespace(pl.col("server_source"))
        ),
    )
    rows = _by_unique(
        rows,
        ["client_source"],
        source_workload=naming.source_workload(pl.col("client_source")),
        source_namespace=naming.source_namespace(pl.col("client_source")),
    )
    if keep_query:
        return rows
    return _by_unique(
        rows.rename({"path": "raw_path"}), ["raw_path"], path=naming.strip_query(pl.col("raw_path"))
    )


def classify(rows: pl.DataFrame, *, keep_query: bool = False) -> pl.DataFrame:
    """Turn CORRELATED_SCHEMA rows into CONNECTION_SCHEMA connections."""
    rows = _flatten(conform(rows, CORRELATED_SCHEMA))
    rows = rows.with_columns(
        client=pl.when(pl.col("c_source").is_not_null()).then(C),
        server=pl.when(pl.col("s_source").is_not_null()).then(S),
        unsided=pl.when(pl.col("u_source").is_not_null()).then(U),
    )
    flag_columns = [rows[f"{p}_response_flags"] for p in ("c", "s", "u")]
    distinct_flags = pl.concat(flag_columns).unique()
    flag_causes = {f: flag_cause(f) for f in distinct_flags.drop_nulls().to_list()}
    outcome, cause = outcome_and_cause(flag_causes)
    out = _names(rows, keep_query).with_columns(
        upgrade_path=upgrade_path(),
        outcome=outcome,
        cause=cause,
        pairing=pairing(),
        transport_failure=transport_failure(),
        start_time=_main_side("start_time"),
        duration_ms=_main_side("duration_ms"),
        bytes_sent=_main_side("bytes_sent"),
        bytes_received=_main_side("bytes_received"),
        response_code=_main_side("response_code"),
        attempts=pl.col("server_streams"),
    )
    return conform(out.with_columns(reported_by=reported_by()), CONNECTION_SCHEMA)


def websocket_paths(connections: pl.DataFrame) -> pl.DataFrame:
    """(destination_service, path) pairs that showed WebSocket evidence."""
    key = ["destination_service", "path"]
    return (
        connections.select(*key, "evidence")
        .filter(pl.col("evidence").is_not_null())
        .select(key)
        .unique()
    )


def websocket_evidence(
    connections: pl.DataFrame, ws_paths: pl.DataFrame, *, include_all: bool = False
) -> pl.Series:
    """Each connection's WebSocket evidence: its own, else ``path`` when its destination and
    path showed evidence elsewhere in the input, else (``include_all``) ``all``; null for a
    connection that is not a candidate."""
    key = ["destination_service", "path"]
    marked = ws_paths.select(key).unique().with_columns(_by_path=pl.lit(Evidence.PATH.value))
    by_path = connections.select(key).join(
        marked, on=key, how="left", nulls_equal=True, maintain_order="left"
    )
    evidence = connections.get_column("evidence").fill_null(by_path.get_column("_by_path"))
    return evidence.fill_null(Evidence.ALL.value) if include_all else evidence


def select_websockets(
    connections: pl.DataFrame, ws_paths: pl.DataFrame, *, include_all: bool = False
) -> pl.DataFrame:
    """Keep the WebSocket candidates (``websocket_evidence``), with their evidence."""
    evidence = websocket_evidence(connections, ws_paths, include_all=include_all)
    kept = connections.with_columns(evidence).select(list(CONNECTION_SCHEMA))
    return kept if evidence.null_count() == 0 else kept.filter(evidence.is_not_null())
