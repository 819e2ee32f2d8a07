"""Join both sidecars' entries of each connection (DESIGN.md sections 1 and 2).

Entries are kept pending until the event-time watermark (the newest entry end seen) has moved
``window`` past the connection's last entry, then released as one row per connection. The same
``Correlator`` serves ``wslog analyze`` (chunks of a whole input, then ``flush``) and the exporter
(micro-batches forever), so both apply exactly the same rules.

Pairing keys, in order: the request id (x-request-id is copied by both sidecars); for an entry
without one (the server side of a rejected extended CONNECT, ``DPE``), its address partner:
``client.upstream_local_address == server.downstream_remote_address`` with the server starting
0-3 ms (plus clock skew) after the client. Several client streams sharing one request id are
told apart by start time, and the server entries (one per retry attempt) go to the latest client
stream that started before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from analyzer import naming
from analyzer.schema import ENTRY_BRIEF_FIELDS, ENTRY_SCHEMA, UTC_US, conform
from analyzer.vocab import Side

NOT_FINAL_TYPES = (
    "DownstreamStart",
    "DownstreamPeriodic",
    "DownstreamTunnelSuccessfullyEstablished",
    "UpstreamPoolReady",
    "UpstreamPeriodic",
)
DPE_MAX_LAG = timedelta(milliseconds=3)

# Columns the correlator adds to each entry while it is pending.
ANNOTATION_SCHEMA: dict[str, pl.DataType] = {
    "uid": pl.Int64(),
    "side": pl.String(),
    "role": pl.String(),  # "client" (client sidecar or gateway) or "server"
    "end_time": UTC_US,
    "final": pl.Boolean(),
    "http": pl.Boolean(),
    "evidence": pl.String(),
}
PENDING_SCHEMA = {**ENTRY_SCHEMA, **ANNOTATION_SCHEMA}


@dataclass(frozen=True)
class CorrelationSettings:
    window: timedelta = timedelta(seconds=5)  # how long an entry waits for its counterpart
    clock_skew: timedelta = timedelta(seconds=1)  # tolerated clock difference between pods
    max_pending: int = 200_000  # entries; past it the oldest connections are released early


@dataclass(frozen=True)
class Released:
    """Connections whose entries are complete (or waited out the window), one row each."""

    connections: pl.DataFrame  # CONNECTION_ROWS_SCHEMA: see build_connections
    evicted: dict[str, int]  # entries released early by the size cap, per side


@dataclass
class Correlator:
    """Pending entries and the watermark: the only state carried between batches."""

    settings: CorrelationSettings = field(default_factory=CorrelationSettings)
    _pending: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PENDING_SCHEMA))
    _watermark: datetime | None = None
    _next_uid: int = 0
    _source_sides: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return self._pending.height

    def open_rows(self) -> pl.DataFrame:
        """Pending connections that have only start/periodic entries so far."""
        keyed = assign_connections(self._pending, self.settings)
        rows = build_connections(keyed)
        return rows.filter(~pl.col("has_final"))

    def feed(self, entries: pl.DataFrame, watermark: datetime | None = None) -> Released:
        """Add a batch and release what is complete. ``watermark``, when the caller knows it,
        is the time before which no more entries can arrive (e.g. the oldest newest-entry of
        all inputs still being read); by default it is the newest entry end seen."""
        batch = self._annotate(entries)
        newest = batch.get_column("end_time").max() if watermark is None else watermark
        if isinstance(newest, datetime) and (self._watermark is None or newest > self._watermark):
            self._watermark = newest
        frame = pl.concat([self._pending, batch], how="vertical")
        return self._release(frame, flush=False)

    def flush(self) -> Released:
        """Release everything still pending (end of input)."""
        return self._release(self._pending, flush=True)

    def release_finished(self) -> Released:
        """Release every pending connection with a final entry, whatever the watermark: the
        inputs are idle, so no counterpart is on its way. Open connections stay."""
        return self._release(self._pending, flush=False, finished=True)

    def _annotate(self, entries: pl.DataFrame) -> pl.DataFrame:
        entries = conform(entries, ENTRY_SCHEMA)
        uids = pl.int_range(self._next_uid, self._next_uid + entries.height, eager=True)
        self._next_uid += entries.height
        annotated = annotate(entries.with_columns(uid=uids))
        self._learn_source_sides(annotated)
        return self._fill_sides(annotated).select(list(PENDING_SCHEMA))

    def _learn_source_sides(self, frame: pl.DataFrame) -> None:
        known = (
            frame.filter(pl.col("side").is_not_null())
            .group_by("source")
            .agg(pl.col("side").mode().first())
        )
        for source, side in known.iter_rows():
            self._source_sides.setdefault(source, side)

    def _fill_sides(self, frame: pl.DataFrame) -> pl.DataFrame:
        if not self._source_sides:
            return frame
        by_source = pl.col("source").replace_strict(self._source_sides, default=None)
        side = pl.coalesce(pl.col("side"), by_source)
        return frame.with_columns(side=side).with_columns(role=role_of(pl.col("side")))

    def _release(self, frame: pl.DataFrame, *, flush: bool, finished: bool = False) -> Released:
        keyed = assign_connections(frame, self.settings)
        ends = keyed.group_by("conn").agg(
            pl.col("end_time").max().alias("conn_end"), pl.col("final").any().alias("done")
        )
        if flush:
            ready = ends.get_column("conn")
        elif finished:
            ready = ends.filter(pl.col("done")).get_column("conn")
        else:
            horizon = pl.lit(self._watermark, UTC_US) - self.settings.window
            ready = ends.filter(pl.col("done") & (pl.col("conn_end") <= horizon)).get_column("conn")
        released = keyed.filter(pl.col("conn").is_in(ready.implode()))
        rest = keyed.filter(~pl.col("conn").is_in(ready.implode()))
        rest, early, evicted = self._cap(rest, ends)
        self._pending = rest.select(list(PENDING_SCHEMA))
        out = pl.concat([released, early], how="vertical")
        return Released(build_connections(out), evicted)

    def _cap(
        self, rest: pl.DataFrame, ends: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
        excess = rest.height - self.settings.max_pending
        if excess <= 0:
            return rest, rest.clear(), {}
        order = rest.join(ends, on="conn").sort("conn_end", "uid")
        cut = order.slice(0, excess).get_column("conn").unique()
        early = rest.filter(pl.col("conn").is_in(cut.implode()))
        counts = early.group_by("side").len().iter_rows()
        evicted = {str(side or "unknown"): int(n) for side, n in counts}
        return rest.filter(~pl.col("conn").is_in(cut.implode())), early, evicted


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


def assign_connections(frame: pl.DataFrame, settings: CorrelationSettings) -> pl.DataFrame:
    """Add ``conn``: the key of the connection each entry belongs to."""
    if frame.height == 0:
        return frame.with_columns(pl.lit(None, pl.String).alias("conn"))
    partners = address_partners(frame, settings)
    frame = _adopt_partner_sides(frame, partners)
    frame = frame.with_columns(group=_group_key(frame, partners))
    streams = (
        frame.filter(pl.col("role") == "client")
        .group_by("group", "start_time")
        .agg()
        .rename({"start_time": "anchor"})
        .sort("anchor")
    )
    probed = frame.with_columns(probe=pl.col("start_time") + settings.clock_skew).sort("probe")
    joined = probed.join_asof(
        streams,
        left_on="probe",
        right_on="anchor",
        by="group",
        strategy="backward",
        check_sortedness=False,  # sorted by probe and anchor within every group
    )
    anchor = pl.coalesce(pl.col("anchor"), pl.col("start_time").min().over("group"))
    conn = pl.concat_str(pl.col("group"), anchor.cast(pl.String), separator="@")
    return joined.with_columns(conn=conn).drop("probe", "anchor").sort("uid")


def _adopt_partner_sides(frame: pl.DataFrame, partners: pl.DataFrame) -> pl.DataFrame:
    """An entry with no side of its own that is some client's address partner is a server's."""
    partnered = pl.col("uid").is_in(partners.get_column("uid").implode())
    adopted = pl.when(pl.col("side").is_null() & partnered).then(pl.lit(Side.SERVER.value))
    return frame.with_columns(side=pl.coalesce("side", adopted)).with_columns(
        role=role_of(pl.col("side"))
    )


def _group_key(frame: pl.DataFrame, partners: pl.DataFrame) -> pl.Series:
    own = (
        pl.when(pl.col("request_id").is_not_null())
        .then(pl.concat_str(pl.lit("r|"), pl.col("request_id")))
        .otherwise(pl.concat_str(pl.lit("u|"), pl.col("uid").cast(pl.String)))
    )
    keyed = frame.select("uid", own.alias("group"))
    if partners.height == 0:
        return keyed.get_column("group")
    partner_group = partners.join(keyed, left_on="partner_uid", right_on="uid").select(
        "uid", pl.col("group").alias("partner_group")
    )
    merged = keyed.join(partner_group, on="uid", how="left", maintain_order="left")
    return merged.select(pl.coalesce("partner_group", "group")).to_series()


def address_partners(frame: pl.DataFrame, settings: CorrelationSettings) -> pl.DataFrame:
    """For server entries (or entries of no known side) without a request id: the client entry
    whose upstream connection they received (``uid`` -> ``partner_uid``), the closest in time
    when several match."""
    servers = frame.filter(
        (pl.col("role") == "server").fill_null(True)
        & pl.col("request_id").is_null()
        & pl.col("downstream_remote_address").is_not_null()
    ).select(
        "uid",
        "start_time",
        pl.col("downstream_remote_address").alias("peer"),
        pl.col("downstream_local_address").alias("local"),
        _port(pl.col("downstream_remote_address")).alias("port"),
    )
    clients = frame.filter(
        (pl.col("role") == "client") & pl.col("upstream_local_address").is_not_null()
    ).select(
        pl.col("uid").alias("partner_uid"),
        pl.col("start_time").alias("client_start"),
        pl.col("upstream_local_address").alias("client_local"),
        pl.col("upstream_host").alias("client_host"),
        _port(pl.col("upstream_local_address")).alias("port"),
    )
    if servers.height == 0 or clients.height == 0:
        return pl.DataFrame(schema={"uid": pl.Int64, "partner_uid": pl.Int64})
    lag = pl.col("start_time") - pl.col("client_start")
    candidates = servers.join(clients, on="port").filter(
        same_address(pl.col("peer"), pl.col("client_local"))
        & (
            pl.col("client_host").is_null()
            | pl.col("local").is_null()
            | same_address(pl.col("local"), pl.col("client_host"))
        )
        & (lag >= -settings.clock_skew)
        & (lag <= DPE_MAX_LAG + settings.clock_skew)
    )
    return (
        candidates.with_columns(gap=lag.abs())
        .sort("gap", "partner_uid")
        .group_by("uid", maintain_order=True)
        .first()
        .select("uid", "partner_uid")
    )


def _port(address: pl.Expr) -> pl.Expr:
    return address.str.extract(r":(\d+)$", 1)


def same_address(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """Equal addresses, where a console may have masked digits (``127.0.**.**:53983``)."""
    masked = a.str.contains("*", literal=True) | b.str.contains("*", literal=True)
    a_prefix = a.str.split("*").list.first()
    b_prefix = b.str.split("*").list.first()
    prefixes = a.str.starts_with(b_prefix) | b.str.starts_with(a_prefix)
    return (a == b) | (masked & (_port(a) == _port(b)) & prefixes)


def _final_entry(role: str) -> list[pl.Expr]:
    """The last entry of one side of a connection: a final one if any, else the newest."""
    mine = pl.col("role") == role
    order = [pl.col("final").fill_null(False), pl.col("end_time"), pl.col("uid")]
    pick = pl.struct(*ENTRY_BRIEF_FIELDS).filter(mine).sort_by([o.filter(mine) for o in order])
    pick = pick.last()
    return [
        pick.alias(role),
        pl.col("final").filter(mine).any().alias(f"{role}_final"),
        _attempts(mine).alias(f"{role}_streams"),
    ]


def _attempts(mine: pl.Expr) -> pl.Expr:
    """Final entries of one side (one per retry attempt), or 1 when it has only open ones."""
    finals = (mine & pl.col("final").fill_null(False)).sum()
    return pl.max_horizontal(finals, mine.any().cast(pl.UInt32)).cast(pl.UInt32)


def build_connections(keyed: pl.DataFrame) -> pl.DataFrame:
    """One row per connection: both sides' final entries and the connection-level facts."""
    if keyed.height == 0:
        return _empty_rows()
    first = [pl.col(name).drop_nulls().first() for name in ("request_id", "authority", "path")]
    rows = keyed.group_by("conn", maintain_order=True).agg(
        *first,
        *_final_entry("client"),
        *_final_entry("server"),
        pl.col("final").any().alias("has_final"),
        pl.col("http").any(),
        pl.col("evidence").drop_nulls().first(),
        pl.col("upstream_cluster").filter(pl.col("role") == "client").drop_nulls().first(),
        pl.col("source").filter(pl.col("role") == "client").first().alias("client_source"),
        pl.col("source").filter(pl.col("role") == "server").first().alias("server_source"),
        pl.col("side").drop_nulls().first().alias("any_side"),
    )
    return rows


def _empty_rows() -> pl.DataFrame:
    brief = pl.Struct({name: ENTRY_SCHEMA[name] for name in ENTRY_BRIEF_FIELDS})
    return pl.DataFrame(
        schema={
            "conn": pl.String,
            "request_id": pl.String,
            "authority": pl.String,
            "path": pl.String,
            "client": brief,
            "client_final": pl.Boolean,
            "client_streams": pl.UInt32,
            "server": brief,
            "server_final": pl.Boolean,
            "server_streams": pl.UInt32,
            "has_final": pl.Boolean,
            "http": pl.Boolean,
            "evidence": pl.String,
            "upstream_cluster": pl.String,
            "client_source": pl.String,
            "server_source": pl.String,
            "any_side": pl.String,
        }
    )


def destination_service() -> pl.Expr:
    """From the client's cluster name, else the authority host."""
    return pl.coalesce(
        naming.cluster_service(pl.col("upstream_cluster")),
        naming.authority_service(pl.col("authority")),
    )
