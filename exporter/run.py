"""The exporter's main loop: a source thread feeding the live pipeline, a tick every batch
interval, metrics served until SIGTERM and for the drain period after it. ``wslog tail`` runs
the same loop with a printer.

When the loop stops (SIGTERM, or a source that ended), it normally flushes what is still held
(entries waiting for a counterpart are counted unpaired), because nobody else will see them. A
source whose input outlives the process says otherwise with ``flush_on_stop = False``
(``exporter.jetstream.JetStreamSource``): what it holds is left unacknowledged, the next owner of
its partitions receives it again with its counterparts, and flushing it here would count it
twice."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from analyzer.correlate import CorrelationSettings
from analyzer.formats import FormatSet
from analyzer.pipeline import Pipeline, Step
from exporter.health import Health
from exporter.live import LiveAnalyzer
from exporter.metrics import ForwarderMetrics, Metrics, new_registry, record_step
from exporter.server import serve
from exporter.settings import (
    ExporterSettings,
    HttpSettings,
    Listen,
    NatsSettings,
    PipelineSettings,
)
from exporter.sources import Source, SourceEvents

if TYPE_CHECKING:
    from exporter.jetstream import ForwardStats

log = logging.getLogger("wslog.exporter")
OnStep = Callable[[Step, pl.DataFrame], None]


def build_live(settings: PipelineSettings, formats: FormatSet, on_step: OnStep) -> LiveAnalyzer:
    correlation = CorrelationSettings(
        window=settings.pair_window,
        clock_skew=settings.clock_skew,
        max_pending=settings.max_pending,
    )
    pipeline = Pipeline(formats=formats, settings=correlation)
    idle = settings.pair_window.total_seconds()
    return LiveAnalyzer(
        pipeline=pipeline,
        on_step=on_step,
        idle_release_s=idle,
        max_line_bytes=settings.max_line_bytes,
        max_buffered_bytes=settings.max_buffered_bytes,
    )


@dataclass(frozen=True)
class Metered:
    """A live pipeline whose every step is counted into ``metrics``."""

    live: LiveAnalyzer
    metrics: Metrics

    def after_tick(self) -> None:
        """The open-connections gauge, from what is pending after a tick."""
        self.metrics.set_open_connections(self.live.pipeline.open_connections())


def metered_live(settings: PipelineSettings, formats: FormatSet, metrics: Metrics) -> Metered:
    """The exporter's pipeline: ``build_live`` with each step recorded in ``metrics``."""
    live: LiveAnalyzer

    def on_step(step: Step, websockets: pl.DataFrame) -> None:
        record_step(metrics, step, websockets, live.pipeline.correlator.pending)

    live = build_live(settings, formats, on_step)
    return Metered(live, metrics)


@dataclass
class Loop:
    """Runs one source into one LiveAnalyzer until ``stop`` is set."""

    live: LiveAnalyzer
    source: Source
    events: SourceEvents
    batch_interval_s: float
    after_tick: Callable[[], None] = lambda: None
    exit_on_end: bool = False  # stop once a source with an end (stdin, --once) has ended

    def run(self, stop: threading.Event) -> None:
        ended = threading.Event()
        feeder = threading.Thread(
            target=self._feed, args=(stop, ended), name="wslog-source", daemon=True
        )
        feeder.start()
        finished = False
        after_due = time.monotonic()
        while not stop.is_set():
            full = self.live.wait_for_batch(self.batch_interval_s, stop)
            if stop.is_set():
                break
            self.live.tick()
            if ended.is_set() and not finished and self._flush_on_stop:
                self.live.finish()
                finished = True
            # Behind, batches come faster than the interval: what after_tick samples (the
            # open-connections gauge) is refreshed once per interval, not once per batch.
            if not full or finished or time.monotonic() >= after_due:
                self.after_tick()
                after_due = time.monotonic() + self.batch_interval_s
            if finished and self.exit_on_end:
                break
        self.live.drain()
        feeder.join(timeout=5)  # the source sees stop and hands over its last lines
        if not finished and self._flush_on_stop:
            self.live.finish()
            self.after_tick()

    @property
    def _flush_on_stop(self) -> bool:
        """Whether held entries are counted at the end (see the module's docstring)."""
        return bool(getattr(self.source, "flush_on_stop", True))

    def _feed(self, stop: threading.Event, ended: threading.Event) -> None:
        try:
            attach = getattr(self.source, "attach", None)
            if attach is not None:  # a source that acknowledges asks the analyzer what is held
                attach(self.live)
            events: SourceEvents = self.events
            if getattr(self.source, "streams_are_sources", True):
                events = _Streams(self.events, self.live)
            self.source.run(self.live.accept, stop, events)
        except Exception as exc:  # the source's own errors are reported through events
            log.exception("source stopped: %s", exc)
            self.events.health(False, f"source stopped: {exc}")
        finally:
            ended.set()


@dataclass(frozen=True)
class _Streams:
    """A source's events, passed on; its streams opening and closing also reach the analyzer
    (``SourceProgress``: an opened stream is waited for until it delivers). Only for a source
    whose streams are named as its lines' sources (not the nats source's partitions)."""

    events: SourceEvents
    live: LiveAnalyzer

    def stream_opened(self, kind: str, source: str) -> None:
        self.events.stream_opened(kind, source)
        self.live.stream_opened(source)

    def stream_closed(self, kind: str, source: str) -> None:
        self.events.stream_closed(kind, source)
        self.live.stream_closed(source)

    def stream_restarted(self, kind: str, source: str, reason: str) -> None:
        self.events.stream_restarted(kind, source, reason)

    def health(self, ok: bool, reason: str) -> None:
        self.events.health(ok, reason)


def run_exporter(
    settings: ExporterSettings,
    source: Source,
    formats: FormatSet,
    stop: threading.Event,
    on_listen: Callable[[int], None] = lambda port: None,
) -> None:
    registry = new_registry()
    metrics = Metrics(registry, max_series=settings.max_series)
    metrics.build.info({"version": _version()})
    health = Health(metrics)
    metered = metered_live(settings.pipeline, formats, metrics)
    server = serve(settings.listen, settings.http, registry, health.readiness)
    log.info("serving /metrics, /healthz, /readyz", extra={"port": server.port})
    on_listen(server.port)
    interval = settings.pipeline.batch_interval_s
    loop = Loop(metered.live, source, health, interval, metered.after_tick)
    try:
        loop.run(stop)
        server.drain(settings.http.drain_s)  # the final counts, flushed by run, stay scrapeable
    finally:
        server.close()


def run_forwarder(
    listen: Listen,
    http: HttpSettings,
    nats: NatsSettings,
    source: Source,
    formats: FormatSet,
    stop: threading.Event,
    *,
    max_line_bytes: int,
    on_listen: Callable[[int], None] = lambda port: None,
) -> ForwardStats:
    """``wslog exporter --forward``: ``source``'s lines onto NATS, with /healthz, /readyz (ready
    once connected and the stream exists) and the forwarder's /metrics on ``listen``. Stopped
    by SIGTERM, it serves its final counts for the drain period; a source that ended (--once)
    stops at once."""
    from exporter.jetstream import Forwarder, LoggedEvents

    registry = new_registry()
    metrics = ForwarderMetrics(registry)
    metrics.build.info({"version": _version()})
    forwarder = Forwarder(nats, formats, max_line_bytes, metrics)
    server = serve(listen, http, registry, forwarder.readiness)
    log.info("serving /metrics, /healthz, /readyz", extra={"port": server.port})
    on_listen(server.port)
    try:
        stats = forwarder.run(source, stop, LoggedEvents())
        if stop.is_set():
            server.drain(http.drain_s)
        return stats
    finally:
        server.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wslog")
    except PackageNotFoundError:
        return "unknown"
