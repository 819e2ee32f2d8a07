"""Decode: framed lines (LINE_SCHEMA) become access-log entries (ENTRY_SCHEMA).

Each line is tried against the formats of a ``FormatSet``: lines starting with ``{`` go through
one ``str.json_decode`` with a declared struct of every JSON format's keys, the others through
each TEXT format's regex (``str.extract_groups``, in the passes ``formats.extraction_passes``
splits it into; a line with fewer quotes than a format's own is not tried against it). Both
are vectorised; Python looks at a single line only when the fast path rejected it, to name the
reason. Every line ends up as exactly one of an entry, ``not_access_log`` (Envoy's and
pilot-agent's own messages, blank lines, foreign JSON) or ``malformed`` (it looks like an entry
of a known format but cannot be decoded).
Pure: no I/O, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache

import orjson
import polars as pl

from analyzer.formats import Format, FormatSet, ValueType, chrono_format, json_keys
from analyzer.framing import Framed
from analyzer.schema import ENTRY_SCHEMA, LINE_SCHEMA, REJECT_SCHEMA, conform, empty
from analyzer.vocab import LineResult, RejectReason

_ROW = "_row"
_JSON = "json:"
_BAD = "_bad"
_GROUPS = "_groups"
_QUOTES = "_quotes"
_META = [_ROW, "source", "line_no", "log_time"]
_MIN_KEYS = 3
_LEAF = 32
_DEFAULT_TIME = "%Y-%m-%dT%H:%M:%S%.fZ"


@dataclass(frozen=True)
class Decoded:
    """One decoded chunk: entries, rejected lines, and how many lines had each result."""

    entries: pl.DataFrame
    rejects: pl.DataFrame
    counts: dict[LineResult, int] = field(default_factory=dict)

    @property
    def lines(self) -> int:
        return sum(self.counts.values())

    def count(self, result: LineResult) -> int:
        return self.counts.get(result, 0)

    @staticmethod
    def concat(parts: Sequence[Decoded]) -> Decoded:
        entries = _concat([p.entries for p in parts], ENTRY_SCHEMA)
        rejects = _concat([p.rejects for p in parts], REJECT_SCHEMA)
        return Decoded(entries, rejects, _sum_counts([p.counts for p in parts]))


@dataclass(frozen=True)
class _Part:
    entries: list[pl.DataFrame]
    rejects: list[pl.DataFrame]


def decode(lines: pl.DataFrame, formats: FormatSet) -> Decoded:
    """Decode ``lines`` (LINE_SCHEMA) with ``formats``; never raises on any line's content."""
    frame = conform(lines, LINE_SCHEMA).with_row_index(_ROW)
    is_json = frame["text"].str.starts_with("{")
    json_part = _decode_json(frame.filter(is_json), formats.json)
    text_part = _decode_text(frame.filter(~is_json), formats.text)
    entries = _concat([*json_part.entries, *text_part.entries], {**ENTRY_SCHEMA, _ROW: pl.UInt32()})
    rejects = _concat(
        [*json_part.rejects, *text_part.rejects], {**REJECT_SCHEMA, _ROW: pl.UInt32()}
    )
    counts = {
        LineResult.ENTRY: entries.height,
        LineResult.MALFORMED: rejects.height,
        LineResult.NOT_ACCESS_LOG: frame.height - entries.height - rejects.height,
    }
    entries = conform(entries.sort(_ROW), ENTRY_SCHEMA)
    return Decoded(entries, conform(rejects.sort(_ROW), REJECT_SCHEMA), counts)


def decode_framed(framed: Framed, formats: FormatSet) -> Decoded:
    """Decode a Deframer's output; its framing rejects count as malformed lines."""
    return with_framing_rejects(decode(framed.lines, formats), [framed.rejects])


def with_framing_rejects(decoded: Decoded, framing: Sequence[pl.DataFrame]) -> Decoded:
    """``decoded`` with the framing rejects of the same physical lines: counted as malformed
    lines and listed before the decoder's own rejects. Lines decoded in several parts and
    joined (``Decoded.concat``) then give what ``decode_framed`` gives for them at once."""
    framing_rejects = _concat(framing, REJECT_SCHEMA)
    counts = dict(decoded.counts)
    counts[LineResult.MALFORMED] = counts.get(LineResult.MALFORMED, 0) + framing_rejects.height
    rejects = _concat([framing_rejects, decoded.rejects], REJECT_SCHEMA)
    return Decoded(decoded.entries, rejects, counts)


# ---- JSON -------------------------------------------------------------------------------------


def _decode_json(frame: pl.DataFrame, formats: Sequence[Format]) -> _Part:
    if frame.height == 0 or not formats:
        return _Part([], [])
    dtype = pl.Struct({k: pl.String for k in json_keys(formats)})
    structs, errors = _json_decode(frame["text"], dtype)
    values = structs.struct.unnest()
    values = values.rename({k: _JSON + k for k in values.columns}).with_columns(frame.select(_META))
    values = values.with_columns(*_choose_json_format(formats), _err=errors)
    rejects = [_json_rejects(values, frame, formats)]
    entries = []
    for i, fmt in enumerate(formats):
        rows = values.lazy().filter((pl.col("_fmt") == i) & _is_entry(fmt))
        entries.append(_normalise(rows, fmt, _JSON))
    return _split_bad(entries, rejects, frame)


def _json_decode(texts: pl.Series, dtype: pl.Struct) -> tuple[pl.Series, pl.Series]:
    """``str.json_decode`` that isolates failing lines (bisection) and decodes them one by one."""
    try:
        query = texts.to_frame("text").lazy().select(pl.col("text").str.json_decode(dtype))
        decoded = query.collect(engine="streaming").to_series()
        if decoded.len() == texts.len():
            return decoded, pl.Series([None] * texts.len(), dtype=pl.String)
    except pl.exceptions.PolarsError:
        pass
    if texts.len() > _LEAF:
        half = texts.len() // 2
        first, second = _json_decode(texts[:half], dtype), _json_decode(texts[half:], dtype)
        return pl.concat([first[0], second[0]]), pl.concat([first[1], second[1]])
    rows = [_json_line(t, list(dtype.to_schema())) for t in texts.to_list()]
    values = pl.Series([r if isinstance(r, dict) else None for r in rows], dtype=dtype)
    errors = pl.Series([r if isinstance(r, str) else None for r in rows], dtype=pl.String)
    return values, errors


def _json_line(text: str | None, keys: list[str]) -> dict[str, str | None] | str:
    """One line the fast path could not take: its values as strings, or why it is not JSON."""
    try:
        obj = orjson.loads(text or "")
    except orjson.JSONDecodeError as exc:
        truncated = not (text or "").rstrip().endswith("}")
        return f"{'truncated' if truncated else 'invalid'}:{exc}"
    if not isinstance(obj, dict):
        return "invalid:not a JSON object"
    return {k: _json_value(obj.get(k)) for k in keys}


def _json_value(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _choose_json_format(formats: Sequence[Format]) -> tuple[pl.Expr, pl.Expr]:
    """Per line, the JSON format with the most keys present (the first on ties), as ``_fmt``
    (its index) and ``_score`` (how many of its keys are present)."""
    scores = [pl.sum_horizontal(_present(fmt)).cast(pl.Int32) for fmt in formats]
    if len(scores) == 1:
        return pl.lit(0, pl.Int32).alias("_fmt"), scores[0].alias("_score")
    best_idx, best = pl.lit(0, pl.Int32), pl.lit(-1, pl.Int32)
    for i, score in enumerate(scores):
        better = score > best
        best_idx = pl.when(better).then(pl.lit(i, pl.Int32)).otherwise(best_idx)
        best = pl.when(better).then(score).otherwise(best)
    return best_idx.alias("_fmt"), best.alias("_score")


def _threshold(fmt: Format) -> int:
    return min(_MIN_KEYS, len(fmt.fields))


def _present(fmt: Format) -> list[pl.Expr]:
    return [pl.col(_JSON + f.key).is_not_null().cast(pl.Int32) for f in fmt.fields]


def _time_key(fmt: Format) -> str | None:
    found = fmt.columns().get("start_time")
    return _JSON + found.key if found else None


def _is_entry(fmt: Format) -> pl.Expr:
    enough = pl.col("_score") >= _threshold(fmt)
    key = _time_key(fmt)
    return enough & pl.col(key).is_not_null() if key else enough


def _json_rejects(
    values: pl.DataFrame, frame: pl.DataFrame, formats: Sequence[Format]
) -> pl.DataFrame:
    missing = _missing_start(formats) & pl.col("_err").is_null()
    if not values.select(pl.col("_err").is_not_null().any() | missing.any()).item():
        return empty({**REJECT_SCHEMA, _ROW: pl.UInt32()})
    invalid = values.filter(pl.col("_err").is_not_null())
    reason = pl.when(pl.col("_err").str.starts_with("truncated")).then(
        pl.lit(RejectReason.TRUNCATED.value)
    )
    invalid_rows = invalid.with_columns(
        reason=reason.otherwise(pl.lit(RejectReason.INVALID_JSON.value)),
        detail=pl.col("_err").str.split_exact(":", 1).struct.field("field_1").str.slice(0, 120),
    )
    missing_rows = values.filter(missing).with_columns(
        reason=pl.lit(RejectReason.MISSING_FIELD.value),
        detail=pl.lit("an access-log JSON object without its start time"),
    )
    return _reject_frame(pl.concat([invalid_rows, missing_rows], how="diagonal_relaxed"), frame)


def _missing_start(formats: Sequence[Format]) -> pl.Expr:
    """A line shaped like one of ``formats`` (enough of its keys) but without its start time."""
    missing = pl.lit(False)
    for i, fmt in enumerate(formats):
        key = _time_key(fmt)
        if key is not None:
            shaped = (pl.col("_fmt") == i) & (pl.col("_score") >= _threshold(fmt))
            missing = missing | (shaped & pl.col(key).is_null())
    return missing


# ---- TEXT -------------------------------------------------------------------------------------


def _decode_text(frame: pl.DataFrame, formats: Sequence[Format]) -> _Part:
    if frame.height == 0 or not formats:
        return _Part([], [])
    probes = pl.any_horizontal([pl.col("text").str.contains(p) for p in _probes(formats)])
    remaining = frame.filter(probes).with_columns(
        pl.col("text").str.count_matches('"', literal=True).alias(_QUOTES)
    )
    entries = []
    for fmt in formats:
        if remaining.height == 0:
            break
        # A line with fewer quotes than the format's own cannot match it: a cheap count spares
        # a newer layout's regex (the one tried first) on an older layout's lines.
        fewer = pl.col(_QUOTES) < sum(literal.count('"') for literal in fmt.literals)
        skipped, remaining = remaining.filter(fewer), remaining.filter(~fewer)
        first, *more = fmt.passes or (fmt.pattern,)
        groups = pl.col("text").str.extract_groups(first).alias(_GROUPS)
        tried = _streamed(remaining.lazy().with_columns(groups))
        hit = tried[_GROUPS].struct.field("m").is_not_null()
        matched = tried.lazy().filter(hit).unnest(_GROUPS)
        for i, pattern in enumerate(more):  # the other fields of the lines that matched
            name = f"{_GROUPS}{i}"
            matched = matched.with_columns(
                pl.col("text").str.extract_groups(pattern).alias(name)
            ).unnest(name)
        entries.append(_normalise(matched, fmt))
        remaining = pl.concat([tried.filter(~hit).drop(_GROUPS), skipped])
    return _split_bad(entries, [_text_rejects(remaining.drop(_QUOTES), formats)], frame)


def _probes(formats: Sequence[Format]) -> list[str]:
    """Each distinct probe once: most formats of one family share theirs."""
    return list(dict.fromkeys(f.probe for f in formats))


def _streamed(query: pl.LazyFrame) -> pl.DataFrame:
    """``query`` on the streaming engine, which runs row-wise work (regexes, parsing) on every
    core, a morsel each, where an eager ``Series`` method runs on one; the order of the rows
    is kept."""
    return query.collect(engine="streaming")


def _text_rejects(frame: pl.DataFrame, formats: Sequence[Format]) -> pl.DataFrame:
    reasons = [_diagnose(t or "", formats) for t in frame["text"].to_list()]
    rows = frame.with_columns(
        reason=pl.Series([r[0].value for r in reasons], dtype=pl.String),
        detail=pl.Series([r[1] for r in reasons], dtype=pl.String),
    )
    return _reject_frame(rows, frame)


def _diagnose(text: str, formats: Sequence[Format]) -> tuple[RejectReason, str]:
    """Why ``text`` matches no format: the format it got furthest into, and where it stopped."""
    best_fmt, best_k, best_end = formats[0], -1, 0
    for fmt in formats:
        k, end = _furthest(fmt, text)
        if (end, k) > (best_end, best_k):
            best_fmt, best_k, best_end = fmt, k, end
    if best_k >= len(best_fmt.steps):
        return (
            RejectReason.FORMAT_MISMATCH,
            f"{best_fmt.name}: unexpected text after the last field",
        )
    expected = best_fmt.labels[best_k]
    rest = text[best_end:]
    if not rest or best_fmt.literals[best_k].startswith(rest):
        return RejectReason.TRUNCATED, f"{best_fmt.name}: line ends before {expected}"
    found = text[best_end : best_end + 24]
    detail = f"{best_fmt.name}: expected {expected} at column {best_end + 1}, found {found!r}"
    return RejectReason.FORMAT_MISMATCH, detail


def _furthest(fmt: Format, text: str) -> tuple[int, int]:
    """The most tokens of ``fmt`` a prefix of ``text`` matches, and where that prefix ends."""
    for k in range(len(fmt.steps), 0, -1):
        match = _prefix_regex(fmt.steps[:k]).match(text)
        if match is not None:
            return k, match.end()
    return 0, 0


@cache
def _prefix_regex(steps: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("".join(steps))


# ---- one line at a time ----------------------------------------------------------------------


def newest_start(texts: Sequence[str], formats: FormatSet) -> datetime | None:
    """The newest start time among ``texts`` that are entries of ``formats``, None when none
    is: a cheap look at a few lines (how far a block of a log went in time), line by line in
    Python, where ``decode`` would pay its fixed cost per call. Only the start time is read:
    from a JSON line's start-time key, from a TEXT line's head (``Format.start_head``); it
    is parsed as ``decode`` parses it."""
    found: dict[str | None, list[str]] = {}
    for text in texts:
        is_json = text.startswith("{")
        hit = _json_start(text, formats.json) if is_json else _text_start(text, formats.text)
        if hit is not None:
            found.setdefault(hit[0], []).append(hit[1])
    newest: list[datetime] = []
    for time_format, values in found.items():
        raw = pl.Series("v", values, dtype=pl.String).to_frame()
        parsed = raw.select(_time(pl.col("v"), time_format)).to_series().max()
        if isinstance(parsed, datetime):
            newest.append(parsed)
    return max(newest, default=None)


def _json_start(text: str, formats: Sequence[Format]) -> tuple[str | None, str] | None:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    for fmt in formats:
        found = fmt.columns().get("start_time")
        if found is None:
            continue
        value = obj.get(found.key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return found.time_format, str(value)
    return None


def _text_start(text: str, formats: Sequence[Format]) -> tuple[str | None, str] | None:
    for fmt in formats:
        found = fmt.columns().get("start_time")
        if found is None or not fmt.start_head:
            continue
        match = _head_regex(fmt.start_head).match(text)
        if match is not None:
            return found.time_format, match.group(found.key)
    return None


@cache
def _head_regex(head: str) -> re.Pattern[str]:
    return re.compile(head)


# ---- shared -----------------------------------------------------------------------------------


def _normalise(raw: pl.LazyFrame, fmt: Format, prefix: str = "") -> pl.DataFrame:
    """Typed ENTRY columns from a format's raw string values, on the streaming engine; ``_bad``
    names a bad value (the first column whose value is not of its type), null on the lines
    without one."""
    exprs: list[pl.Expr] = [pl.col(c) for c in _META]
    flags: list[pl.Expr] = []
    messages: list[pl.Expr] = []
    for column, fld in fmt.columns().items():
        raw_value = pl.col(prefix + fld.key)
        clean = pl.when(raw_value == "-").then(None).otherwise(raw_value)
        value = _typed(clean, column, fld.value_type, fld.time_format)
        exprs.append(value.alias(column))
        if fld.value_type is not ValueType.STRING:
            wrong = clean.is_not_null() & value.is_null()
            message = pl.concat_str(
                pl.lit(f"{column}: not a valid value: "), clean.str.slice(0, 40)
            )
            flags.append(wrong)
            messages.append(pl.when(wrong).then(message))
    flag = pl.any_horizontal(flags) if flags else pl.lit(False)
    typed = raw.select(*exprs, flag.alias(_BAD)).with_columns(format=pl.lit(fmt.name))
    if "upstream_cluster" in fmt.columns():
        typed = typed.with_columns(pl.col("upstream_cluster").str.strip_suffix(";"))
    out = _streamed(typed)
    return out.with_columns(_bad_messages(raw, out.get_column(_BAD), messages))


def _bad_messages(raw: pl.LazyFrame, flagged: pl.Series, messages: list[pl.Expr]) -> pl.Series:
    """``_bad``: each flagged line's message, null elsewhere; the messages are built for the
    flagged lines only (usually none)."""
    where = flagged.arg_true()
    column = pl.Series(_BAD, [None] * flagged.len(), dtype=pl.String)
    if where.len() == 0:
        return column
    found = raw.collect()[where].select(pl.coalesce(messages)).to_series()
    return column.scatter(where, found)


def _typed(clean: pl.Expr, column: str, kind: ValueType, time_format: str | None) -> pl.Expr:
    if kind is ValueType.INT:
        return clean.cast(ENTRY_SCHEMA[column], strict=False)
    if kind is ValueType.TIME:
        return _time(clean, time_format)
    return clean


def _time(clean: pl.Expr, time_format: str | None) -> pl.Expr:
    if time_format is None:
        return clean.str.to_datetime(_DEFAULT_TIME, time_unit="us", time_zone="UTC", strict=False)
    if time_format.startswith("%s"):
        micros = (
            (clean.cast(pl.Float64, strict=False) * 1_000_000).round().cast(pl.Int64, strict=False)
        )
        return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")
    chrono = chrono_format(time_format)
    return clean.str.to_datetime(chrono, time_unit="us", time_zone="UTC", strict=False)


def _split_bad(
    entries: list[pl.DataFrame], rejects: list[pl.DataFrame], frame: pl.DataFrame
) -> _Part:
    """Entries with a bad value become BAD_FIELD rejects."""
    good, bad = [], list(rejects)
    for part in entries:
        if part.get_column(_BAD).null_count() == part.height:
            good.append(part.drop(_BAD))  # nothing bad: the common case, no filtering
            continue
        good.append(part.filter(pl.col(_BAD).is_null()).drop(_BAD))
        rows = part.filter(pl.col(_BAD).is_not_null())
        rows = rows.select(_ROW, reason=pl.lit(RejectReason.BAD_FIELD.value), detail=pl.col(_BAD))
        bad.append(_reject_frame(rows, frame))
    return _Part(good, bad)


def _reject_frame(rows: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    joined = rows.select(_ROW, "reason", "detail").join(frame, on=_ROW, how="left")
    return joined.select(
        _ROW,
        "source",
        "line_no",
        "reason",
        "detail",
        excerpt=pl.col("text").str.slice(0, 200),
    )


def _concat(frames: Sequence[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else empty(schema)


def _sum_counts(counts: Sequence[dict[LineResult, int]]) -> dict[LineResult, int]:
    out = dict.fromkeys(LineResult, 0)
    for c in counts:
        for key, value in c.items():
            out[key] += value
    return out
