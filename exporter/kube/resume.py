"""Resuming a pod's log stream exactly: the kubelet's timestamps as a cursor.

The log API's ``sinceTime`` has whole-second precision and re-serves the overlap; ``Resume``
drops exactly the lines an earlier connection delivered (older than the cursor, and as many
lines *at* the cursor's timestamp as were delivered). Pure: no I/O, no ``kubernetes``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from analyzer.lines import Overlong

NS = 1_000_000_000

_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_timestamp(line: str) -> int | None:
    """The kubelet's RFC3339Nano prefix of ``line`` in nanoseconds since the epoch, or None."""
    match = _STAMP.match(line[: line.find(" ")])
    if match is None:
        return None
    base, fraction, zone = match.groups()
    return _epoch_seconds(base, zone) * NS + int((fraction or "").ljust(9, "0"))


@functools.lru_cache(maxsize=256)
def _epoch_seconds(base: str, zone: str) -> int:
    offset = "+00:00" if zone == "Z" else zone
    return int(datetime.fromisoformat(base + offset).timestamp())


def since_time(ts_ns: int) -> str:
    """``sinceTime`` for a timestamp: RFC 3339, truncated to the second as the API reads it."""
    return datetime.fromtimestamp(ts_ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cursor:
    """Newest timestamp delivered, and how many delivered lines carry exactly that timestamp.
    ``count == 0`` means "start at ``ts_ns`` inclusive"."""

    ts_ns: int
    count: int = 0


class Resume:
    """Filters one connection's lines: drops the overlap an earlier connection delivered."""

    def __init__(self, cursor: Cursor | None) -> None:
        self.cursor = cursor
        self._skipping = cursor is not None
        self._equal_left = cursor.count if cursor is not None else 0

    def admit(self, lines: Sequence[str | Overlong]) -> list[str | Overlong]:
        return [line for line in lines if self._admit(line)]

    def _admit(self, line: str | Overlong) -> bool:
        ts = parse_timestamp(line.excerpt() if isinstance(line, Overlong) else line)
        if ts is None:
            return True
        if self._skipping and self.cursor is not None:
            if ts < self.cursor.ts_ns:
                return False
            if ts == self.cursor.ts_ns and self._equal_left > 0:
                self._equal_left -= 1
                return False
            self._skipping = False
        self._advance(ts)
        return True

    def _advance(self, ts: int) -> None:
        cursor = self.cursor
        if cursor is None or ts > cursor.ts_ns:
            self.cursor = Cursor(ts, 1)
        elif ts == cursor.ts_ns:
            self.cursor = Cursor(ts, cursor.count + 1)
