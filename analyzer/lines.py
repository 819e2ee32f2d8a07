"""Bytes to lines, with a bound on a line's length: the one rule every input follows.

A log line has no natural limit: a Host header of megabytes, a binary file, ``/dev/zero`` or a
stream without a newline would otherwise grow a buffer until the process dies, and joining a
long line block by block would cost time quadratic in its length. ``LineAssembler`` holds at
most ``max_line_bytes`` of an unfinished line (in pieces, joined once); past that it keeps only
the line's first bytes and counts the rest until the newline comes, then reports the line as
``Overlong``. The deframer turns each ``Overlong`` into one malformed line (``too-long``) with
its number and first bytes, so nothing else around it is lost. ``wslog analyze`` and every
exporter source use this class, so both count the same lines the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "HEAD_BYTES",
    "MAX_LINE_BYTES",
    "LineAssembler",
    "Overlong",
    "decode_line",
    "split_segment",
]

MAX_LINE_BYTES = 1 << 20
HEAD_BYTES = 200


@dataclass(frozen=True)
class Overlong:
    """A line longer than the bound: its length in bytes (without the newline) and first bytes."""

    length: int
    head: bytes

    def excerpt(self) -> str:
        return self.head.decode("utf-8", errors="replace")


Segment = bytes | Overlong


class LineAssembler:
    """Cuts a byte stream into complete lines; feeding it one block or many gives the same lines.

    ``feed`` returns segments in stream order: a ``bytes`` segment holds one or more complete
    lines, each ending with ``\\n``; an ``Overlong`` stands for one line over the bound. Complete
    lines inside a block are passed through whatever their length: the caller checks those
    (vectorised) with ``too_long``.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self.max_line_bytes = max_line_bytes
        self._pieces: list[bytes] = []
        self._size = 0
        self._skipped: int | None = None  # inside an over-long line: its length so far
        self._head = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the unfinished line (never more than ``max_line_bytes``)."""
        return self._size

    def feed(self, data: bytes) -> list[Segment]:
        out: list[Segment] = []
        if self._skipped is not None:
            cut = data.find(b"\n")
            self._head += data[: max(0, HEAD_BYTES - len(self._head))][: cut if cut >= 0 else None]
            if cut < 0:
                self._skipped += len(data)
                return out
            out.append(Overlong(self._skipped + cut, self._head))
            self._skipped, self._head = None, b""
            data = data[cut + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(data)
            return out
        start = 0  # where the block's own complete lines begin
        if self._pieces:  # the held piece ends at the block's first newline
            first = data.find(b"\n")
            if self._size + first > self.max_line_bytes:
                head = (self._joined()[:HEAD_BYTES] + data[: min(first, HEAD_BYTES)])[:HEAD_BYTES]
                out.append(Overlong(self._size + first, head))
            else:
                out.append(self._joined() + data[: first + 1])
            self._pieces, self._size = [], 0
            start = first + 1
        if last >= start:  # one slice of the block (the block itself when it is whole lines)
            whole = start == 0 and last + 1 == len(data)
            out.append(data if whole else data[start : last + 1])
        self._hold(data[last + 1 :])
        return out

    def finish(self) -> list[Segment]:
        """End of the stream: an unterminated last line is a line after all."""
        if self._skipped is not None:
            tail: list[Segment] = [Overlong(self._skipped, self._head)]
            self._skipped, self._head = None, b""
            return tail
        if not self._pieces:
            return []
        line = self._joined() + b"\n"
        self._pieces, self._size = [], 0
        return [line]

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        if self._size + len(piece) > self.max_line_bytes:
            self._head = (self._joined()[:HEAD_BYTES] + piece[:HEAD_BYTES])[:HEAD_BYTES]
            self._skipped = self._size + len(piece)
            self._pieces, self._size = [], 0
            return
        self._pieces.append(piece)
        self._size += len(piece)

    def _joined(self) -> bytes:
        if len(self._pieces) > 1:
            self._pieces = [b"".join(self._pieces)]
        return self._pieces[0] if self._pieces else b""


def decode_line(raw: bytes) -> str:
    """A line's text without its ``\\r``; bytes that are not UTF-8 are kept (as lone
    surrogates) so that the deframer rejects the line as ``encoding``, as for every input."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="surrogateescape")


def split_segment(segment: bytes) -> list[str]:
    """The decoded lines of a ``bytes`` segment (complete lines, each ending with ``\\n``)."""
    return [decode_line(raw) for raw in segment[:-1].split(b"\n")]
