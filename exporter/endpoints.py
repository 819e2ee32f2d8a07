"""What each of the exporter's paths answers: /metrics (rendered at most once per interval
whoever asks, gzipped when asked), /healthz (the process runs), /readyz (sources OK, or why not;
"draining" once the sources have stopped). Values in, a ``Response`` out: no sockets here, the
server in exporter/server.py carries them."""

from __future__ import annotations

import gzip
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["Endpoints", "Readiness", "RenderCache", "Response", "accepts_gzip"]

Readiness = Callable[[], tuple[bool, str]]
TEXT = "text/plain; charset=utf-8"
NOT_FOUND = b"not found: try /metrics, /healthz or /readyz\n"
DRAINING = b"draining: the exporter is stopping; /metrics serves its final counts\n"
_Q_ZERO = re.compile(r"q\s*=\s*0(\.0*)?")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() == "gzip":
            return _Q_ZERO.fullmatch(params.strip().lower()) is None
    return False


@dataclass
class RenderCache:
    """The /metrics body, rendered at most once per ``min_interval_s`` however many scrape:
    concurrent scrapers wait for one render and share it."""

    render: Callable[[], bytes]
    min_interval_s: float
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rendered_at: float | None = None
    _plain: bytes = b""
    _gzipped: bytes | None = None

    def get(self, gzipped: bool) -> bytes:
        with self._lock:
            at = self._rendered_at
            if at is None or self.clock() - at >= self.min_interval_s:
                self._plain, self._gzipped = self.render(), None
                self._rendered_at = self.clock()
            if not gzipped:
                return self._plain
            if self._gzipped is None:
                self._gzipped = gzip.compress(self._plain, compresslevel=6, mtime=0)
            return self._gzipped

    def invalidate(self) -> None:
        with self._lock:
            self._rendered_at = None


@dataclass
class Endpoints:
    """What each path answers: values in, a response out, no sockets."""

    metrics: RenderCache
    readiness: Readiness
    draining: threading.Event = field(default_factory=threading.Event)

    def answer(self, path: str, accept_encoding: str) -> Response:
        if path == "/metrics":
            gzipped = accepts_gzip(accept_encoding)
            headers: tuple[tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
            headers += (("Content-Encoding", "gzip"),) if gzipped else ()
            return Response(200, self.metrics.get(gzipped), CONTENT_TYPE_LATEST, headers)
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            if self.draining.is_set():
                return Response(503, DRAINING)
            ok, reason = self.readiness()
            return Response(200 if ok else 503, (reason or "ok").encode() + b"\n")
        return Response(404, NOT_FOUND)
