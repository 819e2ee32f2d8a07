"""Framing: what wraps a log line before it is an access-log entry.

``kubectl logs`` may add a kubelet timestamp (``--timestamps``) or a ``[pod/NAME/CONTAINER]``
prefix (``--prefix``); node-local files are CRI (``<RFC3339Nano> stdout F <text>``, where ``P``
marks a partial line continued by the next) or Docker json-file; ``docker compose logs -t``
prefixes ``service | <RFC3339Nano>``. The framing is detected once per source from its first
lines, then a stateful ``Deframer`` removes it chunk by chunk: a line cut at a chunk end and a CRI
or Docker partial line waiting for its continuation are carried to the next chunk, so feeding
one chunk or many gives the same lines. Everything is vectorised with polars; per-line Python
runs only for bytes that are not UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import polars as pl

from analyzer.lines import HEAD_BYTES, MAX_LINE_BYTES, LineAssembler, Overlong, Segment
from analyzer.schema import LINE_SCHEMA, REJECT_SCHEMA, UTC_US, conform, empty
from analyzer.vocab import RejectReason


class Framing(StrEnum):
    RAW = "raw"
    KUBECTL_TIMESTAMPS = "kubectl-timestamps"
    KUBECTL_PREFIX = "kubectl-prefix"
    CRI = "cri"
    DOCKER_JSON = "docker-json"
    COMPOSE = "compose"


_TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"
PATTERNS: dict[Framing, str] = {
    Framing.CRI: rf"^(?P<ts>{_TS}) (?P<stream>stdout|stderr) (?P<tag>[FP])(?: (?P<text>.*))?$",
    Framing.DOCKER_JSON: r'^\{"log":',
    Framing.KUBECTL_PREFIX: (
        rf"^\[pod/(?P<pod>[^/\]]+)/(?P<container>[^\]]+)\] (?:(?P<ts>{_TS}) )?(?P<text>.*)$"
    ),
    Framing.COMPOSE: rf"^(?P<svc>[A-Za-z0-9][\w.-]*)\s+\| (?:(?P<ts>{_TS}) )?(?P<text>.*)$",
    Framing.KUBECTL_TIMESTAMPS: rf"^(?P<ts>{_TS})(?: (?P<text>.*))?$",
}
_KEY_GROUP = {
    Framing.CRI: "ts",
    Framing.KUBECTL_PREFIX: "pod",
    Framing.COMPOSE: "svc",
    Framing.KUBECTL_TIMESTAMPS: "ts",
}
_DOCKER_DTYPE = pl.Struct({"log": pl.String, "stream": pl.String, "time": pl.String})
_SAMPLE = 200


@dataclass(frozen=True)
class Framed:
    """Deframed lines (LINE_SCHEMA) and the physical lines that could not be deframed."""

    lines: pl.DataFrame
    rejects: pl.DataFrame

    @staticmethod
    def concat(parts: Sequence[Framed]) -> Framed:
        lines = [p.lines for p in parts]
        rejects = [p.rejects for p in parts]
        return Framed(_concat(lines, LINE_SCHEMA), _concat(rejects, REJECT_SCHEMA))


def detect(texts: pl.Series) -> Framing | None:
    """The framing most of the non-empty sample lines have; ``None`` when there are none."""
    sample = texts.filter(texts.str.len_bytes() > 0).head(_SAMPLE)
    if sample.len() == 0:
        return None
    for framing, pattern in PATTERNS.items():
        if 2 * sample.str.contains(pattern).sum() >= sample.len():
            return framing
    return Framing.RAW


class Deframer:
    """Removes one source's framing, chunk after chunk (the exporter feeds it a live stream)."""

    def __init__(
        self, source: str, framing: Framing | None = None, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self.source = source
        self.framing = framing
        self.max_line_bytes = max_line_bytes
        self._next_line_no = 1
        self._assembler = LineAssembler(max_line_bytes)
        self._pending = _empty_pending()

    @property
    def lines_seen(self) -> int:
        return self._next_line_no - 1

    def feed_bytes(self, data: bytes) -> Framed:
        """Deframe the complete lines of ``data``; a trailing piece waits for its newline."""
        return self._feed_segments(self._assembler.feed(data))

    def feed_lines(
        self, lines: Sequence[str | Overlong] | pl.Series, *, strip_cr: bool = True
    ) -> Framed:
        """Deframe complete lines (without their newlines). Lines a source decoded with
        ``surrogateescape`` (bytes that are not UTF-8) are rejected as ``encoding``, and lines
        over ``max_line_bytes`` as ``too-long``: one rule for every source."""
        if not isinstance(lines, pl.Series):
            if any(isinstance(line, Overlong) for line in lines):
                return self._feed_with_overlong(lines)
            texts_only = cast(Sequence[str], lines)
            if not _utf8(texts_only):
                raws = (line.encode("utf-8", errors="surrogateescape") for line in texts_only)
                return self._feed_undecodable(b"\n".join(raws))
        texts = lines.rename("text") if isinstance(lines, pl.Series) else pl.Series("text", lines)
        texts = texts.cast(pl.String)
        if strip_cr:
            texts = texts.str.strip_suffix("\r")
        first = self._next_line_no
        self._next_line_no += texts.len()
        numbered = pl.DataFrame({"line_no": pl.int_range(first, first + texts.len(), eager=True)})
        numbered = numbered.with_columns(texts)
        long = numbered["text"].str.len_bytes() > self.max_line_bytes
        if long.any():
            too_long = self._too_long_rejects(numbered.filter(long))
            framed = self._deframe_detecting(numbered.filter(~long))
            return Framed(framed.lines, _concat([too_long, framed.rejects], REJECT_SCHEMA))
        return self._deframe_detecting(numbered)

    def flush(self) -> Framed:
        """End of source: the unterminated last line and any partial line become lines."""
        parts = [self._feed_segments(self._assembler.finish())]
        pending, self._pending = self._pending, _empty_pending()
        lines = conform(pending.with_columns(source=pl.lit(self.source)), LINE_SCHEMA)
        parts.append(Framed(lines, empty(REJECT_SCHEMA)))
        return Framed.concat(parts)

    def _deframe_detecting(self, numbered: pl.DataFrame) -> Framed:
        if self.framing is None:
            self.framing = detect(numbered["text"])
        return self._deframe(numbered)

    def _feed_segments(self, segments: Sequence[Segment]) -> Framed:
        parts = [
            self._overlong(segment)
            if isinstance(segment, Overlong)
            else self._feed_block(segment, len(segment) - 1)
            for segment in segments
        ]
        return Framed.concat(parts) if parts else Framed(empty(LINE_SCHEMA), empty(REJECT_SCHEMA))

    def _feed_with_overlong(self, lines: Sequence[str | Overlong]) -> Framed:
        parts: list[Framed] = []
        texts: list[str] = []
        for line in lines:
            if isinstance(line, Overlong):
                parts.append(self.feed_lines(texts))
                parts.append(self._overlong(line))
                texts = []
            else:
                texts.append(line)
        parts.append(self.feed_lines(texts))
        return Framed.concat(parts)

    def _overlong(self, line: Overlong) -> Framed:
        line_no = self._next_line_no
        self._next_line_no += 1
        detail = f"line of {line.length} bytes{self._over_bound}"
        reject = _reject_row(self.source, line_no, RejectReason.TOO_LONG, detail, line.excerpt())
        return Framed(empty(LINE_SCHEMA), reject)

    @property
    def _over_bound(self) -> str:
        return f", over --max-line-bytes {self.max_line_bytes}"

    def _too_long_rejects(self, long: pl.DataFrame, *, at_least: bool = False) -> pl.DataFrame:
        length = pl.col("text").str.len_bytes().cast(pl.String)
        prefix = "line of at least " if at_least else "line of "
        out = long.select(
            source=pl.lit(self.source),
            line_no="line_no",
            reason=pl.lit(RejectReason.TOO_LONG.value),
            detail=pl.lit(prefix) + length + pl.lit(" bytes" + self._over_bound),
            excerpt=pl.col("text").str.slice(0, HEAD_BYTES),
        )
        return conform(out, REJECT_SCHEMA)

    def _feed_block(self, block: bytes, cut: int) -> Framed:
        """Deframe the lines of ``block[:cut]`` (``block[cut]`` is its last newline)."""
        try:
            texts = pl.read_lines(block, name="text")["text"]
        except pl.exceptions.ComputeError:
            return self._feed_undecodable(block[:cut])
        if cut + 1 < len(block):
            texts = texts.head(-1)
        return self.feed_lines(texts, strip_cr=b"\r" in block)

    def _feed_undecodable(self, block: bytes) -> Framed:
        """Per-line decode: lines that are not UTF-8 are rejected, the others deframed."""
        parts, good = [], []
        for raw in block.split(b"\n"):
            try:
                good.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                parts.append(self.feed_lines(good))
                good = []
                parts.append(self._encoding_reject(raw, exc))
        parts.append(self.feed_lines(good))
        return Framed.concat(parts)

    def _encoding_reject(self, raw: bytes, exc: UnicodeDecodeError) -> Framed:
        line_no = self._next_line_no
        self._next_line_no += 1
        text = raw.decode("utf-8", errors="replace")
        reject = _reject_row(self.source, line_no, RejectReason.ENCODING, str(exc)[:120], text)
        return Framed(empty(LINE_SCHEMA), reject)

    def _deframe(self, frame: pl.DataFrame) -> Framed:
        if self.framing is None or self.framing is Framing.RAW:
            return Framed(_with_source(frame, self.source), empty(REJECT_SCHEMA))
        blank = frame["text"].str.len_bytes() == 0
        passed = _with_source(frame.filter(blank), self.source)
        framed = self._by_framing(frame.filter(~blank))
        lines = _concat([passed, framed.lines], LINE_SCHEMA).sort("line_no")
        return Framed(lines, framed.rejects)

    def _by_framing(self, frame: pl.DataFrame) -> Framed:
        framing = self.framing
        if framing is None or framing is Framing.RAW:
            return Framed(_with_source(frame, self.source), empty(REJECT_SCHEMA))
        if framing is Framing.DOCKER_JSON:
            return self._join_partials(_docker_fields(frame), frame)
        groups = frame["text"].str.extract_groups(PATTERNS[framing]).struct.unnest()
        return self._extract(frame, groups.with_columns(frame["line_no"]), framing)

    def _extract(self, frame: pl.DataFrame, fields: pl.DataFrame, framing: Framing) -> Framed:
        ok = fields[_KEY_GROUP[framing]].is_not_null()
        bad = frame.filter(~ok)
        good = fields.filter(ok)
        if framing is Framing.COMPOSE:
            return self._compose(good, bad)
        rejects = _framing_rejects(bad, self.source, framing)
        if framing is Framing.CRI:
            joined = self._join_partials(_cri_fields(good), None)
            return Framed(joined.lines, _concat([rejects, joined.rejects], REJECT_SCHEMA))
        lines = self._timestamped(good)
        return Framed(lines, rejects)

    def _timestamped(self, good: pl.DataFrame) -> pl.DataFrame:
        source = pl.lit(self.source)
        if self.framing is Framing.KUBECTL_PREFIX:
            # kubectl's own name for the stream; it carries no namespace
            source = pl.concat_str(pl.lit("pod/"), pl.col("pod"), pl.lit("/"), pl.col("container"))
        out = good.with_columns(
            source=source,
            log_time=_parse_ts(pl.col("ts")),
            text=pl.col("text").fill_null(""),
        )
        return conform(out, LINE_SCHEMA)

    def _compose(self, good: pl.DataFrame, bad: pl.DataFrame) -> Framed:
        """``docker compose logs``: lines without the prefix (e.g. "Attaching to") pass as raw."""
        framed = good.with_columns(source=pl.col("svc"), log_time=_parse_ts(pl.col("ts")))
        lines = _concat([conform(framed, LINE_SCHEMA), _with_source(bad, self.source)], LINE_SCHEMA)
        return Framed(lines.sort("line_no"), empty(REJECT_SCHEMA))

    def _join_partials(self, parts: pl.DataFrame, raw: pl.DataFrame | None) -> Framed:
        """Join partial lines (``final`` false) with their continuation, per stream."""
        rejects = empty(REJECT_SCHEMA)
        if raw is not None:
            ok = parts["final"].is_not_null()
            rejects = _framing_rejects(raw.filter(~ok), self.source, Framing.DOCKER_JSON)
            parts = parts.filter(ok)
        rows = pl.concat([self._pending, parts.select(self._pending.columns)])
        grouped = _group_partials(rows)
        # A line is held only up to the bound; past it the rest is counted, never kept.
        long = pl.col("text").str.len_bytes() > self.max_line_bytes
        grouped = grouped.with_columns(
            text=pl.when(long)
            .then(pl.col("text").str.slice(0, self.max_line_bytes + 1))
            .otherwise(pl.col("text"))
        )
        self._pending = grouped.filter(~pl.col("final"))
        done = grouped.filter(pl.col("final"))
        lines = conform(done.filter(~long).with_columns(source=pl.lit(self.source)), LINE_SCHEMA)
        too_long = self._too_long_rejects(done.filter(long), at_least=True)
        return Framed(lines.sort("line_no"), _concat([rejects, too_long], REJECT_SCHEMA))


def _group_partials(rows: pl.DataFrame) -> pl.DataFrame:
    group = pl.col("final").cast(pl.Int64).cum_sum().shift(1, fill_value=0).over("stream")
    return (
        rows.with_columns(group=group)
        .group_by("stream", "group", maintain_order=True)
        .agg(
            pl.col("line_no").first(),
            pl.col("log_time").first(),
            pl.col("text").str.join(""),
            pl.col("final").last(),
        )
        .select(_empty_pending().columns)
    )


def _empty_pending() -> pl.DataFrame:
    schema = {
        "stream": pl.String(),
        "line_no": pl.Int64(),
        "log_time": UTC_US,
        "text": pl.String(),
        "final": pl.Boolean(),
    }
    return pl.DataFrame(schema=schema)


def _cri_fields(good: pl.DataFrame) -> pl.DataFrame:
    return good.select(
        "stream",
        "line_no",
        log_time=_parse_ts(pl.col("ts")),
        text=pl.col("text").fill_null(""),
        final=pl.col("tag") == "F",
    )


def _docker_fields(frame: pl.DataFrame) -> pl.DataFrame:
    decoded = _docker_decode(frame["text"])
    log = decoded.struct.field("log")
    return pl.DataFrame(
        {
            "stream": decoded.struct.field("stream").fill_null("stdout"),
            "line_no": frame["line_no"],
            "log_time": _parse_ts_series(decoded.struct.field("time")),
            "text": log.str.strip_suffix("\n").str.strip_suffix("\r"),
            "final": log.str.ends_with("\n"),
        }
    )


def _docker_decode(texts: pl.Series) -> pl.Series:
    """``str.json_decode`` that turns each undecodable line into a null instead of failing."""
    if texts.len() == 0:
        return pl.Series(dtype=_DOCKER_DTYPE)
    try:
        return texts.str.json_decode(_DOCKER_DTYPE)
    except pl.exceptions.PolarsError:
        if texts.len() == 1:
            return pl.Series([None], dtype=_DOCKER_DTYPE)
        half = texts.len() // 2
        return pl.concat([_docker_decode(texts[:half]), _docker_decode(texts[half:])])


def _parse_ts(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)


def _parse_ts_series(series: pl.Series) -> pl.Series:
    return pl.select(_parse_ts(pl.lit(series))).to_series()


def _with_source(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    return conform(frame.with_columns(source=pl.lit(source)), LINE_SCHEMA)


def _framing_rejects(bad: pl.DataFrame, source: str, framing: Framing) -> pl.DataFrame:
    detail = f"not a {framing} line: the rest of this source is {framing}"
    out = bad.select(
        source=pl.lit(source),
        line_no="line_no",
        reason=pl.lit(RejectReason.BAD_FRAMING.value),
        detail=pl.lit(detail),
        excerpt=pl.col("text").str.slice(0, 200),
    )
    return conform(out, REJECT_SCHEMA)


def _reject_row(
    source: str, line_no: int, reason: RejectReason, detail: str, text: str
) -> pl.DataFrame:
    row = {"source": [source], "line_no": [line_no], "reason": [reason.value]}
    return pl.DataFrame({**row, "detail": [detail], "excerpt": [text[:200]]}, schema=REJECT_SCHEMA)


def _concat(frames: Sequence[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = [f for f in frames if f.height]
    return pl.concat(frames) if frames else empty(schema)


def _utf8(lines: Sequence[str]) -> bool:
    """Whether every line is valid text (no lone surrogates standing for undecodable bytes)."""
    try:
        "\n".join(lines).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
