"""Every Prometheus metric wslog serves (docs/design.md section 4), on a registry of its own.

Names and labels are an API: the dashboard and the alert rules depend on them;
``tests/test_dashboards.py`` pins the names, and a golden file (``tests/golden/metrics/``) the
text the lab's captures give. Label sets are capped per family: past ``max_series`` distinct
label sets, the identifying labels fold into ``OVERFLOW`` and ``wslog_series_overflow_total``
counts each folded observation, so totals stay exact and no observation is silently dropped.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from analyzer import naming
from analyzer.pipeline import Step, early_by_side
from analyzer.vocab import Direction, Eviction, Outcome, Pairing

OVERFLOW = "__overflow__"
UNKNOWN = "unknown"

CONNECTION_LABELS = (
    "destination_service",
    "destination_namespace",
    "source_workload",
    "source_namespace",
    "upgrade_path",
    "outcome",
    "cause",
    "pairing",
)
SERVICE_LABELS = ("destination_service", "destination_namespace", "upgrade_path")
BYTE_COLUMNS = {Direction.SENT: "bytes_sent", Direction.RECEIVED: "bytes_received"}
# Labels that identify workloads; the others are closed vocabularies that never overflow.
FOLDABLE = frozenset(
    {
        "destination_service",
        "destination_namespace",
        "source_workload",
        "source_namespace",
        "source",
    }
)
NEWEST_FAMILY = "wslog_source_newest_entry_timestamp_seconds"
_RECORDED = {
    **dict.fromkeys(CONNECTION_LABELS, pl.String()),
    **dict.fromkeys(("duration_ms", *BYTE_COLUMNS.values()), pl.Int64()),
}
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400, 86400)


@dataclass
class _Cap:
    """Remembers the label sets seen per family and folds new ones past the limit; a label set
    forgotten (its source closed) frees its place."""

    limit: int
    seen: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)

    def admit(self, family: str, labels: dict[str, str]) -> tuple[dict[str, str], bool]:
        seen = self.seen.setdefault(family, set())
        key = tuple(labels.values())
        if key in seen or len(seen) < self.limit:
            seen.add(key)
            return labels, False
        folded = {k: (OVERFLOW if k in FOLDABLE else v) for k, v in labels.items()}
        seen.add(tuple(folded.values()))
        return folded, True

    def forget(self, family: str, labels: dict[str, str]) -> None:
        self.seen.get(family, set()).discard(tuple(labels.values()))


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")
SOURCE_LABEL_MAX = 128


def source_label(source: str) -> str:
    """The ``source`` label of a stream: ``namespace/pod`` for a pod's log (from the API or
    kubelet's files), else the file's name; never a pod UID, a directory or an unbounded value."""
    raw = pl.lit(source)
    named = pl.select(
        naming.source_namespace(raw).alias("namespace"), naming.source_pod(raw).alias("pod")
    ).row(0)
    if all(named):
        return "/".join(named)
    if source.startswith("/"):
        source = source.rsplit("/", 1)[-1]
    return _LABEL_UNSAFE.sub("_", source)[:SOURCE_LABEL_MAX] or UNKNOWN


class Metrics:
    """The exporter's metric families, built on the given registry."""

    def __init__(self, registry: CollectorRegistry, max_series: int = 2000) -> None:
        self._cap = _Cap(max_series)
        self._open_sources: Tally[str] = Tally()
        self._sources_lock = threading.Lock()
        self._folded_sources: set[str] = set()  # sources whose newest entry went to OVERFLOW
        self.connections = Counter(
            "wslog_connections_total",
            "WebSocket connections by upgrade path and outcome, counted once when the outcome "
            "is known.",
            CONNECTION_LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            "wslog_connection_duration_seconds",
            "Lifetime of upgraded WebSocket connections.",
            SERVICE_LABELS,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            "wslog_connection_bytes_total",
            "WebSocket frame bytes of upgraded connections, as the client sidecar saw them.",
            (*SERVICE_LABELS, "direction"),
            registry=registry,
        )
        self.open = Gauge(
            "wslog_connections_open",
            "WebSocket connections seen starting (or in periodic entries) but not yet closed.",
            SERVICE_LABELS,
            registry=registry,
        )
        self.lines = Counter(
            "wslog_log_lines_total",
            "Input log lines by result: entry, not_access_log or malformed.",
            ("result",),
            registry=registry,
        )
        self.rejects = Counter(
            "wslog_malformed_lines_total",
            "Malformed access-log lines by reason.",
            ("reason",),
            registry=registry,
        )
        self.pending = Gauge(
            "wslog_pending_entries",
            "Entries waiting for their counterpart in the correlation window.",
            registry=registry,
        )
        self.evicted = Counter(
            "wslog_pending_evicted_total",
            "WebSocket connections that left the correlation state before it was complete: "
            "reason=window, unpaired when their window passed; reason=size-cap, released early "
            "because --max-pending was reached (side=both when already paired).",
            ("side", "reason"),
            registry=registry,
        )
        self.streams_active = Gauge(
            "wslog_streams_active", "Log streams currently open.", ("kind",), registry=registry
        )
        self.stream_restarts = Counter(
            "wslog_stream_restarts_total",
            "Log streams reopened after an error or end of stream.",
            ("kind", "reason"),
            registry=registry,
        )
        self.newest_entry = Gauge(
            NEWEST_FAMILY,
            "Start time plus duration of the newest access-log entry read, per source.",
            ("source",),
            registry=registry,
        )
        self.overflow = Counter(
            "wslog_series_overflow_total",
            f"Observations whose label set exceeded --max-series and was folded into {OVERFLOW}.",
            ("metric",),
            registry=registry,
        )
        self.ready = Gauge(
            "wslog_ready", "1 when every source is healthy (same as /readyz).", registry=registry
        )
        self.build = Info("wslog_build", "wslog build information.", registry=registry)

    def _labels(self, family: str, labels: dict[str, str], observations: int = 1) -> dict[str, str]:
        admitted, folded = self._cap.admit(family, labels)
        if folded:
            self.overflow.labels(metric=family).inc(observations)
        return admitted

    def record_connection(self, row: Mapping[str, object]) -> None:
        """Count one classified connection (a CONNECTION_SCHEMA row as a dict)."""
        self.record_connections(pl.DataFrame([{k: row.get(k) for k in _RECORDED}], _RECORDED))

    def record_connections(self, connections: pl.DataFrame) -> None:
        """Count classified connections (CONNECTION_SCHEMA rows): one ``labels`` call per label
        set, not per connection, with the series cap admitting label sets in the order they
        first appear, so the counts are those of recording each row in turn."""
        frame = connections.select(
            *(pl.col(n).cast(pl.String).fill_null(UNKNOWN) for n in CONNECTION_LABELS),
            *(pl.col(n).cast(pl.Int64) for n in ("duration_ms", *BYTE_COLUMNS.values())),
        )
        family = "wslog_connections_total"
        for *values, count in frame.group_by(CONNECTION_LABELS, maintain_order=True).len().rows():
            labels = self._labels(family, dict(zip(CONNECTION_LABELS, values, strict=True)), count)
            self.connections.labels(**labels).inc(count)
        upgraded = frame.filter(pl.col("outcome") == Outcome.UPGRADED.value)
        self._record_durations(upgraded.drop_nulls("duration_ms"))
        self._record_bytes(upgraded)

    def _record_durations(self, upgraded: pl.DataFrame) -> None:
        family = "wslog_connection_duration_seconds"
        by_service = upgraded.group_by(SERVICE_LABELS, maintain_order=True).agg("duration_ms")
        for *values, durations in by_service.rows():
            service = dict(zip(SERVICE_LABELS, values, strict=True))
            histogram = self.duration.labels(**self._labels(family, service, len(durations)))
            for duration_ms in durations:
                histogram.observe(duration_ms / 1000)

    def _record_bytes(self, upgraded: pl.DataFrame) -> None:
        """Bytes per service and direction; each connection's sent before its received, as
        one connection at a time would meet them."""
        family = "wslog_connection_bytes_total"
        directions = [
            upgraded.select(
                *SERVICE_LABELS,
                pl.int_range(pl.len()).alias("row"),
                pl.lit(direction.value).alias("direction"),
                pl.col(column).alias("bytes"),
            )
            for direction, column in BYTE_COLUMNS.items()
        ]
        long = pl.concat(directions).sort("row", maintain_order=True).filter(pl.col("bytes") > 0)
        keys = (*SERVICE_LABELS, "direction")
        totals = long.group_by(keys, maintain_order=True).agg(pl.len(), pl.col("bytes").sum())
        for *values, count, total in totals.rows():
            labels = self._labels(family, dict(zip(keys, values, strict=True)), count)
            self.bytes.labels(**labels).inc(total)

    def set_open(self, rows: Iterable[Mapping[str, object]]) -> None:
        """Replace the open-connections gauge with counts per service and upgrade path."""
        keys = [{name: _label(row.get(name)) for name in SERVICE_LABELS} for row in rows]
        self.set_open_connections(
            pl.DataFrame(keys, schema=dict.fromkeys(SERVICE_LABELS, pl.String))
        )

    def set_open_connections(self, connections: pl.DataFrame) -> None:
        """``set_open`` of classified connections (CONNECTION_SCHEMA rows): counted by polars,
        label sets in the order they first appear, as row by row."""
        keys = connections.select(
            pl.col(name).cast(pl.String).fill_null(UNKNOWN) for name in SERVICE_LABELS
        )
        counts = keys.group_by(SERVICE_LABELS, maintain_order=True).len().rows()
        self.open.clear()
        for *key, count in counts:
            labels = self._labels(
                "wslog_connections_open", dict(zip(SERVICE_LABELS, key, strict=True))
            )
            self.open.labels(**labels).inc(count)

    def record_lines(self, counts: Mapping[str, int], rejects: Mapping[str, int]) -> None:
        for result, count in counts.items():
            if count:
                self.lines.labels(result=result).inc(count)
        for reason, count in rejects.items():
            if count:
                self.rejects.labels(reason=reason).inc(count)

    def open_source(self, source: str) -> None:
        with self._sources_lock:
            self._open_sources[source_label(source)] += 1

    def forget_source(self, source: str) -> None:
        """A stream closed: once no open stream has its label, its series and its place under
        the series cap go (so a stale-source alert does not fire for it forever)."""
        labels = {"source": source_label(source)}
        with self._sources_lock:
            self._open_sources[labels["source"]] -= 1
            if self._open_sources[labels["source"]] > 0:
                return
            del self._open_sources[labels["source"]]
            self._cap.forget(NEWEST_FAMILY, labels)
            gone = [labels["source"]]
            if labels["source"] in self._folded_sources:
                self._folded_sources.discard(labels["source"])
                gone += [] if self._folded_sources else [OVERFLOW]
            for label in gone:
                with contextlib.suppress(KeyError):
                    self.newest_entry.remove(label)

    def record_newest(self, source: str, timestamp_s: float) -> None:
        label = source_label(source)
        with self._sources_lock:
            labels = self._labels(NEWEST_FAMILY, {"source": label})
            if labels["source"] == OVERFLOW:
                self._folded_sources.add(label)
            self.newest_entry.labels(**labels).set(timestamp_s)


class ForwarderMetrics:
    """The forwarder's families (``wslog exporter --forward``): it counts lines onto NATS, no
    connection. Implements ``exporter.jetstream.forward.PublishMeter``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines = Counter(
            "wslog_forward_lines_total",
            "Lines published to NATS JetStream and acknowledged by it, by result: stored, or "
            "duplicate (already in the stream: lines replayed after a restart).",
            ("result",),
            registry=registry,
        )
        self.publish_errors = Counter(
            "wslog_forward_publish_errors_total",
            "Line publications that failed; each is retried (with backoff) until stored.",
            registry=registry,
        )
        self.ready = Gauge(
            "wslog_ready",
            "1 when connected to NATS and the stream exists (same as /readyz).",
            registry=registry,
        )
        self.build = Info("wslog_build", "wslog build information.", registry=registry)
        for result in ("stored", "duplicate"):
            self.lines.labels(result=result)

    def published(self, stored: int, duplicates: int) -> None:
        self.lines.labels(result="stored").inc(stored)
        self.lines.labels(result="duplicate").inc(duplicates)

    def failed(self, publications: int) -> None:
        self.publish_errors.inc(publications)

    def connected(self, ok: bool) -> None:
        self.ready.set(1 if ok else 0)


def new_registry() -> CollectorRegistry:
    """A registry of the exporter's own: no process or platform collectors, no globals."""
    return CollectorRegistry()


def _label(value: object) -> str:
    if value is None:
        return UNKNOWN
    return str(value)


def record_step(
    metrics: Metrics, step: Step, websockets: pl.DataFrame, correlator_pending: int
) -> None:
    """Count one micro-batch: its lines, its WebSocket connections, the correlation state."""
    metrics.record_lines(
        {str(k): v for k, v in step.lines.items()},
        dict(Tally(step.rejects.get_column("reason").to_list())),
    )
    metrics.record_connections(websockets)
    early = early_by_side(step.early)  # WebSockets only: see LiveAnalyzer
    for side, count in early.items():
        metrics.evicted.labels(side=side, reason=Eviction.SIZE_CAP.value).inc(count)
    unpaired = early_by_side(websockets.filter(pl.col("pairing") != Pairing.PAIRED))
    for side, count in unpaired.items():
        left = count - early.get(side, 0)  # released early: counted above, not again here
        if left > 0:
            metrics.evicted.labels(side=side, reason=Eviction.WINDOW.value).inc(left)
    metrics.pending.set(correlator_pending)
    for source, end in step.newest.items():
        metrics.record_newest(source, end.timestamp())
