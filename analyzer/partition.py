"""The partition key: which correlator replica an entry goes to (docs/design.md section 3).

Both entries of one connection must reach the same correlator, so the key is something both
sidecars log. The client sidecar's address on the mesh hop is in both: the client's
``upstream_local_address`` is the server's ``downstream_remote_address`` (the address pairing in
``correlate.address_partners`` relies on it). Its host part is the **client pod's IP**, so every
retry (a new upstream connection, a new port), every HTTP/2 stream sharing one connection and the
server's request-id-less ``DPE`` entry of a refused extended CONNECT land together.

Where that address is not in both entries, the request id is (and it is the only thing that
joins them in the correlator anyway):

- a request carrying ``x-forwarded-for`` (a gateway appends it; an app may send it): the server
  sidecar then logs the forwarded address with port 0, not the client's. Such entries key by
  request id, on both sides: the client logs the header it sent (``x_forwarded_for``) and the
  server the same header, or at least the ``:0`` address.
- a gateway pod's entries (``side.gateway_source``), even when the format lacks
  ``x_forwarded_for``: a gateway sends ``x-forwarded-for`` by default. This also spreads a busy
  gateway's connections over every partition instead of one.

A client entry written before its upstream connected (``DownstreamStart``) or without one
(``NR``, ``UH``, a local reply) keys by its ``downstream_remote_address``: its app's address, the
same pod's IP. Entries with no address at all key by their own source.

What still splits (the correlator then counts the two halves as client-only and server-only):
a request refused by the server's HTTP/2 codec (``DPE``, no request id) that came through a
gateway or carried ``x-forwarded-for`` (the server entry keys by address, the client's by request
id); an entry whose side nothing in its own fields tells, when its partner's does.
"""

from __future__ import annotations

import hashlib

import polars as pl

from analyzer import side
from analyzer.decode import decode
from analyzer.formats import FormatSet
from analyzer.vocab import Side

__all__ = ["key_column", "line_keys", "mesh_host", "partition_keys", "subject_token"]

BY_ADDRESS = "ip:"
BY_REQUEST = "rid:"
BY_SOURCE = "src:"
KEY_COLUMNS = (
    "source",
    "request_id",
    "x_forwarded_for",
    "upstream_cluster",
    "requested_server_name",
    "response_flags",
    "response_code_details",
    "upstream_local_address",
    "downstream_remote_address",
)


def mesh_host(address: pl.Expr) -> pl.Expr:
    """The host part of ``host:port`` or ``[v6]:port`` (null for null)."""
    bare = address.str.replace(r":\d+$", "")
    return bare.str.strip_prefix("[").str.strip_suffix("]")


def _port_zero(address: pl.Expr) -> pl.Expr:
    return address.str.ends_with(":0").fill_null(False)


def key_column() -> pl.Expr:
    """The key of each entry of an ``ENTRY_SCHEMA`` frame (a string; see the module's rules)."""
    rid = pl.col("request_id")
    remote = pl.col("downstream_remote_address")
    local = pl.col("upstream_local_address")
    own = side.own_side()
    forwarded = pl.col("x_forwarded_for").str.len_bytes().fill_null(0) > 0
    by_request = rid.is_not_null() & (
        forwarded | _port_zero(remote) | side.gateway_source(pl.col("source"))
    )
    address = (
        pl.when(own == Side.SERVER.value)
        .then(remote)
        .when(own.is_in([Side.CLIENT.value, Side.GATEWAY.value]))
        .then(pl.coalesce(local, remote))  # before its upstream connects: its app's, same pod
        .when(rid.is_null())
        .then(remote)  # a server's refused extended CONNECT (DPE) has no side of its own
    )
    host = mesh_host(address)
    return (
        pl.when(by_request)
        .then(pl.lit(BY_REQUEST) + rid)
        .when(host.is_not_null() & (host != ""))
        .then(pl.lit(BY_ADDRESS) + host)
        .otherwise(pl.lit(BY_SOURCE) + pl.col("source"))
        .alias("partition_key")
    )


def partition_keys(entries: pl.DataFrame) -> pl.Series:
    """``key_column`` evaluated on ``entries`` (only ``KEY_COLUMNS`` are read)."""
    return entries.select(key_column()).to_series()


def subject_token(key: str) -> str:
    """A NATS subject token for ``key``: 16 hex digits, so that no address, request id or pod
    name a client controls reaches a subject (no dots, spaces or wildcards)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def line_keys(lines: pl.DataFrame, formats: FormatSet) -> pl.DataFrame:
    """The key of each deframed line (``LINE_SCHEMA``): its entry's, or its source's when it is
    no entry (noise, a malformed line: whichever correlator gets it only counts it).
    Columns ``line_no``, ``partition_key``, one row per line, in ``lines``' order."""
    entries = decode(lines, formats).entries
    keyed = entries.select("line_no", key_column())
    return (
        lines.select("line_no", "source")
        .join(keyed, on="line_no", how="left", maintain_order="left")
        .select(
            "line_no",
            pl.coalesce("partition_key", pl.lit(BY_SOURCE) + pl.col("source")).alias(
                "partition_key"
            ),
        )
    )
