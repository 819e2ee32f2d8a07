"""What the reports say about a run's connections, gathered as they are released.

The table (summary, failures, pairing counts), ``--fail-on`` and the counts of connections left
out need only aggregates and a few example request ids, never the connections themselves. So
each released batch is folded into *partial aggregates* as it comes (``Digest.add``), grouped
finely enough that the run's end can still decide what the batch could not:

- what is a WebSocket (``classify.websocket_evidence``): a connection with evidence of its own
  is; one without is only when its destination service and path showed evidence anywhere in
  the run, known at the end. So connections without evidence of their own (plain HTTP
  requests, whose paths can be as many as they are) are kept as they are, in a
  ``runs.ConnectionRuns`` (on disk past its memory budget), and judged at the end.
- report order (start time, request id, then release order: ``runs.order_key``): examples are
  the first request ids of each group in that order, so each partial keeps the order keys of its
  first ``EXAMPLE_IDS`` (the first of a union are among the first of its parts), and a
  group's first key, which orders failures that tie.

``Digest.resolve`` then gives what ``report`` renders, the same whatever the batches were
(``tests/test_digest.py``): a run that reports only the table keeps no connection at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from analyzer.classify import websocket_evidence
from analyzer.runs import KEY, SEQ, ConnectionRuns, compacted, numbered, order_key
from analyzer.schema import CONNECTION_SCHEMA
from analyzer.timerange import TimeRange
from analyzer.vocab import Cause, Outcome, Pairing, explain

SUMMARY_KEYS = ["destination_service", "upgrade_path", "outcome", "cause"]
FAILURE_KEYS = ["destination_service", "outcome", "cause", "reported_by", "transport_failure"]
# The summary's count of each pairing (JSON keys of the document's "summary" rows).
PAIRING_COLUMNS = {
    Pairing.PAIRED: "paired",
    Pairing.CLIENT_ONLY: "client_only",
    Pairing.SERVER_ONLY: "server_only",
    Pairing.UNPAIRED: "unpaired",
}
NOT_UPGRADED = [Outcome.FAILED.value, Outcome.REJECTED.value]
EXAMPLE_IDS = 3
UNJUDGED_ROWS = 20_000  # connections without evidence held in memory (about 30 MiB)

# What a partial is grouped by: every key a report groups by, and the time range's verdict.
_INSIDE = "_inside"
_KEYS = list(dict.fromkeys([*SUMMARY_KEYS, *FAILURE_KEYS, "pairing"]))
_KEYS.append(_INSIDE)
_FIRST, _EXAMPLE_KEYS, _EXAMPLES, _MIN_ID = "_first", "_example_keys", "_examples", "_min_id"
_PARTIAL_SCHEMA = pl.Schema(
    {
        **{k: pl.String() for k in _KEYS},
        _INSIDE: pl.Boolean(),
        "connections": pl.UInt32(),
        _FIRST: pl.String(),
        _EXAMPLE_KEYS: pl.List(pl.String()),
        _EXAMPLES: pl.List(pl.String()),
        _MIN_ID: pl.String(),
    }
)


# --fail-on's groups: outcome, cause, destination service, connections, smallest request id.
Tripped = tuple[str, str | None, str | None, int, str | None]


@dataclass
class Digest:
    """Partial aggregates of the WebSocket connections added so far, and the connections that
    only the end can judge; in the order they were released (which, after start time and
    request id, orders the report)."""

    time_range: TimeRange = field(default_factory=TimeRange)
    # Connections without evidence of their own, judged at the end: on disk past 20,000.
    unjudged: ConnectionRuns = field(default_factory=lambda: ConnectionRuns(UNJUDGED_ROWS))
    _parts: list[pl.DataFrame] = field(default_factory=list)
    _judged: int = 0  # connections with evidence of their own
    _next_seq: int = 0

    @classmethod
    def of(cls, connections: Iterable[pl.DataFrame]) -> Resolved:
        """The digest of connections already selected (WebSocket candidates in range)."""
        digest = cls()
        for frame in connections:
            digest.add(frame)
        no_paths = pl.DataFrame(schema={"destination_service": pl.String, "path": pl.String})
        return digest.resolve(no_paths, include_all=True)

    def add(self, connections: pl.DataFrame) -> None:
        """Fold released connections (CONNECTION_SCHEMA) in: those with evidence of their
        own as partials, the others kept for the end."""
        if connections.height == 0:
            return
        first, self._next_seq = self._next_seq, self._next_seq + connections.height
        keyed = numbered(connections, first)
        own = keyed.get_column("evidence").is_not_null()
        self._judged += int(own.sum())
        self._parts = _folded([*self._parts, _partial(keyed, self.time_range, own)])
        if not own.all():
            self.unjudged.add(compacted(keyed.filter(~own)))  # kept long: pins no chunk

    def resolve(self, ws_paths: pl.DataFrame, *, include_all: bool = False) -> Resolved:
        """What the reports say, once the run's path evidence (``PathEvidence.paths``) is
        known: connections with evidence of their own, or on a path that showed some (every
        HTTP connection with ``include_all``) are WebSocket candidates."""
        parts, total, candidates = self._parts, self._judged, self._judged
        for block in self.unjudged.scan([*CONNECTION_SCHEMA, SEQ]):
            kind = websocket_evidence(block, ws_paths, include_all=include_all)
            total += block.height
            candidates += kind.len() - kind.null_count()
            parts = _folded([*parts, _partial(block, self.time_range, kind.is_not_null())])
        rows = _fold(parts).filter(pl.col(_INSIDE))
        kept = int(rows.get_column("connections").sum())
        return Resolved(rows, total, candidates, kept)


def _partial(connections: pl.DataFrame, time_range: TimeRange, chosen: pl.Series) -> pl.DataFrame:
    """The ``chosen`` connections (with their ``_seq``: WebSocket candidates) as partial
    aggregates."""
    # The few columns a partial reads, picked before any filter or sort: moving whole
    # connections (their entries' structs) cost more than the aggregation.
    keyed = connections.select(
        *(key for key in _KEYS if key != _INSIDE),
        "request_id",
        order_key(),
        time_range.inside().alias(_INSIDE),
    )
    keyed = keyed.filter(chosen)
    rid = pl.col("request_id")
    with_id = keyed.filter(rid.is_not_null()).sort(KEY)
    examples = with_id.group_by(_KEYS).agg(
        pl.col(KEY).head(EXAMPLE_IDS).alias(_EXAMPLE_KEYS),
        rid.head(EXAMPLE_IDS).alias(_EXAMPLES),
        rid.min().alias(_MIN_ID),
    )
    counts = keyed.group_by(_KEYS).agg(pl.len().alias("connections"), pl.col(KEY).min())
    part = counts.rename({KEY: _FIRST}).join(examples, on=_KEYS, how="left", nulls_equal=True)
    # A few rows, kept to the end: their strings copied, not views into the step's chunks.
    return compacted(part.select(list(_PARTIAL_SCHEMA)).cast(_PARTIAL_SCHEMA))


def _folded(parts: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """``parts``, folded into one once they are many (so they stay few)."""
    return [_fold(parts)] if len(parts) > 64 else parts


@dataclass(frozen=True)
class Resolved:
    """The digest of a whole run: counts, and the rows of its WebSocket candidates in range."""

    _rows: pl.DataFrame  # partials of the kept connections
    total: int  # HTTP connections
    candidates: int  # WebSocket candidates
    kept: int  # candidates open within the time range (the report's connections)

    def summary(self) -> pl.DataFrame:
        """Connections counted by destination service, upgrade path, outcome and cause, with
        each pairing's count and the first request ids."""
        pairs = [
            pl.col("connections").filter(pl.col("pairing") == p.value).sum().alias(column)
            for p, column in PAIRING_COLUMNS.items()
        ]
        return _grouped(self._rows, SUMMARY_KEYS, pairs).sort(SUMMARY_KEYS, nulls_last=True)

    def failures(self) -> list[dict[str, Any]]:
        """One record per failure cause and service, with its explanation and remedy, the
        most connections first (then by service, then as they first appeared)."""
        failed = self._rows.filter(pl.col("outcome").is_in(NOT_UPGRADED))
        grouped = _grouped(failed, FAILURE_KEYS, [pl.col(_FIRST).min()]).sort(
            pl.col("connections"),
            pl.col("destination_service"),
            pl.col(_FIRST),
            descending=[True, False, False],
            nulls_last=True,
        )
        records = grouped.drop(_FIRST).to_dicts()
        for record in records:
            explanation = explain(
                Cause(record["cause"]), record["reported_by"], record["transport_failure"]
            )
            record["explanation"] = explanation.summary if explanation else ""
            record["remedy"] = explanation.remedy if explanation else ""
        return records

    def pairing(self) -> dict[str, int]:
        """Connections by pairing (``analyzer.vocab.Pairing``)."""
        counts = self._rows.group_by("pairing").agg(pl.col("connections").sum())
        return {str(p): int(n) for p, n in counts.sort("pairing").iter_rows() if n}

    def tripped(
        self, checks: set[str]
    ) -> list[tuple[str, str | None, str | None, int, str | None]]:
        """``--fail-on``: connections whose outcome or cause is one of ``checks``, by outcome,
        cause and service, each with its smallest request id; the most connections first."""
        hits = self._rows.filter(
            pl.col("outcome").is_in(list(checks)) | pl.col("cause").is_in(list(checks))
        )
        groups = hits.group_by("outcome", "cause", "destination_service").agg(
            pl.col("connections").sum(), pl.col(_MIN_ID).min()
        )
        ordered = groups.sort(
            "connections",
            "outcome",
            "cause",
            "destination_service",
            descending=[True, False, False, False],
            nulls_last=True,
        )
        return [(o, c, s, int(n), rid) for o, c, s, n, rid in ordered.iter_rows()]


def _grouped(rows: pl.DataFrame, keys: list[str], extra: list[pl.Expr]) -> pl.DataFrame:
    """Partials combined by ``keys`` as the reports show them: connections summed, ``extra``,
    the first request ids."""
    combined = _combined(rows, keys, extra).drop(_EXAMPLE_KEYS)
    examples = pl.col(_EXAMPLES).fill_null(pl.lit([], pl.List(pl.String())))
    return combined.with_columns(examples.alias("example_request_ids")).drop(_EXAMPLES)


def _fold(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Partials with the same keys as one: counts summed, first keys and examples kept."""
    if not parts:
        return pl.DataFrame(schema=_PARTIAL_SCHEMA)
    firsts = [pl.col(_FIRST).min(), pl.col(_MIN_ID).min()]
    folded = _combined(pl.concat(parts), _KEYS, firsts)
    return folded.select(list(_PARTIAL_SCHEMA)).cast(_PARTIAL_SCHEMA)


def _combined(rows: pl.DataFrame, keys: list[str], extra: list[pl.Expr]) -> pl.DataFrame:
    """``rows`` grouped by ``keys``: connections summed, ``extra``, and the examples of all
    (their order keys and request ids) cut to the first ``EXAMPLE_IDS`` by key."""
    examples = (
        rows.select(*keys, _EXAMPLE_KEYS, _EXAMPLES)
        .explode(_EXAMPLE_KEYS, _EXAMPLES)
        .drop_nulls(_EXAMPLE_KEYS)
        .sort(_EXAMPLE_KEYS)
        .group_by(keys)
        .agg(pl.col(_EXAMPLE_KEYS).head(EXAMPLE_IDS), pl.col(_EXAMPLES).head(EXAMPLE_IDS))
    )
    counts = rows.group_by(keys).agg(pl.col("connections").sum(), *extra)
    return counts.join(examples, on=keys, how="left", nulls_equal=True)
