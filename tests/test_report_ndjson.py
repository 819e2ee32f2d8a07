"""``--format ndjson`` is written by polars, and says what orjson says of each row: the same
bytes for any text, time (with and without microseconds), number, null and null entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from analyzer.report import ndjson_lines
from analyzer.schema import CONNECTION_SCHEMA, ENTRY_BRIEF_FIELDS
from analyzer.vocab import Outcome

texts = st.none() | st.text(st.characters(codec="utf-8"), max_size=20)
times = st.none() | st.builds(
    lambda s, us: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s, microseconds=us),
    st.integers(-(10**9), 10**9),
    st.sampled_from([0, 1, 120, 999_999]),
)
numbers = st.none() | st.integers(-(2**62), 2**62)
entries = st.none() | st.fixed_dictionaries(
    {
        "source": texts,
        "line_no": numbers,
        "start_time": times,
        "response_code": st.none() | st.integers(0, 999),
    }
)


def connection(rid: Any, path: Any, start: Any, duration: Any, client: Any) -> dict[str, Any]:
    brief = None if client is None else {name: client.get(name) for name in ENTRY_BRIEF_FIELDS}
    return {
        "request_id": rid,
        "path": path,
        "outcome": Outcome.UPGRADED.value,
        "start_time": start,
        "duration_ms": duration,
        "client": brief,
        "server": None,
    }


@given(st.lists(st.builds(connection, texts, texts, times, numbers, entries), max_size=30))
def test_every_row_is_what_orjson_writes(rows: list[dict[str, Any]]) -> None:
    frame = pl.DataFrame(rows, schema=CONNECTION_SCHEMA)
    expected = b"".join(orjson.dumps(row) + b"\n" for row in frame.to_dicts())
    assert ndjson_lines(frame) == expected
