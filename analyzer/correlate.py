"""Join both sidecars' entries of each connection (docs/design.md sections 1 and 2).

How side, pairing and release decide, and why order cannot change a verdict:

- **Side** is ``analyzer.side``'s one rule: an entry's own evidence at decode time, then (when
  its connection is released) what its partners prove, then its source, counted by event time
  up to the entry's horizon (its end + ``window``). Never which chunk or file came first.
- **Pairing**: by request id (x-request-id is copied by both sidecars); for an entry without
  one (the server side of a rejected extended CONNECT, ``DPE``), by its address partner:
  ``client.upstream_local_address == server.downstream_remote_address`` with the server
  starting 0-3 ms (plus clock skew) after the client. Several client streams sharing one request
  id are told apart by start time (the ``anchor``); the server entries (one per retry attempt)
  go to the latest client stream that started before them. Ties are broken by content.
- **Release**: a connection leaves once it has a final entry and the watermark is ``window``
  past its last entry's end. The watermark is a *start* time (by default the newest entry
  start seen; ``wslog analyze`` passes the oldest progress among its inputs): an entry of the
  connection still to come starts before the connection ends, so a log in write order
  (Envoy's) or sorted by start time has shown it by then. A stream that goes back in time (one
  side's log after the other's) breaks that promise, so whole-input runs (``hold_unpaired``)
  keep every connection released without both sides until the end of input and pair them
  again there: any file order, rotation, concatenation of pod logs, merge or read block gives
  the same set. (Every side having its final entry is not required: untyped formats cannot
  tell a client sidecar's flag-free 101 over an HTTP/2 hop from a periodic entry.)

The work per batch is proportional to the batch: only the groups a batch touches are re-keyed;
the rest of the pending state is only filtered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import polars as pl

from analyzer import side
from analyzer.annotate import annotate, evidence_name, evidence_rank
from analyzer.schema import (
    CORRELATED_SCHEMA,
    ENTRY_BRIEF,
    ENTRY_BRIEF_FIELDS,
    ENTRY_SCHEMA,
    UTC_US,
    conform,
)
from analyzer.vocab import Side

CLIENT, SERVER = Side.CLIENT.value, Side.SERVER.value

DPE_MAX_LAG = timedelta(milliseconds=3)
CONN = ["group", "anchor"]
_AT = "_at"  # a row's place in its frame, while that frame is sorted otherwise

# Columns the correlator adds to each entry while it is pending.
ANNOTATION_SCHEMA: dict[str, pl.DataType] = {
    "uid": pl.Int64(),
    "side": pl.String(),
    "role": pl.String(),  # Side.CLIENT (client sidecar or gateway) or Side.SERVER, see side.py
    "end_time": UTC_US,
    "final": pl.Boolean(),
    "http": pl.Boolean(),
    "evidence": pl.String(),
    "group": pl.Int64(),  # the connection's key: see Correlator._annotate
    "anchor": UTC_US,  # start of the client stream the entry belongs to
    "conn_end": UTC_US,  # newest entry end of the entry's connection
    "conn_done": pl.Boolean(),  # whether the connection has a final entry
}
PENDING_SCHEMA = {**ENTRY_SCHEMA, **ANNOTATION_SCHEMA}
IDS_SCHEMA = {"request_id": pl.String(), "group": pl.Int64()}
# A group key is odd for a request id's group, even for an entry alone by its uid.
BY_ID = (pl.col("group") % 2) == 1


PAIR_WINDOW_S = 10.0  # --pair-window's default in every command
MAX_PAIR_WINDOW_S = 3600.0  # an hour: both sidecars log a connection within ms of each other
MAX_CLOCK_SKEW_S = 300.0


def window_problems(pair_window_s: float, clock_skew_s: float) -> list[str]:
    """What is wrong with ``--pair-window`` and ``--clock-skew``, the same in every command."""
    problems = []
    if not 0 < pair_window_s <= MAX_PAIR_WINDOW_S:
        problems.append(f"--pair-window must be in (0, {MAX_PAIR_WINDOW_S:g}] seconds")
    if not 0 <= clock_skew_s <= MAX_CLOCK_SKEW_S:
        problems.append(f"--clock-skew must be in [0, {MAX_CLOCK_SKEW_S:g}] seconds")
    return problems


@dataclass(frozen=True)
class CorrelationSettings:
    window: timedelta = timedelta(seconds=PAIR_WINDOW_S)  # how long an entry waits for its pair
    clock_skew: timedelta = timedelta(seconds=1)  # tolerated clock difference between pods
    max_pending: int = 200_000  # entries; past it the oldest connections are released early
    # Whole inputs (wslog analyze): connections released without both sides wait for the end of
    # input, where a counterpart that came late (one side after the other in one stream) joins.
    hold_unpaired: bool = False


@dataclass(frozen=True)
class Released:
    """Connections whose entries are complete (or waited out the window), one row each."""

    connections: pl.DataFrame  # see build_connections
    early: pl.DataFrame  # those of ``connections`` released before their window by the size cap
    late: int = 0  # entries of a connection already released paired (input out of time order)


@dataclass
class Correlator:
    """Pending entries and the watermark: the only state carried between batches."""

    settings: CorrelationSettings = field(default_factory=CorrelationSettings)
    _pending: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PENDING_SCHEMA))
    _watermark: datetime | None = None
    _next_uid: int = 0
    _sources: side.SourceSides = field(init=False)
    _held: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=PENDING_SCHEMA))
    _released: pl.Series = field(default_factory=lambda: pl.Series(dtype=pl.UInt64))  # ids
    _ids: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=IDS_SCHEMA))
    _released_until: datetime | None = None  # the latest end of a connection released paired

    def __post_init__(self) -> None:
        self._sources = side.SourceSides(self.settings.window)

    @property
    def pending(self) -> int:
        return self._pending.height

    @property
    def request_ids(self) -> int:
        """Request ids remembered (those of pending or held connections)."""
        return self._ids.height

    def pending_lines(self) -> pl.DataFrame:
        """``source`` and ``line_no`` of every entry still waiting (not counted yet)."""
        return self._pending.select("source", "line_no")

    def open_rows(self) -> pl.DataFrame:
        """Pending connections that have only start/periodic entries so far."""
        return build_connections(self._settle(self._pending.filter(~pl.col("conn_done"))))

    def feed(self, entries: pl.DataFrame, watermark: datetime | None = None) -> Released:
        """Add a batch and release what is complete. ``watermark``, when the caller knows it,
        is the time before which no more entries can start (e.g. the oldest progress of all
        inputs still being read); by default it is the newest entry start seen."""
        batch = self._annotate(entries)
        before = self._watermark
        self._watermark = self._advance(batch, watermark)
        moved = self._watermark != before
        late = self._count_late(batch)
        if batch.height:
            frame, touched = self._pair(self._pending, batch)
            self._pending = rekey(frame, touched, self.settings)
            self._sources.learn(batch)
        elif not moved:
            none = build_connections(self._pending.clear())
            return Released(none, none)
        if self._watermark is None:
            return replace(self._take(pl.lit(False)), late=late)
        horizon = pl.lit(self._watermark, UTC_US) - self.settings.window
        ready = self._take(pl.col("conn_done") & (pl.col("conn_end") <= horizon))
        return replace(ready, late=late)

    def _count_late(self, batch: pl.DataFrame) -> int:
        """Entries whose request id belongs to a connection already released with both sides:
        only an input that goes back in time by more than the window delivers them, and only
        an entry starting before the released connections ended can be one."""
        if self._released_until is None:
            return 0
        until = pl.lit(self._released_until, UTC_US) + self.settings.clock_skew
        maybe = batch.select("group", "start_time", "request_id").filter(
            BY_ID & (pl.col("start_time") <= until)
        )
        if maybe.height == 0:
            return 0
        return int(maybe.get_column("request_id").hash().is_in(self._released.implode()).sum())

    def _advance(self, batch: pl.DataFrame, watermark: datetime | None) -> datetime | None:
        """The caller's watermark as it is (it may step back, when an input starts another
        segment of older entries), else the newest entry start seen."""
        if watermark is not None:
            return watermark
        newest = batch.get_column("start_time").max()
        if not isinstance(newest, datetime):
            return self._watermark
        return newest if self._watermark is None else max(newest, self._watermark)

    def flush(self) -> Released:
        """Release everything still pending (end of input), with the held connections given a
        last chance to pair with entries that came after them."""
        if self._held.height:
            held, self._held = self._held, self._held.clear()
            frame, touched = self._pair(self._pending, held)
            self._pending = rekey(frame, touched, self.settings)
        return self._take(pl.lit(True), final=True)

    def release_finished(self) -> Released:
        """Release every pending connection with a final entry, whatever the watermark: the
        inputs are idle, so no counterpart is on its way. Open connections stay."""
        return self._take(pl.col("conn_done"))

    def _annotate(self, entries: pl.DataFrame) -> pl.DataFrame:
        """Each entry with its uid, its own evidence and its group: the group of its request
        id (``2 * uid + 1`` of the id's first entry still pending or held, kept in ``_ids``),
        or, without one, its own (``2 * uid``) until an address partner is found. Integer
        keys: every later step hashes, sorts and joins on them."""
        entries = conform(entries, ENTRY_SCHEMA)
        uids = pl.int_range(self._next_uid, self._next_uid + entries.height, eager=True)
        self._next_uid += entries.height
        entries = entries.with_columns(uid=uids)
        ids = (
            entries.select("request_id", "uid")
            .filter(pl.col("request_id").is_not_null())
            .group_by("request_id")
            .agg((pl.col("uid").min() * 2 + 1).alias("new"))
            .join(self._ids, on="request_id", how="left")
        )
        if ids.height:
            fresh = ids.filter(pl.col("group").is_null())
            self._ids = pl.concat([self._ids, fresh.select("request_id", group="new")])
            ids = ids.select("request_id", pl.coalesce("group", "new").alias("group"))
            entries = entries.join(ids, on="request_id", how="left", maintain_order="left")
        own = pl.coalesce(pl.col("group"), pl.col("uid") * 2) if ids.height else pl.col("uid") * 2
        annotated = annotate(entries).with_columns(group=own)
        return conform(annotated, PENDING_SCHEMA)

    def _forget_ids(self) -> None:
        """Drop the request ids whose groups are neither pending nor held."""
        if self._ids.height == 0:
            return
        alive = pl.concat([self._pending.get_column("group"), self._held.get_column("group")])
        self._ids = self._ids.filter(pl.col("group").is_in(alive.implode()))

    def _pair(self, pending: pl.DataFrame, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
        """Pending plus batch, with entries that found an address partner moved into the
        partner's group (and proven servers); and the groups whose connections must be
        re-keyed."""
        frame = pl.concat([pending, batch], how="vertical")
        touched = batch.get_column("group").unique()
        partners = address_partners(frame, self.settings)
        if partners.height == 0:
            return frame, touched
        moved = partners.join(
            frame.select(pl.col("uid").alias("partner_uid"), pl.col("group").alias("to")),
            on="partner_uid",
        )
        new_group = pl.col("uid").replace_strict(
            moved.get_column("uid"), moved.get_column("to"), default=pl.col("group")
        )
        frame = side.with_server(frame.with_columns(group=new_group), moved.get_column("uid"))
        return frame, pl.concat([touched, moved.get_column("to")]).unique()

    def _settle(self, entries: pl.DataFrame) -> pl.DataFrame:
        """Sides that only the complete connection or the source can tell (side.py, steps 2-3),
        worked out on the connections that have an entry without one (a few: the others are
        as they were)."""
        if not entries.get_column("side").null_count():
            return entries
        unsided = entries.filter(pl.col("side").is_null()).select(CONN).unique()
        unsure = entries.join(unsided, on=CONN, how="semi", nulls_equal=True)
        proven = side.by_partner(unsure, CONN)
        settled = side.by_partner(self._sources.fill(proven), CONN)
        return side.with_sides(entries, settled.select("uid", "side"))

    def _take(self, ready: pl.Expr, *, final: bool = False) -> Released:
        mask = self._pending.with_columns(_ready=ready.fill_null(False)).get_column("_ready")
        released, rest = self._pending.filter(mask), self._pending.filter(~mask)
        rest, early = self._cap(rest)
        self._pending = rest
        out = self._settle(pl.concat([released, early], how="vertical"))
        if self.settings.hold_unpaired and not final:
            out = self._hold_unpaired(out)
        early_out = out.filter(pl.col("uid").is_in(early.get_column("uid").implode()))
        self._forget_ids()
        return Released(build_connections(out), build_connections(early_out))

    def _hold_unpaired(self, settled: pl.DataFrame) -> pl.DataFrame:
        """Keep (as their entries, sides as their own evidence gave them) the connections that
        lack a side; return the paired ones."""
        role = pl.col("role")
        both = ((role == CLIENT).any() & (role == SERVER).any()).over(CONN)
        paired = settled.select(both).to_series()
        if not paired.all():
            own_sides = annotate(settled.filter(~paired))
            self._held = pl.concat([self._held, conform(own_sides, PENDING_SCHEMA)])
            settled = settled.filter(paired)
        done = settled.select(
            pl.col("request_id").filter(BY_ID).drop_nulls().unique().hash(),
            pl.col("conn_end").filter(BY_ID).max(),
        )
        if done.height:
            self._released = pl.concat([self._released, done.get_column("request_id")])
            latest = done.get_column("conn_end").max()
            if isinstance(latest, datetime):
                until = self._released_until
                self._released_until = latest if until is None else max(until, latest)
        return settled

    def _cap(self, rest: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Past ``max_pending`` entries, the connections that ended first leave early."""
        excess = rest.height - self.settings.max_pending
        if excess <= 0:
            return rest, rest.clear()
        cut = rest.sort("conn_end", "uid").slice(0, excess).select(CONN).unique()
        early = rest.join(cut, on=CONN, how="semi", nulls_equal=True)
        kept = rest.join(cut, on=CONN, how="anti", nulls_equal=True)
        return kept, early


def rekey(frame: pl.DataFrame, touched: pl.Series, settings: CorrelationSettings) -> pl.DataFrame:
    """Recompute anchors and connection ends for the entries of the ``touched`` groups. The
    anchors are found on the three key columns only (sorting the whole entries cost more than
    the as-of join itself); the entries keep their order."""
    hit = frame.get_column("group").is_in(touched.implode())
    work = frame.filter(hit)
    if work.height == 0:
        return frame
    keys = work.select("group", "start_time", "role")
    streams = (
        keys.filter(pl.col("role") == CLIENT)
        .select("group", pl.col("start_time").alias("stream"))
        .unique()
        .sort("stream")
    )
    probes = keys.select("group", probe=pl.col("start_time") + settings.clock_skew)
    stream = (
        probes.with_row_index(_AT)
        .sort("probe")
        .join_asof(
            streams,
            left_on="probe",
            right_on="stream",
            by="group",
            strategy="backward",
            check_sortedness=False,  # sorted by probe and stream within every group
        )
        .sort(_AT)
        .get_column("stream")
    )
    anchor = pl.coalesce(stream, pl.col("start_time").min().over("group"))
    keyed = work.with_columns(anchor=anchor).with_columns(
        conn_end=pl.col("end_time").max().over(CONN),
        conn_done=pl.col("final").any().over(CONN),
    )
    return pl.concat([frame.filter(~hit), keyed.select(list(PENDING_SCHEMA))], how="vertical")


def address_partners(frame: pl.DataFrame, settings: CorrelationSettings) -> pl.DataFrame:
    """For entries still alone in their group (no request id) that are a server's or of no
    known side: the client entry whose upstream connection they received (``uid`` ->
    ``partner_uid``), the closest in time when several match. (Lazy filters and selects:
    only the columns selected are gathered, not every column of the entries.)"""
    servers = (
        frame.lazy()
        .filter(
            ~BY_ID
            & (pl.col("role") == SERVER).fill_null(True)
            & pl.col("downstream_remote_address").is_not_null()
        )
        .select(
            "uid",
            "start_time",
            pl.col("downstream_remote_address").alias("peer"),
            pl.col("downstream_local_address").alias("local"),
            _port(pl.col("downstream_remote_address")).alias("port"),
        )
        .collect()
    )
    if servers.height == 0:
        return pl.DataFrame(schema={"uid": pl.Int64, "partner_uid": pl.Int64})
    local = pl.col("upstream_local_address")
    client = (pl.col("role") == CLIENT) & local.is_not_null()
    masked = servers.get_column("peer").str.contains("*", literal=True).any() or bool(
        frame.select((client & local.str.contains("*", literal=True)).any()).item()
    )
    if not masked:  # then a partner's address is the peer itself: skip every other client
        client = client & local.is_in(servers.get_column("peer").implode())
    clients = (
        frame.lazy()
        .filter(client)
        .select(
            pl.col("uid").alias("partner_uid"),
            pl.col("start_time").alias("client_start"),
            pl.col("upstream_local_address").alias("client_local"),
            pl.col("upstream_host").alias("client_host"),
            _port(pl.col("upstream_local_address")).alias("port"),
        )
        .collect()
    )
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


# Entries that end in the same millisecond are ordered by what they say, never by arrival.
TIEBREAK = [pl.col("start_time"), pl.col("downstream_remote_address"), pl.col("uid")]
# A side's entries in this order end with its final entry: a final one if any, else the newest.
FINAL_ORDER = [pl.col("final").fill_null(False), pl.col("end_time"), *TIEBREAK]


def _first(name: str, client: pl.Expr) -> pl.Expr:
    """A connection-level value from the client side first, chosen by content, not arrival."""
    return pl.coalesce(pl.col(name).filter(client).min(), pl.col(name).min()).alias(name)


def _attempts(mine: pl.Expr) -> pl.Expr:
    """Final entries of one side (one per retry attempt), or 1 when it has only open ones."""
    finals = (mine & pl.col("final").fill_null(False)).sum()
    return pl.max_horizontal(finals, mine.any().cast(pl.UInt32)).cast(pl.UInt32)


def build_connections(entries: pl.DataFrame) -> pl.DataFrame:
    """One CORRELATED_SCHEMA row per connection: each side's final entry (``unsided`` for an
    entry whose side no evidence told) and the connection-level facts.

    A side's final entry is its last in ``FINAL_ORDER`` (a final one if any, else the newest);
    one sort of all entries puts every side's in place, so each connection takes its sides'
    last rows (a sort per connection and side cost twice as much). Connections come out in the
    order of their first entry."""
    client, server = pl.col("role") == CLIENT, pl.col("role") == SERVER
    # One request id per group (only entries without one join another's): its first is its min.
    request_id = pl.col("request_id").drop_nulls().first()
    first = [request_id, *(_first(name, client) for name in ("authority", "path"))]
    brief = pl.struct(*ENTRY_BRIEF_FIELDS)
    if entries.get_column("role").null_count():
        entry_of_no_side = brief.filter(pl.col("role").is_null()).last().alias("unsided")
    else:  # the common case: every entry has a side, no struct to pick
        entry_of_no_side = pl.lit(None, ENTRY_BRIEF).alias("unsided")
    rows = (
        entries.with_columns(evidence_rank=evidence_rank())
        .sort(*CONN, *FINAL_ORDER)
        .group_by(CONN)
        .agg(
            pl.col("uid").min().alias("_first_uid"),
            *first,
            brief.filter(client).last().alias("client"),
            brief.filter(server).last().alias("server"),
            entry_of_no_side,
            _attempts(server).alias("server_streams"),
            pl.col("final").any().alias("has_final"),
            pl.col("http").any(),
            pl.col("evidence_rank").min(),
            pl.col("upstream_cluster").filter(client).min(),
            pl.col("source").filter(client).min().alias("client_source"),
            pl.col("source").filter(server).min().alias("server_source"),
        )
        .sort("_first_uid")
        .drop(*CONN, "_first_uid")
    )
    rows = rows.with_columns(evidence=evidence_name(pl.col("evidence_rank")))
    return conform(rows, CORRELATED_SCHEMA)
