"""Which side of the mesh wrote an entry: the one rule, decided from evidence (docs/design.md 1-3).

In order of strength:

1. The entry's own evidence: the upstream cluster's direction (``inbound|`` = server sidecar,
   ``outbound|`` = client sidecar, or the gateway when a gateway pod's log holds it); mTLS SNI
   ``outbound_.PORT_._.HOST`` (only the receiving sidecar sees it); Istio's inbound bind address
   ``127.0.0.6`` as the upstream local address; a gateway pod's own local reply; a missing route
   or cluster (``NR``/``NC``), which only the proxy routing into the mesh reports.
2. What a partner proves, once the connection is complete: an entry without a request id that
   received a client's upstream connection (``correlate.address_partners``) is a server's; an
   entry sharing its connection with entries of one known role only is of the other role.
   The rejected extended CONNECT (``analyzer.signatures``: ``DPE``, no request id) is decided
   here, not in step 1: the lab shows a client sidecar writing the same entry when its app
   speaks HTTP/2 and the sidecar does not allow extended CONNECT; only a client entry whose
   upstream connection it received makes it the server's.
3. Its source, only when that source showed exactly one side among all entries that ended by
   this entry's horizon (its end plus the correlation window). The correlator applies this when
   it releases the connection, which the watermark allows only once everything up to that
   horizon has been seen: so no file order, read block or interleaving can change it.

An entry still without a side is legitimate: its connection keeps it as ``unsided``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import polars as pl

from analyzer.schema import UTC_US
from analyzer.vocab import Side

INBOUND_BIND = "127.0.0.6:"  # Istio binds the server sidecar's connections to the app here
MESH_SNI = "outbound_."  # Istio's mTLS SNI, seen by the receiving sidecar


def role_of(side: pl.Expr) -> pl.Expr:
    """The role in a connection: a gateway calls the server as a client sidecar does."""
    return (
        pl.when(side == Side.SERVER.value)
        .then(pl.lit(Side.SERVER.value))
        .when(side.is_in([Side.CLIENT.value, Side.GATEWAY.value]))
        .then(pl.lit(Side.CLIENT.value))
    )


def gateway_source(source: pl.Expr) -> pl.Expr:
    """A gateway pod's log: the pod's own identity says it is a gateway."""
    return source.str.contains("(?i)gateway")


def own_side() -> pl.Expr:
    """Step 1: the side an entry's own fields prove, null when they prove none."""
    cluster = pl.col("upstream_cluster")
    gateway = gateway_source(pl.col("source"))
    return (
        pl.when(cluster.str.starts_with("inbound"))
        .then(pl.lit(Side.SERVER.value))
        .when(cluster.str.starts_with("outbound|"))
        .then(
            pl.when(gateway).then(pl.lit(Side.GATEWAY.value)).otherwise(pl.lit(Side.CLIENT.value))
        )
        .when(pl.col("requested_server_name").str.starts_with(MESH_SNI))
        .then(pl.lit(Side.SERVER.value))
        .when(pl.col("upstream_local_address").str.starts_with(INBOUND_BIND))
        .then(pl.lit(Side.SERVER.value))
        .when(gateway)
        .then(pl.lit(Side.GATEWAY.value))
        .when(no_route())
        .then(pl.lit(Side.CLIENT.value))
    )


def no_route() -> pl.Expr:
    """Envoy found no route or cluster: only the proxy routing a request into the mesh (a client
    sidecar or a gateway) does that; a server sidecar's inbound routes match every host."""
    # NR or NC among the comma-separated flags (one regex: splitting into lists cost 4x more)
    flagged = pl.col("response_flags").str.contains(r"(?:^|,)N[RC](?:,|$)").fill_null(False)
    details = pl.col("response_code_details")
    return flagged | details.is_in(["route_not_found", "cluster_not_found"]).fill_null(False)


def with_server(frame: pl.DataFrame, uids: pl.Series) -> pl.DataFrame:
    """Step 2, by address: the entries ``uids`` received a client's upstream connection."""
    proven = pl.when(pl.col("uid").is_in(uids.implode())).then(pl.lit(Side.SERVER.value))
    return _with_side(frame, pl.coalesce("side", proven))


def by_partner(frame: pl.DataFrame, conn: list[str]) -> pl.DataFrame:
    """Step 2, within each complete connection (``conn`` columns): an entry without a side whose
    connection shows one role only is of the other role."""
    role = pl.col("role")
    has_client = (role == Side.CLIENT.value).any().over(conn)
    has_server = (role == Side.SERVER.value).any().over(conn)
    other = (
        pl.when(has_client & ~has_server)
        .then(pl.lit(Side.SERVER.value))
        .when(has_server & ~has_client)
        .then(pl.lit(Side.CLIENT.value))
    )
    return _with_side(frame, pl.coalesce("side", other))


def with_sides(frame: pl.DataFrame, sides: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the sides (``uid``, ``side``) that steps 2-3 gave some of its entries."""
    found = pl.col("uid").replace_strict(
        sides.get_column("uid"), sides.get_column("side"), default=pl.col("side")
    )
    return _with_side(frame, found)


def _with_side(frame: pl.DataFrame, side: pl.Expr) -> pl.DataFrame:
    return frame.with_columns(side=side).with_columns(role=role_of(pl.col("side")))


SEEN_SCHEMA = {"source": pl.String(), "side": pl.String(), "first_end": UTC_US}


@dataclass
class SourceSides:
    """Step 3's memory: when each source first showed each side (by event time, so the order in
    which entries arrive does not matter). A few rows per source."""

    window: timedelta
    _seen: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SEEN_SCHEMA))

    def learn(self, entries: pl.DataFrame) -> None:
        """Remember the sides ``entries`` (with ``side`` and ``end_time``) prove."""
        found = (
            entries.select("source", "side", "end_time")
            .filter(pl.col("side").is_not_null())
            .group_by("source", "side")
            .agg(pl.col("end_time").min().alias("first_end"))
        )
        if found.height == 0:
            return
        merged = pl.concat([self._seen, found.select(list(SEEN_SCHEMA))])
        self._seen = merged.group_by("source", "side").agg(pl.col("first_end").min())

    def fill(self, entries: pl.DataFrame) -> pl.DataFrame:
        """Give each entry still without a side its source's one side, when the source showed
        exactly one by the entry's horizon."""
        unknown = entries.select("uid", "source", "end_time", "side").filter(
            pl.col("side").is_null()
        )
        if unknown.height == 0 or self._seen.height == 0:
            return entries
        horizon = pl.col("end_time") + self.window
        known = (
            unknown.drop("side")
            .join(self._seen, on="source")
            .filter(pl.col("first_end") <= horizon)
            .group_by("uid")
            .agg(pl.col("side").unique())
            .filter(pl.col("side").list.len() == 1)
            .select("uid", pl.col("side").list.first().alias("by_source"))
        )
        if known.height == 0:
            return entries
        by_source = pl.col("uid").replace_strict(
            known.get_column("uid"), known.get_column("by_source"), default=None
        )
        return _with_side(entries, pl.coalesce("side", by_source))
