"""``--since`` / ``--until``: which connections a run reports, by when they were open.

A connection is in the range when it was open at some moment in it: its last entry ended (start
+ duration) at or after ``since``, and it started before ``until``. A WebSocket upgraded two
hours ago and cut ten minutes ago is in ``--since 1h``: that cut is what an incident is about,
and the kubelet wrote its entries within the hour, so the log API's ``sinceTime`` serves them.
The range applies to whole connections, after correlation, so its edge never splits the two
sidecars' entries of one connection into two halves. A connection without a start time is kept.

Connections outside the range are counted, never silently dropped
(``AnalysisResult.outside_range``). Pure: the clock is passed in (``now``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from analyzer.errors import WslogError

__all__ = ["TimeRange", "parse_bound"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(f"(?:{_PART.pattern})+")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
BOUND_HELP = "a duration before now (90s, 30m, 1h, 2d, 1h30m) or a time (2026-11-26T00:13:00Z)"


@dataclass(frozen=True)
class TimeRange:
    """``since`` inclusive, ``until`` exclusive; None: unbounded on that side."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise WslogError(
                f"--since {_iso(self.since)} is not before --until {_iso(self.until)}: "
                "swap them, or leave one out"
            )

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    def inside(self) -> pl.Expr:
        """Whether a connection (CONNECTION_SCHEMA) was open within the range."""
        start = pl.col("start_time")
        inside = pl.lit(True)
        if self.since is not None:
            inside &= _last_end() >= self.since
        if self.until is not None:
            inside &= start < self.until
        return inside.fill_null(True)

    def describe(self) -> str:
        """``--since T --until T`` as given, resolved to times (for reports)."""
        parts = [f"--{name} {_iso(value)}" for name, value in self.bounds().items() if value]
        return " ".join(parts)

    def bounds(self) -> dict[str, datetime | None]:
        return {"since": self.since, "until": self.until}


def _end(start: pl.Expr, duration_ms: pl.Expr) -> pl.Expr:
    return start + pl.duration(milliseconds=duration_ms.fill_null(0))


def _last_end() -> pl.Expr:
    """When the connection's last entry ended: the latest of its entries' ends."""
    ends = [
        _end(pl.col(side).struct.field("start_time"), pl.col(side).struct.field("duration_ms"))
        for side in ("client", "server", "unsided")
    ]
    return pl.max_horizontal(_end(pl.col("start_time"), pl.col("duration_ms")), *ends)


def parse_bound(option: str, text: str, *, now: datetime) -> datetime:
    """A ``--since``/``--until`` value: a duration before ``now``, or a time (UTC when it names
    no zone, as Envoy's start times are)."""
    value = text.strip()
    if _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise WslogError(f"{option} {text}: give {BOUND_HELP}") from None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
