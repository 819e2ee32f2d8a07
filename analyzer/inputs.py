"""Inputs (an edge: it does I/O): paths, directories, globs and ``-`` become decoded chunks.

Each source is read in blocks of bytes (memory stays bounded whatever the file size), gzip is
recognised by its magic bytes, and its framing is removed by its own ``Deframer``. Sources are
interleaved in time order at chunk granularity: the next chunk comes from the source whose
entries so far end earliest (start_time + duration), so a correlator with a time window sees the
client's and the server's entries close together even when the files are given in any order.
"""

from __future__ import annotations

import functools
import glob
import gzip
import heapq
import io
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

import polars as pl

from analyzer.decode import Decoded, decode_framed
from analyzer.errors import FormatError, InputError, MalformedEntryError
from analyzer.formats import Format, FormatSet, parse_log_format
from analyzer.framing import Deframer, Framed, Framing
from analyzer.lines import MAX_LINE_BYTES
from analyzer.schema import REJECT_SCHEMA
from analyzer.vocab import LineResult, RejectReason

STDIN = "-"
BLOCK_BYTES = 8 << 20
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class InputSource:
    """One thing to read: a file, a stream ``opener`` gives when it is first read (a pod's log
    from the API, named ``namespace/pod``), or standard input (neither)."""

    name: str
    path: Path | None = None
    opener: Callable[[], BinaryIO] | None = None

    @property
    def owned(self) -> bool:
        """Whether reading it opens something that must be closed (not stdin)."""
        return self.path is not None or self.opener is not None


# In a directory, the files that look like logs: *.log, rotated *.log.N / *.log.<date>,
# *.txt, *.gz, and names without a suffix. Files named on the command line are always read.
LOG_NAME = re.compile(r"\.log(\.|$)|\.txt$|\.gz$|^[^.]+$")


@dataclass(frozen=True)
class Expansion:
    sources: list[InputSource]
    skipped: list[Path]  # files inside directories that do not look like logs


def expand(args: Sequence[str]) -> list[InputSource]:
    """Files, directories (recursively, sorted), globs and ``-``, in the order given."""
    return expand_all(args).sources


def expand_all(args: Sequence[str]) -> Expansion:
    """``expand``, also saying which files inside directories were left out."""
    out: list[InputSource] = []
    skipped: list[Path] = []
    for arg in args:
        out.extend(_expand_one(arg, skipped))
    return Expansion(list(dict.fromkeys(out)), skipped)


def _expand_one(arg: str, skipped: list[Path]) -> list[InputSource]:
    if arg == STDIN:
        return [InputSource(STDIN)]
    path = Path(arg)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        skipped.extend(p for p in files if not LOG_NAME.search(p.name))
        return [InputSource(str(p), p) for p in files if LOG_NAME.search(p.name)]
    if path.exists():
        return [InputSource(arg, path)]
    if glob.has_magic(arg):
        matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
        if matches:
            return [src for m in matches for src in _expand_one(str(m), skipped)]
        raise InputError(
            f"{arg}: the pattern matches no file. Check it, and quote it for your shell."
        )
    raise InputError(f"{arg}: no such file or directory. Check the path; pass - to read stdin.")


def open_source(source: InputSource, stdin: BinaryIO | None = None) -> BinaryIO:
    """A binary stream of the source's bytes, gunzipped when it starts with gzip's magic."""
    raw = _open_raw(source, stdin)
    if isinstance(raw, io.BufferedReader):
        buffered = raw
    else:
        buffered = io.BufferedReader(_Raw(raw, owned=source.opener is not None))
    try:
        magic = buffered.peek(2)[:2]
    except OSError as exc:
        buffered.close()
        raise InputError(f"{source.name}: read failed ({exc.strerror or exc}).") from exc
    if magic == _GZIP_MAGIC:
        return cast(BinaryIO, gzip.GzipFile(fileobj=buffered, mode="rb"))
    return buffered


class _Raw(io.RawIOBase):
    """Any binary stream as a raw stream, so ``BufferedReader`` can peek at its first bytes."""

    def __init__(self, stream: BinaryIO, *, owned: bool = False) -> None:
        self._stream = stream
        self._owned = owned  # closing this closes the stream (not stdin's)

    def close(self) -> None:
        if self._owned and not self.closed:
            self._stream.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # typeshed: WriteableBuffer
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _open_raw(source: InputSource, stdin: BinaryIO | None) -> BinaryIO:
    if source.opener is not None:
        return source.opener()
    if source.path is None:
        return stdin if stdin is not None else sys.stdin.buffer
    try:
        return source.path.open("rb")
    except FileNotFoundError as exc:
        raise InputError(f"{source.name}: no such file (was it rotated away?).") from exc
    except PermissionError as exc:
        raise InputError(
            f"{source.name}: permission denied; run wslog as a user who can read it."
        ) from exc
    except OSError as exc:
        raise InputError(f"{source.name}: cannot be read ({exc.strerror}).") from exc


def read_blocks(stream: BinaryIO, name: str, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The stream's bytes in blocks; a corrupt gzip stream becomes an ``InputError`` after
    every byte it could give (a truncated ``.gz`` keeps its complete lines)."""
    read = _read_what_decompresses if isinstance(stream, gzip.GzipFile) else _read_block
    kept: list[bytes] = []
    try:
        while block := read(stream, block_bytes, kept):
            yield block
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        if kept:
            yield b"".join(kept)
        raise InputError(f"{name}: not a valid gzip file ({exc}); is it truncated?") from exc
    except OSError as exc:
        raise InputError(f"{name}: read failed ({exc.strerror or exc}).") from exc


def _read_block(stream: BinaryIO, size: int, kept: list[bytes]) -> bytes:
    return stream.read(size)


def _read_what_decompresses(stream: BinaryIO, size: int, kept: list[bytes]) -> bytes:
    """Up to ``size`` bytes, one decompressed piece at a time, so that pieces decompressed
    before the stream breaks stay in ``kept`` for the caller (``read`` would drop them)."""
    gz = cast(gzip.GzipFile, stream)
    total = sum(len(piece) for piece in kept)
    while total < size and (piece := gz.read1(size - total)):
        kept.append(piece)
        total += len(piece)
    block = b"".join(kept)
    kept.clear()
    return block


def load_log_format(spec: str, name: str = "custom") -> Format:
    """``--log-format``: a format string, a JSON format object, or ``@file`` holding either."""
    if not spec.startswith("@"):
        return parse_log_format(spec, name)
    path = Path(spec[1:])
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--log-format {spec}: cannot read {path} ({exc.strerror}).") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"--log-format {spec}: {path} is not UTF-8 text.") from exc
    return parse_log_format(text, name)


@dataclass
class SourceReader:
    """Reads, deframes and decodes one source, a block at a time."""

    source: InputSource
    formats: FormatSet
    block_bytes: int = BLOCK_BYTES
    framing: Framing | None = None
    stdin: BinaryIO | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    counts: dict[LineResult, int] = field(default_factory=lambda: dict.fromkeys(LineResult, 0))
    # How far this source has got: the start of the last entry read. Not the newest ever read:
    # a source that goes back in time (one pod's log after another's) has got only as far as
    # the segment it is in; in write order a long entry's old start only makes it cautious.
    progress_us: int | None = None
    _stream: BinaryIO | None = field(default=None, init=False)
    _blocks: Iterator[bytes] | None = field(default=None, init=False)
    _deframer: Deframer | None = field(default=None, init=False)
    _done: bool = field(default=False, init=False)

    @property
    def done(self) -> bool:
        return self._done

    @functools.cached_property
    def size(self) -> int | None:
        """The file's size in bytes (compressed, for a ``.gz``); None for stdin. Read once:
        the progress display asks for it after every chunk."""
        if self.source.path is None:
            return None
        try:
            return self.source.path.stat().st_size
        except OSError:
            return None

    def position(self) -> int:
        """Bytes of the file read so far (of the compressed file, for a ``.gz``)."""
        if self._done:
            return self.size or 0
        stream = self._stream
        if stream is None or self.source.path is None:
            return 0
        raw = stream.fileobj if isinstance(stream, gzip.GzipFile) else stream
        return int(raw.tell()) if raw is not None else 0

    def next_chunk(self) -> Decoded | None:
        """The next decoded chunk; ``None`` once the source is exhausted."""
        if self._done:
            return None
        blocks, deframer = self._open()
        while True:  # a block inside one long line gives nothing to decode: read on
            try:
                block = next(blocks, None)
            except InputError as exc:
                return self._cut_short(deframer, exc)
            if block is None:
                self._done = True
                self.close()
                return self._account(deframer.flush())
            framed = deframer.feed_bytes(block)
            if framed.lines.height or framed.rejects.height:
                return self._account(framed)

    def _cut_short(self, deframer: Deframer, exc: InputError) -> Decoded:
        """The stream broke (a truncated gzip, a read error): keep every line read so far and
        count the unreadable rest as one malformed line that says why."""
        self._done = True
        self.close()
        flushed = deframer.flush()
        line_no = deframer.lines_seen + 1
        rest = pl.DataFrame(
            {
                "source": [self.source.name],
                "line_no": [line_no],
                "reason": [RejectReason.TRUNCATED.value],
                "detail": [str(exc)[:200]],
                "excerpt": [""],
            },
            schema=REJECT_SCHEMA,
        )
        return self._account(Framed(flushed.lines, pl.concat([flushed.rejects, rest])))

    def _open(self) -> tuple[Iterator[bytes], Deframer]:
        if self._blocks is None or self._deframer is None:
            stream = open_source(self.source, self.stdin)
            self._stream = stream
            self._blocks = read_blocks(stream, self.source.name, self.block_bytes)
            self._deframer = Deframer(self.source.name, self.framing, self.max_line_bytes)
        return self._blocks, self._deframer

    def close(self) -> None:
        if self.source.owned and self._stream is not None:
            inner = self._stream.fileobj if isinstance(self._stream, gzip.GzipFile) else None
            self._stream.close()
            if inner is not None:
                inner.close()  # GzipFile leaves the file it was given open
            self._stream = None

    def _account(self, framed: Framed) -> Decoded:
        decoded = decode_framed(framed, self.formats)
        for result, n in decoded.counts.items():
            self.counts[result] += n
        last = decoded.entries.get_column("start_time").dt.epoch("us").drop_nulls().tail(1)
        if last.len():
            self.progress_us = int(last.item())
        return decoded


@dataclass
class InputSet:
    """All sources of a run, decoded chunk by chunk in time order, with per-source accounting."""

    sources: Sequence[InputSource]
    formats: FormatSet
    block_bytes: int = BLOCK_BYTES
    strict: bool = False
    framing: Framing | None = None
    stdin: BinaryIO | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    readers: list[SourceReader] = field(init=False)

    def __post_init__(self) -> None:
        self.readers = [
            SourceReader(
                s,
                self.formats,
                self.block_bytes,
                self.framing,
                self.stdin,
                max_line_bytes=self.max_line_bytes,
            )
            for s in self.sources
        ]

    def __iter__(self) -> Iterator[Decoded]:
        heap = [(-1, i) for i in range(len(self.readers))]
        try:
            while heap:
                _, i = heapq.heappop(heap)
                reader = self.readers[i]
                chunk = reader.next_chunk()
                if chunk is None:
                    continue
                self._check_strict(chunk)
                heapq.heappush(heap, (reader.progress_us or -1, i))
                yield chunk
        finally:  # --strict stopped, or the consumer did: no file stays open
            for reader in self.readers:
                reader.close()

    def total_bytes(self) -> int | None:
        """The size of every input, when all are files (None with stdin)."""
        sizes = [reader.size for reader in self.readers]
        return None if any(size is None for size in sizes) else sum(s or 0 for s in sizes)

    def bytes_read(self) -> int:
        return sum(reader.position() for reader in self.readers)

    def sources_read(self) -> int:
        """How many sources were read to their end."""
        return sum(reader.done for reader in self.readers)

    def low_watermark(self) -> datetime:
        """How far every input has got: the oldest progress among the sources not yet exhausted
        (the minimum time while one has not started). A log in write order or in start order
        has shown every entry of a connection once it has shown an entry starting a correlation
        window after that connection's end (see ``analyzer.correlate``)."""
        ends = [r.progress_us for r in self.readers if not r.done]
        if not ends:
            return datetime.max.replace(tzinfo=UTC)
        if any(end is None for end in ends):
            return datetime.min.replace(tzinfo=UTC)
        oldest = min(end for end in ends if end is not None)
        return datetime.fromtimestamp(oldest / 1e6, tz=UTC)

    def accounting(self) -> dict[str, dict[LineResult, int]]:
        """Lines per result, per source (the input's name, not the pod a prefix names)."""
        return {r.source.name: dict(r.counts) for r in self.readers}

    def _check_strict(self, chunk: Decoded) -> None:
        if not self.strict or chunk.rejects.height == 0:
            return
        first = chunk.rejects.row(0, named=True)
        raise MalformedEntryError(
            f"{first['source']}:{first['line_no']}: {first['reason']}: {first['detail']}. "
            "Fix or remove the line, pass --log-format if the format is custom, "
            "or run without --strict to count and skip malformed lines."
        )


def decode_inputs(
    args: Sequence[str], formats: FormatSet, *, strict: bool = False, block_bytes: int = BLOCK_BYTES
) -> Iterator[Decoded]:
    """Expand ``args`` and yield their decoded chunks in time order."""
    yield from InputSet(expand(args), formats, block_bytes=block_bytes, strict=strict)
