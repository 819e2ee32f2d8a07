"""Source health: streams and readiness, reported by the sources, read by /readyz and metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from exporter.metrics import Metrics


@dataclass
class Health:
    """Implements ``exporter.sources.SourceEvents`` on top of the metrics."""

    metrics: Metrics
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ready: bool = False
    _reason: str = "starting"

    def stream_opened(self, kind: str, source: str) -> None:
        self.metrics.streams_active.labels(kind=kind).inc()
        self.metrics.open_source(source)

    def stream_closed(self, kind: str, source: str) -> None:
        """A stream ended for good (pod deleted, file gone): drop its per-source series so a
        stale-source alert does not fire for it forever."""
        self.metrics.streams_active.labels(kind=kind).dec()
        self.metrics.forget_source(source)

    def stream_restarted(self, kind: str, source: str, reason: str) -> None:
        self.metrics.stream_restarts.labels(kind=kind, reason=reason).inc()

    def health(self, ok: bool, reason: str) -> None:
        with self._lock:
            self._ready, self._reason = ok, reason
        self.metrics.ready.set(1 if ok else 0)

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, self._reason
